"""Train a speech-language model.

Usage:
    python train.py experiment=demo                   # the demo's run (packaged Whisper tiny.en + SmolLM2)
    python train.py                                      # the base config: the same models, no preset
    python train.py experiment=smoke                     # tiny random models, seconds on CPU
    python train.py model/adapter=stack_mlp model.llm.finetune=lora replay.ratio=0.05 target=label
    python train.py -m replay.ratio=0,0.05,0.2           # a sweep (Hydra multirun)
    python train.py hydra.run.dir=outputs/run1 trainer.resume=last    # continue a run from its last checkpoint
    torchrun --nproc_per_node=8 train.py experiment=desta2             # DDP; one output folder for all ranks
    accelerate launch --config_file fsdp.yaml train.py experiment=desta25

Outputs (in the Hydra run dir): checkpoints/step-N/, checkpoints/final/ (SpeechLM folders),
tensorboard/, train_metrics.json, loss_curve.png, mixture.json. Logic lives in `speechllm.train`.
"""

from speechllm.cli import train_main

if __name__ == "__main__":
    train_main()
