"""Prepare a dataset: corpus -> described clips (-> targets -> replay, as those stages are added).

Usage:
    python data_prep/prepare.py                                   # the espeak-ng demo corpus into data/demo
    python data_prep/prepare.py data=audiofolder data.path=/my/folder data.name=mydata paths.data_dir=OUT
    python data_prep/prepare.py describe.attributes=[pitch,speaking_rate,gender] describe.renderer=desta2
    python data_prep/prepare.py num_proc=4 shard=0/2              # parallel workers; this process takes shard 0 of 2

Each stage skips itself when its output is current and resumes after a kill.
"""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model sources are local paths or packaged wheels

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from speechllm.data.prepare import prepare  # noqa: E402


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger().setLevel(logging.INFO)
    prepare(cfg)


if __name__ == "__main__":
    main()
