"""benchmarks/gpu_check.py: its --tiny CPU run writes the JSON a GPU run would, and a failing or
out-of-memory cell becomes a status instead of ending the check."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_table_prefers_the_specific_name(gpu_check):
    assert gpu_check.table_peak("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.table_peak("NVIDIA H100 PCIe") == 756
    assert gpu_check.table_peak("NVIDIA H200") == 989
    assert gpu_check.table_peak("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.table_peak("NVIDIA GeForce RTX 3090") is None


def test_out_of_memory_is_a_status(gpu_check):
    def run_out():
        raise torch.OutOfMemoryError("CUDA out of memory")

    assert gpu_check.measured(run_out) == {"status": "OOM"}
    assert gpu_check.measured(lambda: {"images_per_s": 1.0}) == {"status": "ok", "images_per_s": 1.0}


@pytest.mark.slow
def test_a_crashing_cell_is_reported(gpu_check):
    result = gpu_check.in_subprocess({"kind": "train", "overrides": ["model.generator=GAT-Q/3"]})
    assert result["status"].startswith("failed (exit 1)") and "GAT-Q/3" in result["status"]


@pytest.mark.slow
def test_tiny_run_writes_one_row_per_configuration(tmp_path):
    out = tmp_path / "x.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"]["peak_source"].startswith("measured") and result["device"]["bf16_peak_tflops"] > 0
    assert result["torch"] == torch.__version__ and result["latent"] == [4, 8, 8]
    assert [(r["model"], r["grad_checkpointing"], r["compile"]) for r in result["train"]] == \
        [("GAT-Nano/2", False, False), ("GAT-Nano/2", True, False)]
    for row in result["train"]:
        assert row["status"] == "ok", row
        assert row["images_per_s"] > 0 and row["peak_memory_mib"] > 0 and row["seconds_per_iteration"] > 0
        assert row["model_flops_per_iteration"] > 0 and 0 < row["mfu"]
    [sampling] = result["sampling"]
    assert sampling["status"] == "ok" and sampling["images_per_s"] > 0
    assert sampling["seconds_for_50k"] == pytest.approx(50_000 / sampling["images_per_s"])
    assert "| GAT-Nano/2 | 4 | off | off | ok |" in done.stdout and "| GAT-Nano/2 | 4 | on | off | ok |" in done.stdout
