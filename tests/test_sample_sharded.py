"""`gatgan sample` and `gatgan eval --run` under torchrun (2 gloo processes on the CPU) write what one
process writes. Run as a script, this file is the torchrun worker: the CLI with rank 0 gathering in
rounds of 4 images, so that 37 samples in shares of 18 and 19 take several rounds, the last uneven."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import domain_run  # noqa: F401 (a fixture: a tiny run with the domain metric cached)

from gatgan import sharding
from gatgan.cli import main


def test_shards_are_contiguous_balanced_and_cover_every_sample():
    for num, world_size in ((37, 2), (40, 3), (1, 2), (5, 8)):
        shares = [sharding.shard(num, rank, world_size) for rank in range(world_size)]
        assert [i for s in shares for i in range(num)[s]] == list(range(num))
        assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


def _torchrun(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `--`: torchrun would read --run and --num as (ambiguous) abbreviations of its own options
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, "--", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _sample_args(run: Path, out: Path, num: int) -> list[str]:
    return ["sample", "--run", str(run), "--num", str(num), "--batch-size", "5",
            "--out", str(out / "a.npz"), "--grid", str(out / "a.png")]


@pytest.mark.slow
@pytest.mark.parametrize("num", [37, 1])  # uneven shares; and fewer samples than ranks (rank 0's share empty)
def test_two_processes_sample_what_one_process_samples(domain_run, tmp_path, num):  # noqa: F811
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    main(_sample_args(domain_run, one, num))
    printed = _torchrun(_sample_args(domain_run, two, num))
    assert printed.count(f"wrote {num} samples") == 1 and printed.count("wrote a grid") == 1  # rank 0 only
    assert sorted(p.name for p in two.iterdir()) == ["a.npz", "a.png"]  # nothing else left behind
    alone, sharded = np.load(one / "a.npz"), np.load(two / "a.npz")
    assert sharded["arr_0"].shape == (num, 16, 16, 1)
    for key in ("arr_0", "arr_1"):
        assert sharded[key].dtype == alone[key].dtype
        np.testing.assert_array_equal(sharded[key], alone[key])
    assert (two / "a.png").read_bytes() == (one / "a.png").read_bytes()


@pytest.mark.slow
def test_two_processes_evaluate_what_one_process_evaluates(domain_run, tmp_path):  # noqa: F811
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    eval_args = ["eval", "--run", str(domain_run), "--metric", "domain", "--num", "40", "--batch-size", "7"]
    main([*eval_args, "--out", str(one / "e.json")])
    printed = _torchrun([*eval_args, "--out", str(two / "e.json")])
    assert printed.count("domain metric on 40 samples") == 1  # only rank 0 scores
    assert sorted(p.name for p in two.iterdir()) == ["e.json"]
    assert json.loads((two / "e.json").read_text()) == json.loads((one / "e.json").read_text())


if __name__ == "__main__":
    sharding.GATHER_ROWS = 4
    main(sys.argv[1:])
