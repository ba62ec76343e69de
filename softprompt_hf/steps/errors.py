"""How a recipe ends on an error: one ``error: ...`` line for bad input or a machine fault, a traceback for a bug.

A recipe's ``__main__`` block is ``sys.exit(run_recipe(main))``; ``softprompt-hf`` reports its commands' errors with
``user_error_message`` too.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..adapter.hub import HubPushError
from ..core import upstream
from ..real import ExtraNotInstalledError

__all__ = ["TRACEBACK_ENV", "run_recipe", "user_error_message"]

#: Set this environment variable to 1 to get the full traceback of an error a recipe reports in one line.
TRACEBACK_ENV = "SOFTPROMPT_HF_TRACEBACK"

# Faults of the machine rather than of the code: reported in one line wherever they are raised.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
}
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # softprompt_hf/


def user_error_message(err: BaseException) -> str | None:
    """The message to show for an error caused by a run's input or machine, or ``None`` for a bug.

    Input errors are the ``ValueError``/``OSError``/``HubPushError`` that softprompt_hf raises itself (its
    messages name the problem and the fix), and ``ExtraNotInstalledError`` (it names the pip command); machine
    faults are a full disk, a read-only file system or a missing permission, wherever raised. Anything else is
    unexpected and keeps its traceback.
    """
    if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRORS:
        where = f" writing {err.filename}" if err.filename else ""
        return (
            f"{_ENVIRONMENT_ERRORS[err.errno]}{where} ({err.strerror or err}). Free space or fix the permissions (or "
            "pass another --output_dir) and run again: the files saved before the failure are complete, and "
            "--resume_from_checkpoint last continues from the newest complete checkpoint."
        )
    if isinstance(err, (ValueError, OSError, HubPushError, ExtraNotInstalledError)) and _raised_in_package(err):
        return str(err)
    return None


def _raised_in_package(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def run_recipe(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> int:
    """Run a recipe's ``main(argv)`` and return its exit code: 0, or 1 after an input error printed in one line.

    A recipe's ``__main__`` block is ``sys.exit(run_recipe(main))``. Errors that softprompt_hf raises about the
    input (and a full disk or read-only folder) print ``error: <message>`` on stderr without a traceback;
    with ``SOFTPROMPT_HF_TRACEBACK=1`` they are raised as usual. Any other exception is a bug and propagates
    with its traceback. In a distributed run each process exits on its own: an input error is found by every
    process alike, and a process that fails alone exits non-zero, which makes the launcher stop the others.

    A process that a launcher started (``WORLD_SIZE`` set) in a gloo group (distributed on CPU) does not return:
    once the exit handlers have run it ends with ``os._exit`` and this exit code (a bug's traceback printed first),
    so that torch 2.13's gloo teardown, which can hang or crash there, never runs (``core.upstream`` entry 32).
    """
    try:
        main(sys.argv[1:] if argv is None else argv)
        code = 0
    except Exception as err:
        message = user_error_message(err)
        if message is None or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
            if not upstream.launched_gloo_process():
                raise
            traceback.print_exc()  # what the interpreter prints for an uncaught exception, then exit code 1
        else:
            print(f"error: {message}", file=sys.stderr)
        code = 1
    # No barrier after an error: the other processes may have failed too, or be waiting elsewhere.
    if upstream.launched_gloo_process():
        upstream.exit_without_gloo_teardown(code)
    if code and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return code
