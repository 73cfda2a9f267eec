"""Kill a tiny `gatgan train` with SIGKILL at every file write of its start-up, its log and its
checkpoints (named crash points, `gatgan.faults`) and at random moments, restart it each time, and
check that it ends exactly where the uninterrupted run ends: same weights, same log."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gatgan.faults import ENV
from gatgan.train.checkpoint import latest_checkpoint
from gatgan.train.config import config_text
from gatgan.train.rundir import read_stats

from tinyrun import tiny_config

pytestmark = pytest.mark.slow

# 8 steps, a checkpoint every 2 (keeping 2), a log line every step. Each entry is the crash point
# and which pass through it kills the process; the comment says where the run stands. Every entry
# must fire (the test checks that the process was killed), so the list follows the run's progress.
CRASHES = [
    ("config.write", 1),        # first start: nothing written yet
    ("data_card.write", 1),     # config.yaml written, the card not
    ("stats.append", 1),        # step 1 trained, its log line not written
    ("checkpoint.network", 1),  # steps 1-2 logged; the step-2 checkpoint half written in staging
    ("stats.truncate", 1),      # no checkpoint: the log of steps 1-2 must go
    ("checkpoint.rename", 1),   # the step-2 checkpoint complete in staging, not renamed
    ("checkpoint.latest", 1),   # the step-2 folder renamed, `latest` not yet pointing at it
    ("train.step", 3),          # checkpoint 2 saved; killed as step 3 begins
    ("checkpoint.prune", 1),    # resumed at 2; checkpoint 4 saved, older ones not yet pruned
    ("stats.append", 2),        # resumed at 4; step 5 logged, killed before step 6's line
    ("stats.truncate", 1),      # step 5's line is past the checkpoint
    ("checkpoint.network", 2),  # resumed at 4; the step-6 checkpoint half written
    ("checkpoint.network", 3),  # again, one network further
    ("checkpoint.rename", 1),   # the step-6 checkpoint complete in staging
    ("checkpoint.latest", 1),   # the step-6 folder renamed, `latest` still at 4
    ("train.step", 2),          # resumed at 4 (redoing 5-6): killed as step 6 begins
    ("stats.append", 4),        # steps 5-8 trained, killed before step 8's line
    ("checkpoint.network", 2),  # resumed at 6: the step-8 checkpoint half written
]
RANDOM_KILLS = 4  # and kills at random moments (seeded), while training or starting up


def train_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "gatgan.cli", "train", "-c", str(config)]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return env | {"OMP_NUM_THREADS": "1", **extra}


def run(config: Path, fault: str | None = None) -> int:
    extra = {ENV: fault} if fault else {}
    return subprocess.run(train_command(config), env=environment(**extra), capture_output=True, timeout=300).returncode


def kill_after(config: Path, seconds: float) -> None:
    process = subprocess.Popen(train_command(config), env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()


def write_config(tiny_data: Path, root: Path) -> Path:
    config = tiny_config(tiny_data, root, **{"train.kimg": 0.096, "train.checkpoint_every": 2,
                                              "train.keep_checkpoints": 2, "train.sample_every": 4,
                                              "train.threads": 1})
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(config))
    return path


def final_state(run_dir: Path) -> tuple[dict, list[dict]]:
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == "00000008"
    weights = {name: load_file(checkpoint / f"{name}.safetensors")
               for name in ("generator", "discriminator", "generator_ema")}
    log = [{k: v for k, v in record.items() if k != "sec_per_step"} for record in read_stats(run_dir / "stats.jsonl")]
    return weights, log


def test_a_run_killed_at_every_write_ends_exactly_like_the_uninterrupted_run(tiny_data, tmp_path):
    assert run(write_config(tiny_data, tmp_path / "reference")) == 0
    expected_weights, expected_log = final_state(tmp_path / "reference" / "tiny")

    config = write_config(tiny_data, tmp_path / "crashed")
    for number, (point, count) in enumerate(CRASHES):
        assert run(config, f"{point}:{count}") == -signal.SIGKILL, f"crash {number}, {point}:{count}, did not fire"
    rng = random.Random(0)
    for _ in range(RANDOM_KILLS):
        kill_after(config, rng.uniform(2.0, 8.0))
    assert run(config) == 0

    weights, log = final_state(tmp_path / "crashed" / "tiny")
    assert log == expected_log
    for name, tensors in expected_weights.items():
        assert weights[name].keys() == tensors.keys()
        for key, tensor in tensors.items():
            assert weights[name][key].equal(tensor), f"{name}.{key} differs"
