"""Files written so that an interruption never leaves half of one behind, and their SHA-256.

A file is written to a temporary sibling and renamed over its target once it is on disk; a folder is filled as a
temporary sibling and swapped in with renames. Either way the target is the previous complete content or the new
complete content, never a mixture. Imports nothing of torch, transformers or peft.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_write_json",
    "atomic_write_text",
    "check_replaceable_folder",
    "replace_folder",
    "sha256_of_file",
]

_BLOCK = 1 << 20


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[IO[str]]:
    """Open a temporary text file beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain open (not tempfile's 0600 files) gives the final file the usual permissions.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", encoding="utf-8", newline="") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    with atomic_open(path) as file:
        file.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def replace_folder(target: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Fill a fresh folder with ``write(tmp_folder)``, then put it at ``target`` in one rename.

    If ``write`` raises, or the process dies, ``target`` keeps whatever complete content it had; the
    temporary folder (``.<name>.tmp-*`` beside it) is removed on errors and ignored otherwise.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes a private (0700) folder; the result should look like any other
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        # A folder cannot be renamed over a non-empty one: move the old one aside first. Between the two
        # renames the old complete folder is still on disk under the ``.old-`` name.
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def check_replaceable_folder(
    target: Path, allowed: Collection[str], *, noun: str, part_of: str, verb: str, advice: str, example: Path
) -> None:
    """Refuses a ``target`` that a folder swap (``replace_folder``) must not replace: a file, or a folder holding
    names other than ``allowed`` (someone else's files). The message reads "pass a folder path for the {noun}",
    "not part of {part_of}; {verb} would replace the whole folder. {advice} into a folder of its own, e.g.
    {example}"."""
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder: pass a folder path for the {noun}.")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in allowed)
    if foreign:
        raise ValueError(
            f"{target} holds files that are not part of {part_of} ({', '.join(foreign[:5])}); {verb} would replace "
            f"the whole folder. {advice} into a folder of its own, e.g. {example}."
        )


def sha256_of_file(path: str | os.PathLike[str], progress: Any = None) -> str:
    """The hex SHA-256 of a file's bytes, read a MiB at a time; ``progress`` (a tqdm bar, or None) is advanced by
    the bytes read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
            if progress is not None:
                progress.update(len(block))
    return digest.hexdigest()
