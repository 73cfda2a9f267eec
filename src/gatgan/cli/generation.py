"""`gatgan sample`, `interpolate` and `serve`: images from a trained generator."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import (add_device_argument, add_generation_arguments, add_run_arguments, finite_float, new_command,
                        positive_int)


def _sample(args: argparse.Namespace) -> None:
    from ..images import save_grid
    from ..sample import Sampler, class_balanced_labels, write_npz
    from ..sharding import sharded_images
    from ..train.distributed import launched_group

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


def register_sample(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan sample`: the shared generation options, plus which classes and what to write."""
    sample = new_command(commands, "sample", _sample, help="generate images: a PNG grid and/or an ADM-style .npz")
    add_run_arguments(sample)
    sample.add_argument("--num", type=positive_int, default=100, help="number of samples")
    sample.add_argument("--classes", help="comma-separated class names or indices (default: all, balanced)")
    add_generation_arguments(sample, truncation=0.7,
                             truncation_help="StyleGAN convention: 1 = none, 0 = class mean; the default 0.7 is "
                                             "the authors' generate.py default (their psi = 1 - ours = 0.3); use 1 "
                                             "for FID protocols")
    sample.add_argument("--out", help="write arr_0 (uint8 NHWC) and arr_1 (int64 labels) to this .npz")
    sample.add_argument("--grid", help="write a PNG grid (rows = classes) to this path")


def _interpolate(args: argparse.Namespace) -> None:
    from ..plots import interpolation_frames, write_interpolation
    from ..sample import Sampler

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


def register_interpolate(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan interpolate`; its truncation default is `gatgan sample`'s so the end images match."""
    interpolation = new_command(
        commands, "interpolate", _interpolate,
        help="a strip (and GIF) walking from seed to seed for one class",
        description="Slerp between the seeds' z (the end images are exactly `gatgan sample`'s for those seeds "
                    "and truncation), or a straight line between their w (mapping outputs).",
        example="gatgan interpolate --run runs/fmnist --class Sneaker --seeds 0,1,2 --gif")
    add_run_arguments(interpolation)
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
    add_device_argument(interpolation)


def _serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from ..serve import ServeLimits, create_app
    except ImportError as error:
        raise ImportError(f"gatgan serve needs FastAPI and uvicorn ({error}): pip install 'gatgan[serve]'") from None
    from ..pretrained import GAT

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


def register_serve(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan serve`: a run or a model folder (one of the two) and the limits that keep the server up."""
    serving = new_command(
        commands, "serve", _serve,
        help="a local web page and HTTP API for a trained model",
        description="Serves a page (pick a class, seeds, truncation and guidance; see a grid, one image large, "
                    "an interpolation) and a JSON/PNG API: POST /generate, POST /interpolate, GET /classes, "
                    "GET /model, GET /health. Everything is served from the package: it works offline. "
                    "Needs `pip install 'gatgan[serve]'`.",
        example="gatgan serve --run runs/fmnist   (then open http://127.0.0.1:8000/)")
    source = serving.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory (its newest intact checkpoint, or --checkpoint)")
    source.add_argument("--model", help="a save_pretrained / export-model folder, or a hub id")
    serving.add_argument("--checkpoint", help="with --run: latest, best, or a checkpoint directory")
    serving.add_argument("--host", default="127.0.0.1",
                         help="interface to listen on (0.0.0.0 to let other machines in: there is no authentication)")
    serving.add_argument("--port", type=int, default=8000)
    add_device_argument(serving)
    serving.add_argument("--max-images", type=positive_int, default=64,
                         help="most images (or interpolation frames) one request may ask for")
    serving.add_argument("--max-waiting", type=positive_int, default=16,
                         help="requests that may wait for the generator; more are answered 503 at once")
    serving.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                         help="uvicorn's access and error log")
