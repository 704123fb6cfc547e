"""`train.py` with FSDP allowed on CPU processes (gloo), for the FSDP test.

accelerate shards with FSDP only on accelerators: on CPU processes it keeps its MULTI_CPU (DDP) mode and
drops the FSDP plugin without a word. PyTorch's FSDP2 itself runs on CPU tensors over gloo, so this
launcher switches the accelerator's state to FSDP after Trainer built it, and the rest of the path
(accelerate's `fully_shard` wrapping, the sharded optimiser step, our checkpoint gathering) is the one a
GPU run takes. Run it under torchrun, with `trainer.extra_args.fsdp=true` among the overrides.
"""

from transformers import Trainer


def _allow_fsdp_on_cpu() -> None:
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    create = Trainer.create_accelerator_and_postprocess

    def create_with_fsdp(self):
        create(self)
        state = self.accelerator.state
        if self.args.fsdp_plugin_args is not None and state.distributed_type == DistributedType.MULTI_CPU:
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            state.distributed_type = DistributedType.FSDP
            self.is_fsdp_enabled = True

    Trainer.create_accelerator_and_postprocess = create_with_fsdp


if __name__ == "__main__":
    _allow_fsdp_on_cpu()
    from speechllm.cli import train_main

    train_main()
