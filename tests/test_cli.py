import numpy as np
import pytest
from PIL import Image
from tinyrun import tiny_overrides

from gatgan.cli import main


@pytest.mark.slow
def test_train_then_sample_from_the_command_line(tiny_data_with_teacher, tmp_path, capsys):
    """The shipped preset (REPA on, with the teacher stored with the data) on the tiny data."""
    main(["train", "-c", "fmnist", *tiny_overrides(tiny_data_with_teacher, tmp_path)])
    run = tmp_path / "tiny"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "latest").is_file()
    out, grid = tmp_path / "s.npz", tmp_path / "grid.png"
    main(["sample", "--run", str(run), "--num", "7", "--out", str(out), "--grid", str(grid), "--batch-size", "3"])
    data = np.load(out)
    assert data["arr_0"].shape == (7, 8, 8, 1) and data["arr_1"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert Image.open(grid).size[1] > 3 * 8  # one row per class
    main(["sample", "--run", str(run), "--num", "4", "--classes", "bright,dark", "--out", str(out)])
    assert np.load(out)["arr_1"].tolist() == [2, 0, 2, 0]


def test_errors_are_one_clear_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--run", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "gatgan sample: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "-c", "fmnist", "train.nonsense=1"])
    assert "unknown config key" in capsys.readouterr().err


def test_models_lists_the_paper_sizes(capsys):
    main(["models"])
    out = capsys.readouterr().out
    assert "GAT-XL/2" in out and "602" in out
