"""Builds the embedded complaints dataset: synthetic tweets in RAFT ``twitter_complaints``' schema.

Run from the repository root (about two seconds)::

    python -m softprompt_hf.embedded.build_data

It writes ``softprompt_hf/embedded/data/train.parquet`` (labelled rows) and ``test.parquet``
(unlabelled rows, ``Label`` 0 = "Unlabeled", as in RAFT), with the columns ``Tweet text`` (string),
``ID`` (int32) and ``Label`` (``ClassLabel(names=LABEL_NAMES)``), and ``describe.parquet``: the
labelled rows' ``Tweet text`` and ``ID`` with their ``Description`` (string), the answer of the
embedded model's free-text task (:func:`softprompt_hf.embedded.tasks.describe`). The rows depend only
on ``DATA_SEED``; :func:`build_rows` and :func:`build_text_rows` return them without touching the
disk so that a test can check that the shipped files are what this script produces.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from softprompt_hf.embedded import DESCRIPTION_COLUMN, EMBEDDED_TEXT_DATA_FILES, LABEL_NAMES, TEXT_COLUMN
from softprompt_hf.embedded.tasks import describe
from softprompt_hf.embedded.tweets import Tweet, TweetGenerator

__all__ = [
    "DATA_SEED",
    "NUM_LABELLED",
    "NUM_UNLABELLED",
    "build_rows",
    "build_text_rows",
    "features",
    "text_features",
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


def text_features():
    """The ``datasets.Features`` of the free-text file (``describe.parquet``)."""
    from datasets import Features, Value

    return Features({TEXT_COLUMN: Value("string"), "ID": Value("int32"), DESCRIPTION_COLUMN: Value("string")})


def _draw(seed: int) -> dict[str, list[Tweet]]:
    """The tweets of both splits, in order; no text appears twice across them."""
    gen = TweetGenerator(seed)
    seen: set[str] = set()
    tweets: dict[str, list[Tweet]] = {}
    for split, count in (("train", NUM_LABELLED), ("test", NUM_UNLABELLED)):
        tweets[split] = []
        while len(tweets[split]) < count:
            tweet = gen.tweet()
            if tweet.text in seen:
                continue
            seen.add(tweet.text)
            tweets[split].append(tweet)
    return tweets


def build_rows(seed: int = DATA_SEED) -> dict[str, dict[str, list]]:
    """Returns ``{"train": columns, "test": columns}``; no text appears twice across both splits."""
    tweets = _draw(seed)
    num_train = len(tweets["train"])
    return {
        "train": {
            TEXT_COLUMN: [t.text for t in tweets["train"]],
            "ID": list(range(num_train)),
            "Label": [1 if t.complaint else 2 for t in tweets["train"]],
        },
        "test": {
            TEXT_COLUMN: [t.text for t in tweets["test"]],
            "ID": list(range(num_train, num_train + len(tweets["test"]))),
            "Label": [0] * len(tweets["test"]),
        },
    }


def build_text_rows(seed: int = DATA_SEED) -> dict[str, list]:
    """Returns the columns of ``describe.parquet``: the labelled rows (their texts and IDs) and their descriptions."""
    train = _draw(seed)["train"]
    return {
        TEXT_COLUMN: [t.text for t in train],
        "ID": list(range(len(train))),
        DESCRIPTION_COLUMN: [describe(t) for t in train],
    }


def write_dataset(out_dir: str | Path = _DEFAULT_OUT, seed: int = DATA_SEED) -> dict[str, Path]:
    """Writes ``train.parquet``, ``test.parquet`` and ``describe.parquet`` under ``out_dir``; returns their paths."""
    from datasets import Dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, columns in build_rows(seed).items():
        path = out_dir / f"{split}.parquet"
        Dataset.from_dict(columns, features=features()).to_parquet(str(path))
        paths[split] = path
    path = out_dir / Path(EMBEDDED_TEXT_DATA_FILES["train"]).name
    Dataset.from_dict(build_text_rows(seed), features=text_features()).to_parquet(str(path))
    paths["describe"] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(_DEFAULT_OUT))
    args = parser.parse_args()
    for path in write_dataset(args.out_dir).values():
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
