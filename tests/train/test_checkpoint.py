import errno
import re

import pytest
import torch
from tinyrun import tiny_config

from gatgan.train import checkpoint as checkpoint_module
from gatgan.train.checkpoint import (
    BEST, CHECKPOINT_DIR, MANIFEST, DamagedCheckpointError, atomic_write_text, latest_checkpoint, load_network,
    load_state, save_checkpoint, verify_checkpoint, write_checkpoint_dir)
from gatgan.train.trainer import Trainer, train


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


def test_a_missing_network_is_reported(tmp_path):
    path = save(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="discriminator"):
        load_network(path, "discriminator")


def test_a_dangling_pointer_falls_back_to_the_newest_folder(tmp_path, capsys):
    good = save(tmp_path, 1)
    atomic_write_text(tmp_path / CHECKPOINT_DIR / "latest", "00000099\n")
    assert latest_checkpoint(tmp_path) == good
    assert f"00000099 does not exist; falling back to {good}" in capsys.readouterr().err
    (good / "net.safetensors").unlink()
    with pytest.raises(DamagedCheckpointError, match="00000099 does not exist; no older checkpoint"):
        latest_checkpoint(tmp_path)


def truncate(file):
    file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])


def flip_one_byte(file):
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01
    file.write_bytes(bytes(data))


def delete(file):
    file.unlink()


DAMAGES = [(truncate, "state.pt", "truncated"), (truncate, "net.safetensors", "truncated"),
           (flip_one_byte, "net.safetensors", "sha256 mismatch"), (flip_one_byte, "state.pt", "sha256 mismatch"),
           (delete, "note.txt", "is missing")]


@pytest.mark.parametrize("damage, name, problem", DAMAGES)
def test_a_damaged_latest_falls_back_to_the_older_checkpoint_and_names_the_file(tmp_path, capsys, damage, name,
                                                                               problem):
    older, newest = save(tmp_path, 3), save(tmp_path, 6)
    damage(newest / name)
    with pytest.raises(DamagedCheckpointError, match=re.escape(str(newest / name))):
        verify_checkpoint(newest)
    assert latest_checkpoint(tmp_path) == older
    report = capsys.readouterr().err
    assert str(newest / name) in report and problem in report and f"falling back to {older}" in report


def test_each_skipped_checkpoint_is_reported_and_none_intact_names_the_latest(tmp_path, capsys):
    oldest, older, newest = save(tmp_path, 1), save(tmp_path, 2), save(tmp_path, 3)
    truncate(newest / "state.pt")
    delete(older / "net.safetensors")
    assert latest_checkpoint(tmp_path) == oldest
    report = capsys.readouterr().err.splitlines()
    assert report == [f"{newest / 'state.pt'} is damaged (truncated or extended: {(newest / 'state.pt').stat().st_size}"
                      f" of {(oldest / 'state.pt').stat().st_size} bytes); falling back to {oldest}",
                      f"{older / 'net.safetensors'} is missing; falling back to {oldest}"]
    flip_one_byte(oldest / "note.txt")
    with pytest.raises(DamagedCheckpointError, match=re.escape(f"{newest / 'state.pt'} is damaged")) as error:
        latest_checkpoint(tmp_path)
    assert error.value.file == newest / "state.pt"


def test_newer_folders_than_latest_and_the_best_folder_are_not_candidates(tmp_path):
    first = save(tmp_path, 1)
    write_checkpoint_dir(tmp_path / CHECKPOINT_DIR / BEST, {"net": {"w": torch.zeros(2)}})
    write_checkpoint_dir(tmp_path / CHECKPOINT_DIR / "00000002", {"net": {"w": torch.zeros(2)}})  # no pointer yet
    assert latest_checkpoint(tmp_path) == first


def test_a_checkpoint_without_checksums_is_accepted_unless_a_file_is_empty(tmp_path):
    path = save(tmp_path, 1)
    (path / MANIFEST).unlink()  # as written by an older gatgan
    assert latest_checkpoint(tmp_path) == path
    assert load_state(path)["step"] == 1
    (path / "note.txt").write_text("")
    with pytest.raises(DamagedCheckpointError, match=re.escape(f"{path / 'note.txt'} is damaged (empty)")):
        verify_checkpoint(path)


def test_a_damaged_checksum_list_is_reported(tmp_path):
    path = save(tmp_path, 1)
    (path / MANIFEST).write_text('{"state.pt": ')
    with pytest.raises(DamagedCheckpointError, match=MANIFEST):
        verify_checkpoint(path)


def fail_with_a_full_disk(obj, file, *args, **kwargs):  # the signature of save_file and torch.save
    with open(file, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["save_file", "torch.save"])
def test_a_full_disk_leaves_no_staging_folder_and_the_previous_checkpoint_intact(tmp_path, monkeypatch, writer):
    previous = save(tmp_path, 1)
    write_checkpoint_dir(tmp_path / CHECKPOINT_DIR / BEST, {"net": {"w": torch.ones(2)}})
    if writer == "save_file":
        monkeypatch.setattr(checkpoint_module, "save_file", fail_with_a_full_disk)
    else:
        monkeypatch.setattr(torch, "save", fail_with_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path, 2)
    if writer == "save_file":
        with pytest.raises(OSError, match="No space left"):
            write_checkpoint_dir(tmp_path / CHECKPOINT_DIR / BEST, {"net": {"w": torch.zeros(2)}})
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["00000001", BEST, "latest"]
    assert latest_checkpoint(tmp_path) == previous and load_state(previous)["step"] == 1
    verify_checkpoint(tmp_path / CHECKPOINT_DIR / BEST)
    assert torch.equal(load_network(tmp_path / CHECKPOINT_DIR / BEST, "net")["w"], torch.ones(2))


def test_training_resumes_from_the_older_checkpoint_when_the_latest_is_damaged(tiny_data, tmp_path, capsys):
    train(tiny_config(tiny_data, tmp_path), progress=False).close()  # checkpoints at steps 3 and 6
    checkpoints = tmp_path / "tiny" / CHECKPOINT_DIR
    truncate(checkpoints / "00000006" / "state.pt")
    resumed = Trainer(tiny_config(tiny_data, tmp_path), progress=False)
    resumed.close()
    assert resumed.step == 3
    assert f"{checkpoints / '00000006' / 'state.pt'} is damaged" in capsys.readouterr().err
