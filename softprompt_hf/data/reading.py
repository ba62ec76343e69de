"""Reading data files: local CSV, JSON lines, JSON or parquet files (globs and compressed files too) or Hub dataset
files into ``datasets`` splits, with errors that name the file, the line and the fix (a missing file, an unknown
format, text that is not UTF-8)."""

from __future__ import annotations

import codecs
import os
from collections.abc import Mapping, Sequence

import datasets

__all__ = ["DataFiles", "load_files", "utf8_problem"]

#: Data files as ``datasets.load_dataset`` takes them: a path or glob, a list of them, or a split -> paths mapping.
DataFiles = str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike | Sequence[str]]

_FORMAT_BY_EXTENSION = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_COMPRESSION_EXTENSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4")
_GLOB_CHARACTERS = ("*", "?", "[")


def load_files(data_files: DataFiles, cache_dir: str | None) -> dict[str, datasets.Dataset]:
    if isinstance(data_files, (str, os.PathLike)):
        files_by_split: dict[str, list[str]] = {"train": [os.fspath(data_files)]}
    elif isinstance(data_files, Mapping):
        files_by_split = {
            str(split): [os.fspath(files)] if isinstance(files, (str, os.PathLike)) else list(map(os.fspath, files))
            for split, files in data_files.items()
        }
    elif isinstance(data_files, Sequence):
        files_by_split = {"train": [os.fspath(path) for path in data_files]}
    else:
        raise ValueError(
            "data must be a path, a list of paths, a dict mapping split names to paths, a datasets.Dataset "
            f"or a datasets.DatasetDict; got {type(data_files).__name__}."
        )
    if not files_by_split or not all(files_by_split.values()):
        raise ValueError(f"No data files given (got {data_files!r}).")

    splits_by_format: dict[str, dict[str, list[str]]] = {}
    for split, files in files_by_split.items():
        formats = {_file_format(path) for path in files}
        if len(formats) > 1:
            raise ValueError(f"Split {split!r} mixes file formats {sorted(formats)} ({files}); use one format.")
        builder = formats.pop()
        for path in files:
            is_local = "://" not in path and not any(char in path for char in _GLOB_CHARACTERS)
            if is_local and not os.path.isfile(path):
                raise FileNotFoundError(f"Data file {path!r} of split {split!r} does not exist.")
            if is_local:
                _check_local_file(path, split, builder)
        splits_by_format.setdefault(builder, {})[split] = files

    splits: dict[str, datasets.Dataset] = {}
    for builder, split_files in splits_by_format.items():
        try:
            loaded = datasets.load_dataset(builder, data_files=split_files, cache_dir=cache_dir)
        except ConnectionError as err:
            remote = [path for paths in split_files.values() for path in paths if "://" in path]
            if not remote:
                raise
            raise ConnectionError(
                f"Could not read {remote}: {err}. Without Hub access, copy the files to local disk and pass "
                "their local paths as data_files."
            ) from err
        except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as err:
            # datasets' own messages ("An error occurred while generating the dataset") name neither the file nor
            # the cause: the cause is the innermost exception.
            cause = _innermost(err)
            raise ValueError(
                f"Could not read the {builder} data files {dict(split_files)}: {type(cause).__name__}: "
                f"{_first_line(cause)}. Check that each file is a well-formed {builder} file with a header (column "
                "names) and at least one row."
            ) from err
        splits.update({split: loaded[split] for split in split_files})
    for split, dataset in splits.items():
        if len(dataset) == 0:
            raise ValueError(
                f"Split {split!r} ({files_by_split[split]}) has no rows: add labelled examples to the file(s)."
            )
    return {split: splits[split] for split in files_by_split}


def utf8_problem(path: str | os.PathLike[str]) -> tuple[str | None, int]:
    """Where ``path`` stops being UTF-8 (``"byte 0xe9 on line 2"``), or None; and how many non-blank lines it has
    (counted up to 2)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, non_empty_lines = 1, 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as err:
                # The decoder may hold back up to 3 bytes of the previous block; err.start counts from them.
                start = max(err.start - (len(err.object) - len(block)), 0)
                bad_line = line + block[:start].count(b"\n")
                return f"byte {block[start]:#04x} on line {bad_line} is not valid UTF-8", non_empty_lines
            line += block.count(b"\n")
            if non_empty_lines < 2:
                non_empty_lines += sum(1 for row in text.splitlines() if row.strip())
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "it ends in the middle of a UTF-8 character (truncated?)", non_empty_lines
    return None, min(non_empty_lines, 2)


def _innermost(err: BaseException) -> BaseException:
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _check_local_file(path: str, split: str, builder: str) -> None:
    """Refuse, naming the file, what datasets would fail on without saying which file: an empty file, text that
    is not UTF-8, a CSV with a header and no rows."""
    if os.path.getsize(path) == 0:
        raise ValueError(
            f"Data file {path!r} of split {split!r} is empty. It needs the column names (a CSV header, or the keys "
            "of JSON objects) and one row per example."
        )
    if builder not in ("csv", "json") or any(path.lower().endswith(ext) for ext in _COMPRESSION_EXTENSIONS):
        return
    problem, non_empty_lines = utf8_problem(path)
    if problem is not None:
        raise ValueError(
            f"Data file {path!r} of split {split!r} is not UTF-8 text: {problem} (the file was probably saved as "
            "Latin-1 or Windows-1252). Save it as UTF-8, e.g. pandas.read_csv(path, encoding='latin-1')"
            ".to_csv(new_path, index=False), or `iconv -f latin1 -t utf-8 old.csv > new.csv`."
        )
    if non_empty_lines == 0:
        raise ValueError(f"Data file {path!r} of split {split!r} holds only whitespace: it has no header and no rows.")
    if builder == "csv" and non_empty_lines == 1:
        raise ValueError(
            f"Data file {path!r} of split {split!r} has a header and no rows: add one row per labelled example."
        )


def _file_format(path: str) -> str:
    name = path.lower()
    for suffix in _COMPRESSION_EXTENSIONS:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    extension = os.path.splitext(name)[1]
    if extension not in _FORMAT_BY_EXTENSION:
        raise ValueError(
            f"Cannot infer the format of {path!r} from its extension {extension!r}. Supported extensions: "
            f"{sorted(_FORMAT_BY_EXTENSION)} (optionally compressed: {list(_COMPRESSION_EXTENSIONS)}). "
            "Rename the file, or load it with datasets.load_dataset and pass the Dataset."
        )
    return _FORMAT_BY_EXTENSION[extension]
