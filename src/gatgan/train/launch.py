"""`train.processes`: the local processes of a data-parallel run, started by `gatgan train` itself.

A small model's matmuls barely speed up with a second thread (the fmnist preset trains on one), but
a second process that takes half of each batch does: each process is one rank of the same gloo (or
NCCL) group torchrun would create, so the maths are those of one process with the whole batch. The
ranks are plain `gatgan train` processes with torchrun's variables set; they inherit the terminal,
so rank 0's progress bar and messages read as a one-process run's. If one rank fails, the others,
which would wait for it in their next collective until the timeout, are stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from .distributed import process_ranks

POLL_S = 0.2
STOP_GRACE_S = 10.0  # a stopped rank's time to exit on SIGTERM before it is killed


def started_by_a_launcher(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """torchrun, srun or `run_local_processes` started this process as one of a group."""
    return "RANK" in environ or process_ranks(environ)[1] > 1


def run_local_processes(count: int, argv: Sequence[str], threads: int) -> int:
    """Runs `python -m gatgan.cli *argv` as `count` ranks on this machine; returns the first nonzero
    exit code of a rank (the others stopped), or 0. Ctrl-C reaches every rank (they share the
    terminal's process group), and each one stops as a one-process run would."""
    environ = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
               "WORLD_SIZE": str(count), "LOCAL_WORLD_SIZE": str(count)}
    cores = len(os.sched_getaffinity(0))
    # before torch starts in a rank; train.threads=0 (torch's default) would give each rank every core
    environ["OMP_NUM_THREADS"] = str(threads or max(1, cores // count))
    if count * (threads or 1) > cores:
        print(f"train.processes={count} with {threads or 1} thread(s) each is more than the {cores} core(s) this "
              "process may use: the ranks will share them, and each iteration will take longer", file=sys.stderr)
    ranks = [subprocess.Popen([sys.executable, "-m", "gatgan.cli", *argv],
                              env={**environ, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(count)]
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:  # Ctrl-C: each rank has it too and stops as a one-process run does; `finally` waits for them
        return _wait_for(ranks)
    except _Terminated:  # a scheduler or `kill` stops the run: the ranks, which did not get it, too
        _stop(ranks, grace=0.0)
        return 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(ranks, STOP_GRACE_S)


class _Terminated(Exception):
    pass


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _wait_for(ranks: list[subprocess.Popen]) -> int:
    while True:
        codes = [rank.poll() for rank in ranks]
        failed = [code for code in codes if code]
        if failed:
            return failed[0]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(POLL_S)


def _stop(ranks: list[subprocess.Popen], grace: float) -> None:
    """Ranks still running after `grace` seconds (a failed peer leaves them waiting in a collective
    until its timeout) are terminated, then killed if they do not exit within STOP_GRACE_S."""
    deadline = time.monotonic() + grace
    for rank in ranks:
        try:
            rank.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rank.terminate()
    for rank in ranks:
        try:
            rank.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait()


def _free_port() -> int:
    """A port free now on the loopback interface (rank 0's store binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
