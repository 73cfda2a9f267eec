"""Training and sampling throughput of gatgan, with how close it gets to this machine's matmul peak.

For each configuration this runs real `Trainer.train_step()` iterations (one full GAT iteration:
D step, G step on the same batch, EMA update) on synthetic prepared data and reports iterations/s,
real images/s, peak memory, the achieved GFLOP/s (FLOPs of one iteration counted with
`torch.utils.flop_counter.FlopCounterMode`, divided by the measured seconds per iteration) as a
fraction of a plain fp32 matmul's GFLOP/s measured in the same run, and EMA-generator sampling
images/s. It answers "how fast does a run train here, and how much of the hardware does it use?".

Configurations: "cpu" is the fmnist preset (model and batch read from configs/fmnist.yaml) on an
8x8x4 latent with 10 classes; "s2" is GAT-S/2 on SD-VAE's ImageNet-256 latent shape (32x32x4, 1000
classes) with a small batch and the paper's other defaults. Each configuration runs in its own
subprocess so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

if TYPE_CHECKING:
    from gatgan.train.trainer import Trainer

NUM_EXAMPLES = 2048  # synthetic prepared examples per configuration
SAMPLE_REPEATS = 3  # timed sampling batches (after one warm-up batch)
CONFIGS = {  # latent (channels, size), classes, decode samples with a SmallVAE?
    "cpu": dict(title="CPU preset", preset="fmnist", latent=(4, 8), classes=10, decode=True),
    "s2": dict(title="GAT-S/2", preset=None, latent=(4, 32), classes=1000, decode=False),
}
# torch's FLOP registry lacks the CPU flash-attention kernels that scaled_dot_product_attention uses.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, **__: sdpa_backward_flop_count(grad, q, k, v),
}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of fn(), synchronising an accelerator before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved(trainers: Mapping[str, Trainer], rounds: int, steps: int = 1, warmup: int = 1
                ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Seconds per training iteration of trainers that share one process, their rounds of `steps`
    iterations taken in turn, so that a machine whose speed drifts, or that is shared, slows them
    alike and their ratios hold. Returns each trainer's first iteration (which pays any compilation;
    `warmup` - 1 more follow it untimed) and its seconds per iteration in each round."""
    device = next(iter(trainers.values())).device
    first = {}
    for name, trainer in trainers.items():
        first[name] = timed(trainer.train_step, device)
        for _ in range(warmup - 1):
            trainer.train_step()
    per_round: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            per_round[name].append(timed(lambda: [trainer.train_step() for _ in range(steps)], device) / steps)
    return first, per_round


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n @ n x n matmul after two warm-up products."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def peak_rss_mib() -> float:
    """Peak RSS of this process image: Linux's VmHWM, because ru_maxrss would include the parent's
    high-water mark (the kernel carries it across fork + exec). Elsewhere ru_maxrss, read as KiB."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.is_file() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(root: Path, latent: tuple[int, int], classes: int) -> Path:
    """Random uint8 'images' [N, c, h, h] through IdentityTokenizer(c): a stand-in latent data set."""
    from gatgan.data.inputs import prepare_arrays
    from gatgan.data.prepare import PrepareOptions
    from gatgan.tokenizers import IdentityTokenizer
    channels, size = latent
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_EXAMPLES, channels, size, size), dtype=np.uint8)
    labels = np.arange(NUM_EXAMPLES) % classes
    return prepare_arrays(root / f"data-{channels}x{size}-{classes}", images, labels,
                          [f"class{i}" for i in range(classes)], IdentityTokenizer(channels), "synthetic",
                          PrepareOptions(progress=False))


@torch.no_grad()
def sampling_rate(trainer, batch: int, decode: bool) -> float:
    """Images/s of the EMA generator (plus a random-init SmallVAE decode to uint8 images if `decode`)."""
    from gatgan.images import to_uint8
    from gatgan.tokenizers import SmallVAE
    G, device = trainer.ema.model, trainer.device
    z = torch.randn(batch, G.z_dim, device=device)
    y = torch.randint(G.num_classes, (batch,), device=device)
    vae = SmallVAE(image_channels=1, latent_channels=G.channels).to(device).eval() if decode else None

    def sample() -> None:
        latents = G(z, y)
        if vae is not None:
            to_uint8(vae.decode(trainer.data.scaling.denormalize(latents)))

    sample()
    return SAMPLE_REPEATS * batch / timed(lambda: [sample() for _ in range(SAMPLE_REPEATS)], device)


def worker(spec: dict) -> dict:
    """One configuration, in a fresh process: FLOP count, warm-up, timed steps, memory, sampling."""
    torch.set_num_threads(spec["threads"])
    from gatgan.train.config import load_config
    from gatgan.train.distributed import shutdown_distributed
    from gatgan.train.trainer import Trainer
    import_mib = peak_rss_mib()
    trainer = Trainer(load_config(spec["preset"], spec["overrides"]), progress=False)
    device = trainer.device
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        trainer.train_step()  # counts as the first warm-up iteration
    for _ in range(spec["warmup"] - 1):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: [trainer.train_step() for _ in range(spec["steps"])], device) / spec["steps"]
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else peak_rss_mib()
    result = {
        "params_G": sum(p.numel() for p in trainer.G.parameters()) / 1e6,
        "params_D": sum(p.numel() for p in trainer.D.parameters()) / 1e6,
        "batch": trainer.plan.global_batch, "seconds": seconds, "flops": counter.get_total_flops(),
        "peak_mib": peak, "import_mib": import_mib,
        "data_mib": sum(f.stat().st_size for f in trainer.data.path.rglob("*.npy")) / 2 ** 20,
        "sample_rate": sampling_rate(trainer, spec["sample_batch"], spec["decode"]),
    }
    trainer.close()
    shutdown_distributed()
    return result


def run_config(name: str, args: argparse.Namespace, threads: int, tmp: Path) -> dict:
    cfg = CONFIGS[name]
    overrides = [f"data.path={make_data(tmp, cfg['latent'], cfg['classes'])}", f"run.dir={tmp / 'runs'}",
                 f"run.name={name}", f"train.device={args.device}", f"train.precision={args.precision}"]
    if args.threads:  # otherwise the preset's own setting (the CPU preset trains on one thread)
        overrides.append(f"train.threads={args.threads}")
    if name == "s2":
        overrides += ["model.generator=GAT-S/2", "model.discriminator=GAT-S/2", f"train.global_batch={args.s2_batch}"]
    steps = args.steps or (20 if name == "cpu" else 5)
    sample_batch = 256 if name == "cpu" else args.s2_sample_batch
    spec = dict(preset=cfg["preset"], overrides=overrides, steps=steps, warmup=max(1, args.warmup), threads=threads,
                sample_batch=sample_batch, decode=cfg["decode"])
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                         text=True, check=True)
    return {**cfg, "steps": steps, "sample_batch": sample_batch, **json.loads(out.stdout.strip().splitlines()[-1])}


def report(rows: list[dict], peak: float, device: torch.device) -> None:
    print("| config | params G/D (M) | batch | timed its | it/s | images/s | peak mem (MiB) | GFLOP/it "
          "| GFLOP/s | % of matmul peak | sampling images/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gflops = r["flops"] / r["seconds"] / 1e9
        print(f"| {r['title']} | {r['params_G']:.2f}/{r['params_D']:.2f} | {r['batch']} | {r['steps']} "
              f"| {1 / r['seconds']:.3g} | {r['batch'] / r['seconds']:.3g} | {r['peak_mib']:.0f} "
              f"| {r['flops'] / 1e9:.1f} | {gflops:.1f} | {100 * gflops / peak:.1f}% "
              f"| {r['sample_rate']:.3g} (batch {r['sample_batch']}) |")
    baseline = ", ".join(f"{r['title']}: {r['import_mib']:.0f} MiB after import, {r['data_mib']:.0f} MiB of "
                         "prepared data on disk" for r in rows)
    memory = ("torch.cuda.max_memory_allocated over the timed iterations" if device.type == "cuda" else
              "peak RSS (VmHWM) of a fresh subprocess per configuration, read after the timed iterations and "
              "before sampling (not ru_maxrss: across fork + exec it inherits the parent's peak). It includes "
              f"the Python/torch runtime and the pages of the memory-mapped synthetic data it touched ({baseline})")
    print(f"\n1. Data: {NUM_EXAMPLES} random uint8 arrays through IdentityTokenizer(4) stand in for encoded "
          "latents (throughput does not depend on their values). images/s = batch x it/s (real images consumed).\n"
          "2. GAT-S/2 runs global_batch = --s2-batch with no accumulation; the paper's batch 512 at this "
          "per-device batch would be 512/batch micro-batches per iteration (same images/s, fewer it/s).\n"
          f"3. Memory: {memory}.\n"
          "4. FLOPs: one full train_step under FlopCounterMode (forward + backward matmuls, convolutions and "
          "attention of the D and G steps; elementwise ops, optimiser and EMA are not counted). GFLOP/s = "
          "GFLOP/it x it/s; the % is relative to the matmul peak above.\n"
          "5. Sampling: EMA generator forward in no_grad. The CPU preset includes a random-init SmallVAE decode "
          "to 32x32 uint8 images; GAT-S/2 is latents only (the SD-VAE decoder is not available offline).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=0, help="timed iterations (default: cpu 20, s2 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations, at least 1 (it counts FLOPs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--s2-batch", type=int, default=8, help="GAT-S/2 training batch")
    parser.add_argument("--s2-sample-batch", type=int, default=32, help="GAT-S/2 sampling batch")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(device, dtype)
    print(f"torch {torch.__version__}, device {device}, {threads} threads, precision {args.precision}")
    print(f"matmul peak: {peak:.1f} GFLOP/s (best of 5 2048x2048 @ 2048x2048 {args.precision} products)\n")
    tmp = Path(tempfile.mkdtemp(prefix="gatgan-bench-"))
    try:
        rows = [run_config(name, args, threads, tmp) for name in args.configs]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, peak, device)


if __name__ == "__main__":
    main()
