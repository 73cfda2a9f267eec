import pytest
import torch

from gatgan.train.checkpoint import (
    CHECKPOINT_DIR, atomic_write_text, latest_checkpoint, load_network, load_state, save_checkpoint)


def save(run_dir, step, keep=0):
    return save_checkpoint(run_dir, step, {"net": {"w": torch.full((2,), float(step))}},
                           {"step": step, "rng": [torch.arange(3, dtype=torch.uint8)]}, {"note.txt": "hi"}, keep)


def test_round_trip_and_latest_pointer(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    save(tmp_path, 5)
    path = save(tmp_path, 10)
    assert latest_checkpoint(tmp_path) == path
    assert torch.equal(load_network(path, "net")["w"], torch.full((2,), 10.0))
    state = load_state(path)  # weights_only=True
    assert state["step"] == 10 and torch.equal(state["rng"][0], torch.arange(3, dtype=torch.uint8))
    assert (path / "note.txt").read_text() == "hi"


def test_old_checkpoints_are_pruned_but_latest_is_kept(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    names = sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir() if p.is_dir())
    assert names == ["00000003", "00000004"]


def test_an_interrupted_save_leaves_the_previous_checkpoint_in_place(tmp_path):
    good = save(tmp_path, 1)
    (tmp_path / CHECKPOINT_DIR / ".00000002.tmp").mkdir()  # a crash mid-write
    assert latest_checkpoint(tmp_path) == good


def test_dangling_pointer_and_missing_network_are_reported(tmp_path):
    path = save(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="discriminator"):
        load_network(path, "discriminator")
    atomic_write_text(tmp_path / CHECKPOINT_DIR / "latest", "00000099\n")
    with pytest.raises(FileNotFoundError, match="00000099"):
        latest_checkpoint(tmp_path)
