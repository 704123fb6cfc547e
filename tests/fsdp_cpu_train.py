"""`train.py` with FSDP allowed on CPU processes (gloo), for the FSDP test.

accelerate shards with FSDP only on accelerators: on CPU processes it keeps its MULTI_CPU (DDP) mode and
drops the FSDP plugin without a word. PyTorch's FSDP2 itself runs on CPU tensors over gloo, so this
launcher switches the accelerator's state to FSDP after Trainer built it, and the rest of the path
(accelerate's `fully_shard` wrapping, the sharded optimiser step, our checkpoint gathering) is the one a
GPU run takes. Run it under torchrun with `trainer.extra_args.fsdp=true` among the overrides, or under
`accelerate launch --config_file launch/accelerate/fsdp.yaml --cpu`.
"""

import os

from transformers import Trainer


def _allow_fsdp_on_cpu() -> None:
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    create = Trainer.create_accelerator_and_postprocess

    def create_with_fsdp(self):
        create(self)
        state = self.accelerator.state
        from_args = self.args.fsdp_plugin_args is not None  # trainer.extra_args.fsdp=true
        from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false") == "true"  # an accelerate FSDP config
        if (from_args or from_launcher) and state.distributed_type == DistributedType.MULTI_CPU:
            # Without arguments the plugin reads the launcher's FSDP_* variables, as accelerate does on GPUs.
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**(self.args.fsdp_plugin_args or {}))
            state.distributed_type = DistributedType.FSDP
            self.is_fsdp_enabled = True

    Trainer.create_accelerator_and_postprocess = create_with_fsdp


if __name__ == "__main__":
    _allow_fsdp_on_cpu()
    from speechllm.cli import train_main

    train_main()
