"""Prepare a dataset: corpus -> described clips -> targets -> replay (the same as `speechllm-prepare`).

Usage:
    python data_prep/prepare.py                                   # the espeak-ng demo corpus into data/demo
    python data_prep/prepare.py data=audiofolder data.path=/my/folder data.name=mydata paths.data_dir=OUT
    python data_prep/prepare.py describe.attributes=[pitch,speaking_rate,gender] describe.renderer=desta2
    python data_prep/prepare.py num_proc=4 shard=0/2              # parallel workers; this process takes shard 0 of 2

Each stage skips itself when its output is current and resumes after a kill.
"""

from speechllm.cli import prepare_main

if __name__ == "__main__":
    prepare_main()
