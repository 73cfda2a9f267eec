"""`gatgan` command line: prepare -> train -> sample, plus `models` to list the named sizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _prepare(args: argparse.Namespace) -> None:
    from .data.prepare import prepare_fashion_mnist

    out = args.out or f"data/fmnist-{'vae' if args.tokenizer == 'small_vae' else 'pixels'}"
    prepare_fashion_mnist(out, tokenizer=args.tokenizer, root=args.root, tokenizer_steps=args.tokenizer_steps,
                          seed=args.seed)


def _train(args: argparse.Namespace) -> None:
    from .train.config import load_config
    from .train.distributed import shutdown_distributed
    from .train.trainer import Trainer

    trainer = Trainer(load_config(args.config, args.overrides))
    try:
        trainer.train()
    finally:
        trainer.close()
        shutdown_distributed()


def _sample(args: argparse.Namespace) -> None:
    from .images import save_grid
    from .sample import Sampler, class_balanced_labels, write_npz

    sampler = Sampler.from_run(args.run, args.checkpoint, ema=not args.no_ema, device=args.device)
    num_classes = len(sampler.class_names)
    if args.classes:
        chosen = [sampler.class_index(c.strip()) for c in args.classes.split(",")]
        labels = [chosen[i % len(chosen)] for i in range(args.num)]
    else:
        labels = class_balanced_labels(args.num, num_classes)
    seeds = [args.seed + i for i in range(args.num)]
    images = sampler.images(seeds, labels, args.truncation, args.guidance, args.batch_size, progress=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_npz(args.out, images, labels)
        print(f"wrote {len(images)} samples to {args.out}")
    if args.grid:
        rows = sorted(set(labels))[:16]
        per_row = [[i for i, label in enumerate(labels) if label == row][:10] for row in rows]
        columns = min(len(r) for r in per_row)
        save_grid(images[[i for r in per_row for i in r[:columns]]], columns, args.grid)
        print(f"wrote a grid (rows = classes {', '.join(sampler.class_names[r] for r in rows)}) to {args.grid}")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatgan", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="train the embedded tokenizer and store latent moments")
    prepare.add_argument("--dataset", choices=["fmnist"], default="fmnist")
    prepare.add_argument("--tokenizer", choices=["small_vae", "identity"], default="small_vae",
                         help="latent space: the built-in f=4 KL autoencoder, or pixels")
    prepare.add_argument("--out", help="output directory (default data/fmnist-vae or data/fmnist-pixels)")
    prepare.add_argument("--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX files")
    prepare.add_argument("--tokenizer-steps", type=int, help="training steps of the small VAE")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.set_defaults(func=_prepare)

    train = commands.add_parser("train", help="train (or resume) a GAT run; works under torchrun",
                                epilog="example: gatgan train -c fmnist train.kimg=3000 run.name=longer")
    train.add_argument("-c", "--config", default="fmnist", help="preset name (see configs/) or YAML path")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.kimg=500")
    train.set_defaults(func=_train)

    sample = commands.add_parser("sample", help="generate images: a PNG grid and/or an ADM-style .npz")
    sample.add_argument("--run", required=True, help="run directory (uses its latest checkpoint)")
    sample.add_argument("--checkpoint", help="a specific checkpoint directory")
    sample.add_argument("--num", type=int, default=100, help="number of samples")
    sample.add_argument("--classes", help="comma-separated class names or indices (default: all, balanced)")
    sample.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    sample.add_argument("--truncation", type=float, default=0.7,
                        help="StyleGAN convention: 1 = none, 0 = class mean; the default 0.7 is the authors' "
                             "generate.py default (their psi = 1 - ours = 0.3); use 1 for FID protocols")
    sample.add_argument("--guidance", type=float, default=1.0, help="w-space guidance scale (1 = none)")
    sample.add_argument("--batch-size", type=int, default=500)
    sample.add_argument("--out", help="write arr_0 (uint8 NHWC) and arr_1 (int64 labels) to this .npz")
    sample.add_argument("--grid", help="write a PNG grid (rows = classes) to this path")
    sample.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")
    sample.add_argument("--device", default="cpu")
    sample.set_defaults(func=_sample)

    models = commands.add_parser("models", help="list the named model sizes")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"gatgan {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
