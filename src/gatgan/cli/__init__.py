"""`gatgan` command line: prepare -> train -> sample -> eval / analyze, plus `models` to list the named sizes."""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import EXIT_ERROR, EXIT_INTERRUPTED, describe_error, fail, is_user_error, resume_note
from . import data, evaluation, generation, model_files, training
from .arguments import warn_about_extrapolation

DEBUG_ENV = "GATGAN_DEBUG"  # =1: like --debug

# In the order `gatgan --help` lists the commands (a module's commands are not all adjacent there).
_REGISTRATIONS = (data.register_prepare, training.register_train, training.register_config,
                  generation.register_sample, evaluation.register_eval, evaluation.register_analyze,
                  model_files.register_export_model, model_files.register_convert, model_files.register_export_graphs,
                  evaluation.register_plot, generation.register_interpolate, generation.register_serve,
                  model_files.register_models)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each command's options live in its module, beside its handler."""
    parser = argparse.ArgumentParser(prog="gatgan", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gatgan {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error instead of one line (also {DEBUG_ENV}=1)")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in _REGISTRATIONS:
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Runs one command; a user's mistake is one line and an exit code, a bug keeps its traceback."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    warn_about_extrapolation(args)
    try:
        args.func(args)
    except BrokenPipeError:  # `gatgan models | head`: the reader left; no message, no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:
        if debug:
            raise
        fail(args.command, f"interrupted{resume_note(args.command)}", EXIT_INTERRUPTED)
    except Exception as error:
        if debug or not is_user_error(error):
            raise
        fail(args.command, describe_error(error, args.command), EXIT_ERROR)
