"""train.compile: compiled blocks train like eager ones; without a compiler the run goes on eagerly."""

import pytest
import torch

from gatgan.train import compile as compile_module
from gatgan.train.compile import compile_blocks, compiler_missing
from gatgan.train.trainer import Trainer

from tinyrun import tiny_config


def test_without_a_compiler_the_blocks_stay_eager_and_the_run_says_why(monkeypatch, capsys):
    monkeypatch.setattr(compile_module.shutil, "which", lambda name: None)
    block = torch.nn.Linear(2, 2)
    assert compiler_missing(torch.device("cpu")).startswith("no C++ compiler")
    assert compile_blocks([block], torch.device("cpu")) is False
    assert "training without compilation" in capsys.readouterr().err
    assert block._compiled_call_impl is None  # nn.Module.compile was not called


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing(torch.device("cpu")) is not None, reason="no C++ compiler for inductor")
def test_compiled_blocks_give_the_eager_losses(tiny_data, tmp_path, capsys):
    torch._dynamo.utils.counters.clear()
    eager = Trainer(tiny_config(tiny_data, tmp_path / "eager"), progress=False)
    compiled = Trainer(tiny_config(tiny_data, tmp_path / "compiled", **{"train.compile": True}), progress=False)
    assert "the first iterations" in capsys.readouterr().err  # says why the first iteration is slow
    try:
        for _ in range(2):
            a, b = eager.train_step(), compiled.train_step()
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # compiled, not fallen back
    finally:
        eager.close()
        compiled.close()
