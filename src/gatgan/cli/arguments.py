"""Argument types and option groups that several `gatgan` commands share."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable


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


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_argument, default="auto", help=DEVICE_HELP)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The run whose generator a command reads, and which of its checkpoints."""
    parser.add_argument("--run", required=True, help="run directory (uses its latest checkpoint)")
    parser.add_argument("--checkpoint", help="a specific checkpoint directory")


def new_command(commands: argparse._SubParsersAction, name: str, handler: Callable[[argparse.Namespace], None],
                example: str | None = None, **parser_options: object) -> argparse.ArgumentParser:
    """A subcommand that runs `handler`, with its example as the epilog of its --help."""
    parser = commands.add_parser(name, epilog=example and f"example: {example}", **parser_options)
    parser.set_defaults(func=handler)
    return parser


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
    add_device_argument(parser)


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """Which metric scores the images, and the assets it needs (`gatgan eval` and `gatgan analyze`)."""
    parser.add_argument("--metric", choices=["auto", "domain", "inception"], default="auto",
                        help="auto: domain on the embedded Fashion-MNIST data, inception otherwise")
    parser.add_argument("--data", help="the prepared data the samples are compared with (default: the run's)")
    parser.add_argument("--inception", help="FID Inception weights (weights-inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--reference", help="Inception reference: an ADM .npz (mu, sigma, arr_0) or a prepared "
                                            "data directory (statistics cached in <data>/eval/)")
