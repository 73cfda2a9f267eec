import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import torch.distributed as dist

from gatgan.train.checkpoint import latest_checkpoint, load_state
from gatgan.train.distributed import init_distributed, process_ranks

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_two_process_torchrun_run_stays_in_sync(tiny_data, tmp_path):
    report = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(tiny_data), str(tmp_path), str(report)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(report.read_text())
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [6, 6]
    for key in ("G", "D", "w_avg"):  # DDP keeps weights equal; w_avg is all-reduced, not per rank
        assert ranks[0][key] == pytest.approx(ranks[1][key], rel=1e-6), key
    state = load_state(latest_checkpoint(tmp_path / "tiny"))
    assert len(state["rng"]) == 2  # each rank's random streams are saved for an exact resume
    assert len((tmp_path / "tiny" / "stats.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("environ, expected", [
    ({}, (0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, (3, 8, 3)),
    ({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}, (9, 16, 1)),
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (2, 4, 2)),
])
def test_ranks_come_from_torchrun_or_slurm(environ, expected):
    assert process_ranks(environ) == expected


def test_several_slurm_tasks_without_a_master_address_are_refused(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        init_distributed("cpu")
