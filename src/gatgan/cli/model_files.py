"""`gatgan export-model`, `convert`, `export` and `models`: a generator as files others load, and the named sizes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import finite_float, new_command


def _report_pretrained_folder(what: str, out: Path) -> None:
    """export-model and convert write the same kind of folder: list it and show how to load it."""
    print(f"wrote {what} to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f'load it with: from gatgan import GAT; GAT.from_pretrained("{out}")')


def _export_model(args: argparse.Namespace) -> None:
    from ..pretrained import GAT

    model = GAT.from_run(args.run, args.checkpoint)
    out = model.save_pretrained(args.out)
    card = model.card
    seen = "" if card["kimg"] is None else f", {card['kimg']:g} kimg"
    _report_pretrained_folder(f"{card['generator']} ({card['parameters']:,} parameters{seen})", out)


def register_export_model(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan export-model`: a run's checkpoint in, a GAT.from_pretrained folder out."""
    export = new_command(
        commands, "export-model", _export_model,
        help="a run's EMA generator as a self-contained folder for GAT.from_pretrained",
        description="Writes config.json, model.safetensors (the EMA generator), tokenizer/ and a model card "
                    "(README.md: size, images seen, data, scores, training config), loadable with "
                    "`gatgan.GAT.from_pretrained(folder)` without the run directory.",
        example="gatgan export-model --run runs/fmnist --out models/fmnist-gat")
    export.add_argument("--run", required=True, help="run directory")
    export.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export)")
    export.add_argument("--checkpoint", default="latest",
                        help="latest (the newest intact checkpoint), best (checkpoints/best, kept by in-training "
                             "evaluation), or a checkpoint directory")


def _convert(args: argparse.Namespace) -> None:
    from ..convert import convert_checkpoint, read_class_names
    from ..tokenizers import SDVAETokenizer

    names = None if args.class_names is None else read_class_names(args.class_names)
    out = convert_checkpoint(args.checkpoint, args.out, tokenizer=SDVAETokenizer.from_source(args.vae),
                             model=args.model, class_names=names, key=args.key)
    config = json.loads((out / "config.json").read_text())
    _report_pretrained_folder(f"{config['model']['generator']} ({config['num_classes']} classes)", out)


def register_convert(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan convert`: the authors' .pt file and its SD-VAE in, the folder export-model writes out."""
    convert = new_command(
        commands, "convert", _convert,
        help="the authors' own checkpoint (their train.py) as a folder for GAT.from_pretrained",
        description="Renames the weights of the authors' generator (and discriminator, kept as "
                    "discriminator.safetensors) into gatgan's, with their position-table layout, and writes "
                    "the folder `gatgan export-model` writes. The size is read from the weights. Their "
                    "truncation psi is 1 - gatgan's --truncation.",
        example="gatgan convert --checkpoint 0400000.pt --out models/gat-xl --vae /path/to/sd-vae-ft-mse")
    convert.add_argument("--checkpoint", required=True, help="the .pt file their train.py saved")
    convert.add_argument("--out", required=True, help="output folder (new, empty, or an earlier export)")
    convert.add_argument("--vae", required=True,
                         help="the SD-VAE their latents come from: a local diffusers folder or weights file")
    convert.add_argument("--model", help="the size, e.g. GAT-XL/2 (default: read from the weights)")
    convert.add_argument("--class-names", help="a file with one class name a line (default: 0, 1, ...)")
    convert.add_argument("--key", help="the checkpoint's generator entry, e.g. ema or model "
                                       "(default: the first of ema, model, generator, G_ema, G)")


def _export_graphs(args: argparse.Namespace) -> None:
    from ..export import export_model
    from ..sample import Sampler

    sampler = Sampler.from_run(args.run, args.checkpoint, ema=not args.no_ema)
    for name, exported in export_model(sampler, args.out, args.format, args.truncation).items():
        print(f"wrote {exported.path} ({name}; max abs difference from PyTorch on a new batch: "
              f"{exported.max_abs_error:.2e})")


def register_export_graphs(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan export`, whose truncation is fixed in the graphs it writes."""
    graphs = new_command(
        commands, "export", _export_graphs,
        help="the generator and the tokenizer's decoder as ExportedProgram (.pt2) or ONNX graphs",
        description="Writes generator.{pt2,onnx} ((z [B, z_dim], class [B]) -> decoder-ready latents, truncation "
                    "fixed) and decoder.{pt2,onnx} (latents -> images in [-1, 1]), with a dynamic batch size, "
                    "and checks each against PyTorch on a batch of another size. ONNX needs "
                    "`pip install 'gatgan[export]'`.",
        example="gatgan export --run runs/fmnist --out exported --format onnx --truncation 0.7")
    graphs.add_argument("--run", required=True, help="run directory (uses its newest intact checkpoint)")
    graphs.add_argument("--checkpoint", help="a specific checkpoint directory")
    graphs.add_argument("--out", required=True, help="output folder")
    graphs.add_argument("--format", choices=["exported-program", "onnx"], default="exported-program")
    graphs.add_argument("--truncation", type=finite_float, default=1.0, help="fixed in the graph (1 = none)")
    graphs.add_argument("--no-ema", action="store_true", help="the raw generator instead of its EMA")


def _models(args: argparse.Namespace) -> None:
    import torch

    from ..models import MODEL_SIZES, build_generator

    print(f"{'name':<14}{'depth':>6}{'width':>7}{'heads':>6}{'G params (32x32x4, 1000 classes)':>36}")
    for size_name, size in MODEL_SIZES.items():
        for patch in (1, 2, 4, 8):
            name = f"GAT-{size_name}/{patch}"
            with torch.device("meta"):
                G = build_generator(name, input_size=32, channels=4, num_classes=1000)
            params = sum(p.numel() for p in G.parameters())
            print(f"{name:<14}{size.depth:>6}{size.width:>7}{size.num_heads:>6}{params / 1e6:>35.1f}M")


def register_models(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan models`, which takes no options."""
    new_command(commands, "models", _models, help="list the named model sizes")
