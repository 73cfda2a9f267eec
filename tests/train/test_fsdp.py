"""train.strategy=fsdp on the CPU: two gloo processes, FSDP2 against DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gatgan.train.checkpoint import latest_checkpoint, load_network
from gatgan.train.trainer import Trainer
from tinyrun import tiny_config

WORKER = Path(__file__).with_name("fsdp_worker.py")
FSDP = {"train.strategy": "fsdp"}
HALF = {"train.kimg": 0.036}  # 3 of the tiny run's 6 steps
ACCUMULATE = {"train.batch_per_device": 3, **HALF}  # 2 micro-batches per step and process


def _losses(run_dir: Path) -> list[tuple[float, float]]:
    records = [json.loads(line) for line in (run_dir / "tiny" / "stats.jsonl").read_text().splitlines()]
    return [(r["loss/D"], r["loss/G"]) for r in records]


def _assert_same_losses(got: Path, expected: Path, steps: int) -> None:
    """Only the reduction orders differ between the strategies."""
    pairs = list(zip(_losses(got), _losses(expected)))
    assert len(pairs) == steps
    for step, (g, e) in enumerate(pairs, 1):
        assert g == pytest.approx(e, rel=1e-4, abs=1e-5), f"step {step}"


@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_its_checkpoint_resumes_under_ddp(tiny_data, tmp_path):
    """One launch: a 6-step DDP run; 3 steps under FSDP, then the same run resumed under DDP, and the
    reverse; 3 steps with gradient accumulation under both strategies."""
    ddp, switched, reverse, ddp_acc, fsdp_acc = (tmp_path / name for name in
                                                 ("ddp", "switched", "reverse", "ddp_acc", "fsdp_acc"))
    runs = [[ddp, {}], [switched, FSDP | HALF], [switched, {}], [reverse, HALF], [reverse, FSDP],
            [ddp_acc, ACCUMULATE], [fsdp_acc, FSDP | ACCUMULATE]]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(tiny_data), json.dumps([[str(run), settings] for run, settings in runs])]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_losses(switched, ddp, 6)  # steps 1-3 under FSDP, 4-6 resumed from its checkpoint under DDP
    _assert_same_losses(reverse, ddp, 6)
    _assert_same_losses(fsdp_acc, ddp_acc, 3)
    # Adam turns rounding noise in a near-zero gradient (D's head bias) into a step of up to lr
    for name in ("generator", "generator_ema", "discriminator"):
        expected = load_network(latest_checkpoint(ddp / "tiny"), name, "cpu")
        for run in (switched, reverse):
            got = load_network(latest_checkpoint(run / "tiny"), name, "cpu")
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3, msg=lambda problem: f"{name}: {problem}")


def test_fsdp_refuses_a_monitor_that_calls_d_on_rank_0_alone(tiny_data_with_teacher, tmp_path):
    config = tiny_config(tiny_data_with_teacher, tmp_path, **FSDP, **{"loss.repa.teacher": "data"})
    with pytest.raises(ValueError, match="set train.align_every=0"):
        Trainer(config, progress=False)
