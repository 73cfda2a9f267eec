"""One line instead of a traceback for every error a user can cause or meet: which file, what went
wrong and what to do. `gatgan --debug` (or GATGAN_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import errno
import os
import sys
from types import FrameType
from typing import NoReturn

EXIT_ERROR = 2  # argparse's code for a usage error, kept for every error a user can fix
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
# Where a command writes (for the advice when a write is refused; --out otherwise), and what
# re-running it does after a full disk or an interruption.
OUTPUT_OPTION = {"train": "run.dir (or run.name)", "sample": "--out / --grid"}
RESUMES = {"train": "the run resumes from its last checkpoint", "prepare": "prepare resumes where it stopped"}


def is_user_error(error: Exception) -> bool:
    """Errors a user can cause or meet: a bad option or setting (ValueError), a missing, unreadable or
    unwritable file or a full disk (OSError), a damaged file (its parser's error), a diverged run or
    a busy run directory (RuntimeError), a missing optional package whose message says what to
    install (ImportError). They are printed as one line. Anything else (TypeError,
    AttributeError, AssertionError, KeyError, NotImplementedError, RecursionError, ...) is a bug in
    gatgan and keeps its traceback, which is what a bug report needs."""
    import pickle
    import zipfile

    import yaml
    from safetensors import SafetensorError

    if isinstance(error, (NotImplementedError, RecursionError)):  # RuntimeErrors that only code causes
        return False
    if isinstance(error, ImportError):  # an optional dependency; gatgan's messages say what to install
        return "pip install" in str(error)
    return isinstance(error, (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError,
                              zipfile.BadZipFile, yaml.YAMLError, SafetensorError))


def _raising_frame(error: BaseException) -> FrameType | None:
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback.tb_frame if traceback is not None else None


def _file_of(error: BaseException, library_frame: FrameType | None) -> str | None:
    """The file an error concerns. An OSError carries it; a library's parse error does not, but the
    library function that raised it holds it as an argument (safetensors' `filename`, numpy's `file`)."""
    if isinstance(error, OSError) and error.filename is not None:
        return str(error.filename)
    for name in ("filename", "file", "path") if library_frame is not None else ():
        value = library_frame.f_locals.get(name)
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    return None


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC, or a library that wrapped it into its own message (safetensors, torch)."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return "No space left on device" in str(error)


def resume_note(command: str) -> str:
    return f" ({RESUMES[command]})" if command in RESUMES else ""


def _describe_os_error(error: OSError, file: str | None, command: str) -> str | None:
    """A refused write says where else to write; any other OSError with a file is `file: reason`."""
    elsewhere = f"choose another {OUTPUT_OPTION.get(command, '--out')}"
    if error.errno == errno.EROFS:
        return f"cannot write {file or 'a file'}: read-only file system; {elsewhere}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"cannot access {file or 'a file'}: permission denied; check its permissions, or {elsewhere}"
    return f"{file}: {error.strerror}" if file and error.strerror else None


def describe_error(error: Exception, command: str) -> str:
    """What went wrong, on which file, and what to do. gatgan's own errors are worded for the user
    already; one raised inside a library (json, safetensors, torch) also gets its type and a pointer
    to --debug, since its message alone rarely says where it came from."""
    frame = _raising_frame(error)
    from_library = frame is not None and not str(frame.f_globals.get("__name__", "")).startswith("gatgan")
    file = _file_of(error, frame if from_library else None)
    if _is_disk_full(error):
        return f"disk full while writing {file or 'a file'}: free space and re-run{resume_note(command)}"
    if isinstance(error, OSError) and (described := _describe_os_error(error, file, command)):
        return described
    message = str(error) or type(error).__name__
    if type(error).__name__ == "SafetensorError":
        message = f"{file or 'a .safetensors file'} is damaged or not a safetensors file ({message}); " \
                  "restore it or re-create it with the command that wrote it"
    elif from_library:
        message = f"{file + ': ' if file else ''}{message} ({type(error).__name__})"
    if from_library and not file:
        message += f"; `gatgan --debug {command} ...` shows where"
    return message


def fail(command: str, message: str, code: int) -> NoReturn:
    print(f"gatgan {command}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)
