"""What gatgan does on one GPU, in one run of a few minutes: training speed, memory and MFU of
GAT-S/2, GAT-B/2 and GAT-XL/2, and how long 50K samples take.

    python benchmarks/gpu_check.py                        # a CUDA machine; ~8 minutes on an H100/H200
    python benchmarks/gpu_check.py --batch GAT-XL/2=16    # another per-device batch for a model
    python benchmarks/gpu_check.py --tiny --out x.json    # CI: the code paths on the CPU, in seconds

Every model trains on SD-VAE's ImageNet-256 latent shape (32x32x4, 1000 classes; synthetic prepared
data from train_throughput.make_data) with train.precision=bf16 (autocast) and the paper's other
defaults, in four cells: train.grad_checkpointing off/on x train.compile off/on. Each cell runs in a
fresh subprocess, so its peak memory is its own and a CUDA out-of-memory error ends only that cell,
reported as "OOM". Per cell:

- images/s: the global batch x iterations/s, from the mean of --steps timed `Trainer.train_step()`
  iterations (D step, G step, EMA update) after 3 untimed ones (torch.compile compiles in those).
- peak memory: torch.cuda.max_memory_allocated over the timed iterations (--tiny: the process's
  peak RSS, which includes the Python/torch runtime).
- MFU: model FLOPs per iteration x iterations/s / the device's dense bf16 peak. Model FLOPs are
  counted by FlopCounterMode over one eager, non-checkpointed train_step at batch 2 and scaled to the
  cell's batch (every op is per sample), so checkpointing's recomputation is not useful work and
  lowers MFU. The peak comes from BF16_PEAK_TFLOPS by torch.cuda.get_device_name() substring; on
  another device (and with --tiny) it is the best bf16 matmul measured here, labelled "measured".
  train.compile compiles the transformer blocks and falls back to eager when it cannot; the cell
  then says why (or dynamo's warnings on stderr do).

Per model, sampling: the seconds that gatgan's Sampler (EMA generator in fp32, decode, uint8 images;
what `gatgan sample` and evaluation run) takes for 50,000 images, extrapolated from 3 timed batches
of --sample-batch after one untimed batch, in a Trainer's process, so with train.tf32's TF32 matmuls
as in-training evaluation. The decoder is a diffusers AutoencoderKL of the bundled sd-vae-ft-mse
architecture with random weights (the cost of the real ones); without diffusers, the generator
alone, and the output says so.

--tiny runs the same code on the CPU in well under a minute: GAT-Nano/2 on an 8x8x4 latent with 10
classes, batch 4, 1 warm-up and 1 timed iteration, no compile cells, and a measured peak.

Output: a markdown table on stdout (progress on stderr) and the same numbers as JSON in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CPU_ATTENTION_FLOPS, make_data, matmul_peak, peak_rss_mib, timed  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s), the first name found in torch.cuda.get_device_name() wins.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("A100", 312),
                    ("L40S", 362), ("A6000", 155), ("RTX 4090", 165))
FLOP_BATCH = 2  # batch of the step whose FLOPs are counted
FID_SAMPLES = 50_000
PROFILES = {  # per-device batch by model; train.compile values; torch threads (0: torch's default)
    "gpu": dict(device="cuda", latent=(4, 32), classes=1000, batches={"GAT-S/2": 64, "GAT-B/2": 64, "GAT-XL/2": 32},
                compile=(False, True), threads=0, warmup=3, steps=10, sample_batch=64, sample_batches=3,
                memory="torch.cuda.max_memory_allocated"),
    "tiny": dict(device="cpu", latent=(4, 8), classes=10, batches={"GAT-Nano/2": 4},
                 compile=(False,), threads=1, warmup=1, steps=1, sample_batch=2, sample_batches=1,
                 memory="peak RSS (VmHWM) of the process"),
}
START = time.perf_counter()


# ------------------------------------------------------------------------------- workers
def measured(measure: Callable[[], dict]) -> dict:
    """measure()'s numbers with status "ok", or status "OOM" when the device ran out of memory."""
    try:
        return {"status": "ok", **measure()}
    except torch.OutOfMemoryError:
        return {"status": "OOM"}


def time_steps(trainer, warmup: int, steps: int) -> dict:
    """Seconds per train_step over `steps` iterations after `warmup` untimed ones, and peak memory."""
    device = trainer.device
    for _ in range(warmup):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: [trainer.train_step() for _ in range(steps)], device) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else peak_rss_mib()
    return {"seconds_per_iteration": seconds, "images_per_s": trainer.plan.global_batch / seconds,
            "peak_memory_mib": peak}


def sampler_with_decoder(trainer):
    """gatgan's Sampler on the EMA generator, decoding with a random-weight SD-VAE when diffusers is
    installed (else with the data's identity tokenizer: the generator alone), and what decodes."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        return trainer.sampler, "none: diffusers is not installed, generator alone"
    from gatgan.tokenizers import SDVAETokenizer
    from gatgan.tokenizers.sd_vae import DEFAULT_CONFIG
    vae = SDVAETokenizer(AutoencoderKL.from_config(json.loads(DEFAULT_CONFIG.read_text())))
    return (dataclasses.replace(trainer.sampler, tokenizer=vae.to(trainer.device).eval()),
            "SD-VAE (sd-vae-ft-mse architecture, random weights)")


def time_sampling(trainer, batch: int, batches: int) -> dict:
    """Images/s of Sampler.images over `batches` batches after one untimed batch."""
    from gatgan.sample import random_labels
    sampler, decoder = sampler_with_decoder(trainer)
    num = batch * batches
    labels = random_labels(num, len(sampler.class_names))
    sampler.images(list(range(batch)), labels[:batch], batch_size=batch)
    rate = num / timed(lambda: sampler.images(list(range(num)), labels, batch_size=batch), trainer.device)
    return {"batch": batch, "decoder": decoder, "images_per_s": rate, "seconds_for_50k": FID_SAMPLES / rate}


def train_cell(trainer, spec: dict) -> dict:
    """Timed iterations of one (checkpointing, compile) cell, and why compile is off if it is."""
    from gatgan.train.compile import compiler_missing
    reason = compiler_missing(trainer.device) if spec["compile"] else None
    return {**measured(lambda: time_steps(trainer, spec["warmup"], spec["steps"])),
            "compile_note": f"not compiled: {reason}" if reason else None}


def model_flops_and_sampling(trainer, spec: dict) -> dict:
    """FLOPs per image of one eager step (the trainer runs at FLOP_BATCH), then sampling speed."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        trainer.train_step()
    return {"flops_per_image": counter.get_total_flops() / trainer.plan.global_batch,
            "sampling": measured(lambda: time_sampling(trainer, spec["sample_batch"], spec["sample_batches"]))}


WORKERS = {"train": train_cell, "model": model_flops_and_sampling}


def worker(spec: dict) -> dict:
    """One Trainer from spec["overrides"], measured by WORKERS[spec["kind"]], in a fresh process."""
    from gatgan.train.config import load_config
    from gatgan.train.distributed import shutdown_distributed
    from gatgan.train.trainer import Trainer
    trainer = Trainer(load_config(None, spec["overrides"]), progress=False)
    try:
        return WORKERS[spec["kind"]](trainer, spec)
    finally:
        trainer.close()
        shutdown_distributed()


def in_subprocess(spec: dict) -> dict:
    """The worker's result; status "failed (...)" with its last stderr line when it crashed."""
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"failed (exit {done.returncode}): {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- driver
def overrides(model: str, batch: int, name: str, data: Path, runs: Path, profile: dict,
              checkpointing: bool = False, compile: bool = False) -> list[str]:
    return [f"data.path={data}", f"run.dir={runs}", f"run.name={name}", f"model.generator={model}",
            f"model.discriminator={model}", f"train.global_batch={batch}", f"train.device={profile['device']}",
            "train.precision=bf16", f"train.threads={profile['threads']}",
            f"train.grad_checkpointing={str(checkpointing).lower()}", f"train.compile={str(compile).lower()}"]


def progress(what: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {what}", file=sys.stderr, flush=True)


def measure_model(model: str, batch: int, data: Path, runs: Path, profile: dict) -> dict:
    """FLOPs per image and sampling, then one training row per (checkpointing, compile) cell."""
    slug = model.replace("/", "_")
    progress(f"{model}: FLOP count and sampling")
    reference = in_subprocess(dict(kind="model", sample_batch=profile["sample_batch"],
                                   sample_batches=profile["sample_batches"],
                                   overrides=overrides(model, FLOP_BATCH, f"{slug}-flops", data, runs, profile)))
    flops = reference["flops_per_image"] * batch if "flops_per_image" in reference else None
    rows = []
    for checkpointing in (False, True):
        for compile in profile["compile"]:
            progress(f"{model}: batch {batch}, grad_checkpointing={checkpointing}, compile={compile}")
            cell = in_subprocess(dict(kind="train", warmup=profile["warmup"], steps=profile["steps"], compile=compile,
                                      overrides=overrides(model, batch, f"{slug}-ckpt{int(checkpointing)}-"
                                                          f"compile{int(compile)}", data, runs, profile,
                                                          checkpointing, compile)))
            rows.append({"model": model, "batch": batch, "grad_checkpointing": checkpointing, "compile": compile,
                         **cell, "model_flops_per_iteration": flops})
    return {"train": rows, "sampling": {"model": model, **reference.get("sampling", reference)}}


def table_peak(device_name: str) -> float | None:
    """Dense bf16 TFLOP/s of the first BF16_PEAK_TFLOPS entry whose name is in device_name."""
    return next((tflops for key, tflops in BF16_PEAK_TFLOPS if key in device_name), None)


def device_peak(device: torch.device) -> dict:
    """The device's name and dense bf16 peak: from BF16_PEAK_TFLOPS, else measured (with --tiny, always)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = table_peak(name)
        if known:
            return {"name": name, "bf16_peak_tflops": known, "peak_source": "table"}
        return {"name": name, "bf16_peak_tflops": matmul_peak(device, torch.bfloat16, n=8192) / 1e3,
                "peak_source": "measured (best 8192^3 bf16 matmul)"}
    return {"name": f"CPU ({platform.processor() or platform.machine()})",
            "bf16_peak_tflops": matmul_peak(device, torch.bfloat16, n=256) / 1e3,
            "peak_source": "measured (best 256^3 bf16 matmul)"}


def add_mfu(rows: list[dict], peak_tflops: float) -> None:
    for row in rows:
        ok = row["status"] == "ok" and row["model_flops_per_iteration"]
        row["mfu"] = row["model_flops_per_iteration"] / row["seconds_per_iteration"] / (peak_tflops * 1e12) \
            if ok else None


def shown(value: float | None, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else format(value * scale, fmt) + suffix


def report(result: dict) -> None:
    device = result["device"]
    print(f"# gatgan GPU check: {device['name']}, torch {result['torch']}, bf16 autocast, latent "
          f"{'x'.join(map(str, result['latent']))}, {result['classes']} classes\n\nbf16 dense peak: "
          f"{device['bf16_peak_tflops']:.1f} TFLOP/s ({device['peak_source']})\n")
    print("| model | batch | grad ckpt | compile | status | it/s | images/s | peak memory (MiB) | model TFLOP/it "
          "| MFU |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in result["train"]:
        ok = r["status"] == "ok"
        status = r["status"] + (f" ({r['compile_note']})" if r.get("compile_note") else "")
        print(f"| {r['model']} | {r['batch']} | {'on' if r['grad_checkpointing'] else 'off'} "
              f"| {'on' if r['compile'] else 'off'} | {status} "
              f"| {shown(1 / r['seconds_per_iteration'] if ok else None, '.3g')} "
              f"| {shown(r.get('images_per_s'), '.4g')} | {shown(r.get('peak_memory_mib'), '.0f')} "
              f"| {shown(r['model_flops_per_iteration'], '.3g', 1e-12)} | {shown(r['mfu'], '.1f', 100, '%')} |")
    print("\n| model | sampling batch | decode | status | images/s | 50K samples (s) |\n|---|---|---|---|---|---|")
    for s in result["sampling"]:
        print(f"| {s['model']} | {s.get('batch', '-')} | {s.get('decoder', '-')} | {s['status']} "
              f"| {shown(s.get('images_per_s'), '.4g')} | {shown(s.get('seconds_for_50k'), '.0f')} |")


def parse_batches(items: list[str], defaults: dict[str, int]) -> dict[str, int]:
    batches = dict(defaults)
    for item in items:
        model, _, batch = item.partition("=")
        if model not in defaults or not batch.isdigit() or int(batch) < 1:
            raise SystemExit(f"--batch {item!r}: expected MODEL=N with MODEL one of {', '.join(defaults)}")
        batches[model] = int(batch)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: GAT-Nano/2, 8x8x4 latent, no compile")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "gpu_check.json")
    parser.add_argument("--batch", nargs="+", default=[], metavar="MODEL=N",
                        help="per-device batch of a model (default: GAT-S/2=64 GAT-B/2=64 GAT-XL/2=32)")
    parser.add_argument("--steps", type=int, help="timed iterations per cell (default 10; --tiny 1)")
    parser.add_argument("--sample-batch", type=int, help="sampling batch (default 64; --tiny 2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    profile = PROFILES["tiny" if args.tiny else "gpu"]
    profile = {**profile, "steps": args.steps or profile["steps"],
               "sample_batch": args.sample_batch or profile["sample_batch"]}
    batches = parse_batches(args.batch, profile["batches"])
    if profile["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device (or --tiny for the CPU smoke run)")
    if profile["threads"]:
        torch.set_num_threads(profile["threads"])
    tmp = Path(tempfile.mkdtemp(prefix="gatgan-gpu-check-"))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # prepare's summary line: stdout is the report's
            data = make_data(tmp, profile["latent"], profile["classes"])
        models = [measure_model(model, batch, data, tmp / "runs", profile) for model, batch in batches.items()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Only now does this process touch the device (a matmul, for an unknown peak): the cells ran without its context.
    device = device_peak(torch.device(profile["device"]))
    rows = [row for m in models for row in m["train"]]
    add_mfu(rows, device["bf16_peak_tflops"])
    channels, size = profile["latent"]
    result = {"device": device, "torch": torch.__version__, "precision": "bf16", "latent": [channels, size, size],
              "classes": profile["classes"], "peak_memory": profile["memory"], "warmup_iterations": profile["warmup"],
              "timed_iterations": profile["steps"], "train": rows, "sampling": [m["sampling"] for m in models]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    print(f"\nJSON: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
