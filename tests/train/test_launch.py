"""`train.processes`: `gatgan train` starts the ranks of a local data-parallel run itself, refuses a
batch they cannot split before starting any, and stops every rank when one fails."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tinyrun import tiny_overrides

from gatgan.cli import main
from gatgan.train.checkpoint import latest_checkpoint, load_state
from gatgan.train.launch import run_local_processes, started_by_a_launcher
from gatgan.train.rundir import RunLock

NO_TEACHER = {"loss.repa.teacher": ""}  # the tiny data has none; the fmnist preset asks for one


@pytest.mark.parametrize("environ, launched", [
    ({}, False),
    ({"RANK": "0", "WORLD_SIZE": "1"}, True),  # torchrun with one process: its count wins too
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, True),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, False),  # an sbatch script's single task
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, True),
])
def test_a_launcher_is_recognised_by_its_variables(environ, launched):
    assert started_by_a_launcher(environ) is launched


def test_the_ranks_exit_codes_come_back():
    assert run_local_processes(2, ["--version"], threads=1) == 0
    assert run_local_processes(2, ["config", "-c", "no-such-preset"], threads=1) == 2


def test_more_ranks_than_cores_is_said(monkeypatch, capsys):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert run_local_processes(2, ["--version"], threads=1) == 0
    assert "more than the 1 core(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_one_command_trains_with_two_processes(tiny_data, tmp_path, capfd):
    main(["train", "-c", "fmnist", *tiny_overrides(tiny_data, tmp_path, **NO_TEACHER, **{"train.processes": 2})])
    run = tmp_path / "tiny"
    assert "batch 12 = 2 x 6 x 1" in capfd.readouterr().out  # rank 0 speaks, for a group of two
    state = load_state(latest_checkpoint(run))
    assert state["step"] == 6 and len(state["rng"]) == 2  # both ranks' random streams were saved
    steps = [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # written once, by rank 0


def test_a_batch_the_processes_cannot_split_is_refused_before_any_starts(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "-c", "fmnist", *tiny_overrides(tiny_data, tmp_path, **{"train.processes": 5})])
    assert exit_info.value.code == 2
    assert "train.global_batch=12" in capsys.readouterr().err
    assert not (tmp_path / "tiny").exists()


@pytest.mark.slow
def test_a_run_in_use_stops_every_rank_with_rank_0s_message(tiny_data, tmp_path, capfd):
    lock = RunLock(tmp_path / "tiny")  # as a first `gatgan train` of the same run would hold it
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "-c", "fmnist", *tiny_overrides(tiny_data, tmp_path, **NO_TEACHER,
                                                           **{"train.processes": 2})])
    finally:
        lock.release()
    assert exit_info.value.code == 2
    assert "is in use by another gatgan process" in capfd.readouterr().err
    assert not (tmp_path / "tiny" / "checkpoints").exists()


@pytest.mark.slow
def test_terminating_the_command_stops_its_ranks(tiny_data, tmp_path):
    """A scheduler's SIGTERM reaches only the process it started: the ranks must not outlive it."""
    argv = ["train", "-c", "fmnist", *tiny_overrides(tiny_data, tmp_path, **NO_TEACHER,
                                                     **{"train.processes": 2, "train.kimg": 100})]
    command = subprocess.Popen([sys.executable, "-m", "gatgan.cli", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    stats, lock = tmp_path / "tiny" / "stats.jsonl", tmp_path / "tiny" / ".lock"
    deadline = time.monotonic() + 120
    while not (stats.is_file() and stats.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    rank_0 = int(lock.read_text().split()[1])  # "pid N on host H", written by rank 0
    command.send_signal(signal.SIGTERM)
    assert command.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(rank_0, 0)
