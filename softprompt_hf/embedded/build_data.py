"""Builds the embedded complaints dataset: synthetic tweets in RAFT ``twitter_complaints``' schema.

Run from the repository root (about two seconds)::

    python -m softprompt_hf.embedded.build_data

It writes ``softprompt_hf/embedded/data/train.parquet`` (labelled rows) and ``test.parquet``
(unlabelled rows, ``Label`` 0 = "Unlabeled", as in RAFT), with the columns ``Tweet text`` (string),
``ID`` (int32) and ``Label`` (``ClassLabel(names=LABEL_NAMES)``). The rows depend only on
``DATA_SEED``; :func:`build_rows` returns them without touching the disk so that a test can check
that the shipped files are what this script produces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softprompt_hf.embedded import LABEL_NAMES, TEXT_COLUMN
from softprompt_hf.embedded.tweets import TweetGenerator

__all__ = [
    "DATA_SEED",
    "NUM_LABELLED",
    "NUM_UNLABELLED",
    "build_rows",
    "features",
    "write_dataset",
]

DATA_SEED = 20240521
NUM_LABELLED = 800
NUM_UNLABELLED = 400

_DEFAULT_OUT = Path(__file__).resolve().parent / "data"


def features():
    """The ``datasets.Features`` of both splits (RAFT's schema)."""
    from datasets import ClassLabel, Features, Value

    return Features({TEXT_COLUMN: Value("string"), "ID": Value("int32"), "Label": ClassLabel(names=list(LABEL_NAMES))})


def build_rows(seed: int = DATA_SEED) -> dict[str, dict[str, list]]:
    """Returns ``{"train": columns, "test": columns}``; no text appears twice across both splits."""
    gen = TweetGenerator(seed)
    seen: set[str] = set()
    rows: dict[str, dict[str, list]] = {}
    next_id = 0
    for split, count in (("train", NUM_LABELLED), ("test", NUM_UNLABELLED)):
        texts: list[str] = []
        labels: list[int] = []
        while len(texts) < count:
            tweet = gen.tweet()
            if tweet.text in seen:
                continue
            seen.add(tweet.text)
            texts.append(tweet.text)
            labels.append(0 if split == "test" else (1 if tweet.complaint else 2))
        ids = list(range(next_id, next_id + count))
        next_id += count
        rows[split] = {TEXT_COLUMN: texts, "ID": ids, "Label": labels}
    return rows


def write_dataset(out_dir: str | Path = _DEFAULT_OUT, seed: int = DATA_SEED) -> dict[str, Path]:
    """Writes ``train.parquet`` and ``test.parquet`` under ``out_dir`` and returns their paths."""
    from datasets import Dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, columns in build_rows(seed).items():
        path = out_dir / f"{split}.parquet"
        Dataset.from_dict(columns, features=features()).to_parquet(str(path))
        paths[split] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(_DEFAULT_OUT))
    args = parser.parse_args()
    for path in write_dataset(args.out_dir).values():
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
