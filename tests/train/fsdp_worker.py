"""Launched by test_fsdp.py under torchrun: trains tiny runs one after the other in the same process
group, each given as [run directory, {setting: value}] in a JSON list (argv[2]), so that one launch
can train, then resume under another strategy."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrun import tiny_config  # noqa: E402

from gatgan.train.trainer import train  # noqa: E402

data, runs = Path(sys.argv[1]), json.loads(sys.argv[2])
for run_dir, settings in runs:
    train(tiny_config(data, Path(run_dir), **settings), progress=False).close()
dist.destroy_process_group()
