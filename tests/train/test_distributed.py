import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatgan.train.checkpoint import latest_checkpoint, load_state

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
