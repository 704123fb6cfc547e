"""Train a speech-language model.

Usage:
    python train.py                                      # default preset (packaged Whisper tiny.en + SmolLM2)
    python train.py experiment=smoke                     # tiny random models, seconds on CPU
    python train.py model/adapter=stack_mlp model.llm.finetune=lora replay.ratio=0.05 target=label
    python train.py -m replay.ratio=0,0.05,0.2           # a sweep (Hydra multirun)
    python train.py hydra.run.dir=outputs/run1 trainer.resume=last    # continue a run from its last checkpoint
    torchrun --nproc_per_node=8 train.py experiment=desta2             # DDP; one output folder for all ranks
    accelerate launch --config_file fsdp.yaml train.py experiment=desta25

Outputs (in the Hydra run dir): checkpoints/step-N/, checkpoints/final/ (SpeechLM folders),
tensorboard/, train_metrics.json, loss_curve.png, mixture.json. Logic lives in `speechllm.train`.
"""

import sys

import hydra
from omegaconf import DictConfig

from speechllm.train.launch import shared_run_dir_argv


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from speechllm.config import ConfigError
    from speechllm.train import train

    try:
        train(cfg)
    except ConfigError as err:
        # A config mistake is the user's to fix: say what and where, without a traceback.
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    # Under torchrun/accelerate every rank must write to the same run folder (chosen once, on rank 0).
    sys.argv = shared_run_dir_argv(sys.argv)
    main()
