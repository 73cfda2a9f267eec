"""`gatgan train` and `gatgan config`: running a training configuration and showing its keys."""

from __future__ import annotations

import argparse
import shlex
import sys

from .arguments import new_command


def _train(args: argparse.Namespace) -> None:
    from ..train.config import load_config
    from ..train.distributed import shutdown_distributed
    from ..train.launch import run_local_processes, started_by_a_launcher
    from ..train.trainer import BatchPlan, Trainer

    preset = args.config
    if preset is None:  # the embedded default, but never silently for other data
        if any(override.startswith("data.path=") for override in args.overrides):
            raise ValueError("data.path is set but no preset: pass -c (e.g. -c imagenet256/gat-b-2, or your YAML); "
                             "without -c gatgan train uses the fmnist preset, whose settings are for Fashion-MNIST")
        preset = "fmnist"
    config = load_config(preset, args.overrides)  # validated before anything is created or written
    if config.train.processes > 1 and not started_by_a_launcher():
        BatchPlan.resolve(config.train.global_batch, config.train.batch_per_device, config.train.processes)
        argv = [*(["--debug"] if args.debug else []), "train", "-c", preset, *args.overrides]
        code = run_local_processes(config.train.processes, argv, config.train.threads)
        if code:
            sys.exit(code)  # the failing rank has said why
        return
    try:
        trainer = Trainer(config)
        try:
            trainer.train()
        finally:
            trainer.close()
    finally:  # also when the Trainer could not be built (e.g. an unwritable run.dir)
        shutdown_distributed()


def register_train(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan train`: a preset and dotted overrides, as `gatgan config` reads them."""
    train = new_command(commands, "train", _train, help="train (or resume) a GAT run; works under torchrun",
                        example="gatgan train -c fmnist train.kimg=3000 run.name=longer")
    train.add_argument("-c", "--config", help="preset name (see configs/, e.g. fmnist, imagenet256/gat-xl-2) or "
                                                "YAML path; default fmnist, the embedded Fashion-MNIST run")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.kimg=500")


def _config(args: argparse.Namespace) -> None:
    from ..config_reference import markdown, text
    from ..train.config import load_config

    config = load_config(args.config, args.overrides) if args.config or args.overrides else None
    if args.markdown:
        command = shlex.join(["gatgan", "config", *(["-c", args.config] if args.config else []), *args.overrides,
                              "--markdown"])
        print(markdown(config, command), end="")
    else:
        print(text(config), end="")


def register_config(commands: argparse._SubParsersAction) -> None:
    """Adds `gatgan config`, which reads the same preset and overrides as `gatgan train`."""
    show_config = new_command(
        commands, "config", _config,
        help="every config key with its value, default, range and meaning (docs/config.md)",
        description="Without -c: the defaults (the paper's recipe). With a preset and/or overrides: their values "
                    "beside the defaults, keys that differ marked with *. --markdown prints the reference of "
                    "docs/config.md (a table per section).",
        example="gatgan config -c fmnist; gatgan config --markdown > docs/config.md")
    show_config.add_argument("-c", "--config", help="preset name (see configs/) or YAML path; default: none")
    show_config.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.kimg=500")
    show_config.add_argument("--markdown", action="store_true", help="print a Markdown reference instead")
