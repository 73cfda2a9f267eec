"""Launched by test_distributed.py under torchrun: trains a tiny run, then reports from every rank
a checksum of its networks and its w average, so the test can check the ranks stayed in sync."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyrun import tiny_config  # noqa: E402

from gatgan.train.trainer import train  # noqa: E402

data, run_dir, report = sys.argv[1:4]
trainer = train(tiny_config(Path(data), Path(run_dir)), progress=False)
summary = {
    "rank": dist.get_rank(),
    "world": dist.get_world_size(),
    "G": sum(p.double().sum().item() for p in trainer.G.parameters()),
    "D": sum(p.double().sum().item() for p in trainer.D.parameters()),
    "w_avg": trainer.G.w_avg.double().sum().item(),
    "step": trainer.step,
}
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, summary)
if dist.get_rank() == 0:
    Path(report).write_text(json.dumps(gathered))
trainer.close()
dist.destroy_process_group()
