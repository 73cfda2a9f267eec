"""A run never trains on NaN, never saves a non-finite checkpoint, never runs twice at once, and
restarts after a damaged start-up file or log."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gatgan.train.checkpoint import latest_checkpoint, load_network
from gatgan.train.rundir import RunDirectoryBusy, RunLock, append_stats, read_stats, truncate_stats
from gatgan.train.trainer import Trainer, TrainingDiverged, train

from tinyrun import poison, tiny_config


def all_finite(checkpoint: Path) -> bool:
    return all(torch.isfinite(t).all() for name in ("generator", "discriminator", "generator_ema")
               for t in load_network(checkpoint, name).values() if t.is_floating_point())


@pytest.mark.parametrize("branch", ["discriminator_loss", "generator_loss"])
def test_a_non_finite_step_rolls_back_to_the_last_checkpoint_with_a_lower_lr(tiny_data, tmp_path, capsys, branch):
    trainer = Trainer(tiny_config(tiny_data, tmp_path), progress=False)
    lr = [g["lr"] for g in trainer.opt_G.param_groups]
    fired = poison(trainer, {5}, branch)
    trainer.train()
    trainer.close()
    assert fired == [5]
    out = capsys.readouterr().out
    assert "step 5: the gradient norm of" in out and "Rolled back from step 5 to step 3" in out
    assert trainer.step == 6
    assert [g["lr"] for g in trainer.opt_G.param_groups] == pytest.approx([x * 0.5 for x in lr])
    run_dir = tmp_path / "tiny"
    assert all_finite(latest_checkpoint(run_dir))
    assert [r["step"] for r in read_stats(run_dir / "stats.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_non_finite_step_before_the_first_checkpoint_restarts_from_the_initial_weights(tiny_data, tmp_path, capsys):
    reference = train(tiny_config(tiny_data, tmp_path / "reference"), progress=False)
    trainer = Trainer(tiny_config(tiny_data, tmp_path / "poisoned", **{"train.divergence_lr_backoff": 1.0}),
                      progress=False)
    poison(trainer, {2})
    trainer.train()
    trainer.close()
    assert "Rolled back from step 2 to step 0" in capsys.readouterr().out
    # with no lr change the replay is the uninterrupted run: the initial state came back exactly
    for name, tensor in trainer.G.state_dict().items():
        torch.testing.assert_close(tensor, reference.G.state_dict()[name], rtol=0, atol=0)


def test_a_run_that_keeps_diverging_stops_with_a_message_and_no_bad_checkpoint(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, tmp_path, **{"optim.base_lr": 1e6, "train.divergence_retries": 2})
    with pytest.raises(TrainingDiverged, match=r"step \d: the gradient norm of [DG] is .*gave up after 2 roll-backs"):
        train(config, progress=False)
    assert "learning rates x0.5 (roll-back 2 of 2)" in capsys.readouterr().out
    run_dir = tmp_path / "tiny"
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is None or all_finite(checkpoint)
    log = run_dir / "stats.jsonl"
    for line in (log.read_text() if log.is_file() else "").splitlines():
        json.loads(line, parse_constant=lambda token: pytest.fail(f"bare {token} in stats.jsonl"))


def test_a_checkpoint_with_non_finite_weights_is_never_saved(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path), progress=False)
    with torch.no_grad():
        next(trainer.G.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="non-finite weights in generator"):
        trainer.save()
    trainer.close()
    assert latest_checkpoint(tmp_path / "tiny") is None


def test_the_log_never_holds_bare_nan_tokens(tmp_path):
    path = tmp_path / "stats.jsonl"
    append_stats(path, {"step": 1, "loss/D": float("nan"), "fd": float("inf"), "kimg": 0.5})
    assert json.loads(path.read_text()) == {"step": 1, "loss/D": None, "fd": None, "kimg": 0.5}


def test_the_log_is_cut_back_to_the_resumed_step_without_its_torn_last_line(tmp_path):
    path = tmp_path / "stats.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 1, 2)) + '{"step": 3, "lo')
    truncate_stats(path, 2)
    assert [r["step"] for r in read_stats(path)] == [1, 2, 1, 2]
    truncate_stats(path, 0)
    assert path.read_text() == ""


def test_a_fresh_start_drops_the_log_of_attempts_killed_before_their_first_checkpoint(tiny_data, tmp_path):
    run_dir = tmp_path / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "stats.jsonl").write_text(json.dumps({"step": 1, "loss/D": 1.0}) + "\n")
    train(tiny_config(tiny_data, tmp_path), progress=False)
    assert [r["step"] for r in read_stats(run_dir / "stats.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_a_restart_rewrites_no_unchanged_start_up_file(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    train(config, progress=False)
    run_dir = tmp_path / "tiny"
    before = {name: os.stat(run_dir / name).st_ino for name in ("config.yaml", "data.json")}
    train(config, progress=False)
    assert {name: os.stat(run_dir / name).st_ino for name in before} == before


@pytest.mark.parametrize("name", ["config.yaml", "data.json"])
@pytest.mark.parametrize("damage", ["", "{not yaml: ["])
def test_a_damaged_start_up_file_is_restored_from_the_checkpoint(tiny_data, tmp_path, capsys, name, damage):
    config = tiny_config(tiny_data, tmp_path, **{"train.kimg": 0.036})
    train(config, progress=False)
    run_dir = tmp_path / "tiny"
    original = (run_dir / name).read_text()
    (run_dir / name).write_text(damage)
    train(config, progress=False)  # the run is complete: only the start-up files are handled
    assert f"{run_dir / name} was damaged" in capsys.readouterr().out
    assert (run_dir / name).read_text() == original
    train(tiny_config(tiny_data, tmp_path), progress=False)  # and it goes on
    assert latest_checkpoint(run_dir).name == "00000006"


def test_a_damaged_start_up_file_without_a_checkpoint_is_named(tiny_data, tmp_path):
    run_dir = tmp_path / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("")
    with pytest.raises(ValueError, match=r"config\.yaml is damaged .*no checkpoint holds a copy"):
        train(tiny_config(tiny_data, tmp_path), progress=False)


def test_a_second_trainer_on_a_run_directory_is_refused_naming_the_holder(tiny_data, tmp_path):
    first = Trainer(tiny_config(tiny_data, tmp_path), progress=False)
    with pytest.raises(RunDirectoryBusy, match=rf"in use by another gatgan process \(pid {os.getpid()} on host"):
        Trainer(tiny_config(tiny_data, tmp_path), progress=False)
    first.close()
    Trainer(tiny_config(tiny_data, tmp_path), progress=False).close()  # free again


def test_the_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gatgan.train.rundir import RunLock; "
                               "RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid}"):
            RunLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).release()


def test_rollback_keeps_the_log_free_of_the_undone_steps(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, tmp_path), progress=False)
    poison(trainer, {6})
    trainer.train()
    trainer.close()
    records = read_stats(tmp_path / "tiny" / "stats.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss/D"]) for r in records)
