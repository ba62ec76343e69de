"""Every docstring example of softprompt_hf runs, with the stdlib ``doctest``, in the default test run.

Examples are Markdown code blocks (a "```python" line, doctest lines, a "```" line); the fence lines read
as blank lines, so an example's expected output ends at the closing fence. Each module's examples run in the
module's namespace plus these ready objects, built fresh for each module (only those its examples name) from
the embedded model and data, so that no example leaks into another:

- ``tokenizer``: the embedded model's tokenizer;
- ``base_model``: the embedded causal LM;
- ``model``: ``build_soft_prompt_model(base_model, method="prompt_tuning", tokenizer=tokenizer)``, the
  seed's TEXT init (the embedded model's own instruction, so it labels the tweets right before training);
- ``data``: ``load_raft(data_files=EMBEDDED_DATA_FILES)``;
- ``args``: ``TrainingArguments`` for two CPU steps into ``run/``.

They run in a fresh temporary working directory, against the local Hub of ``hub_server.py`` (the user
``me``, logged in through ``HF_TOKEN``), which serves the embedded model as ``bigscience/bloomz-560m``; for
the ``predict`` examples it also holds the adapter ``me/bloomz-complaints`` (``model`` saved as it is).
"""

from __future__ import annotations

import doctest
import importlib
import json
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
from hub_server import HubServer, point_hub_client_at

import softprompt_hf

HUB_USER, HUB_TOKEN = "me", "hf_DoctestToken0123456789"
BASE_ID = "bigscience/bloomz-560m"
ADAPTER_ID = "me/bloomz-complaints"
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
READY = ("tokenizer", "base_model", "model", "data", "args")


class MarkdownDocTestParser(doctest.DocTestParser):
    """Reads the Markdown fence lines of an ``Example:`` block as blank lines, which end an expected output."""

    _FENCE = re.compile(r"^([ \t]*)```[\w-]*[ \t]*$", re.MULTILINE)

    def parse(self, string: str, name: str = "<string>") -> list[Any]:
        return super().parse(self._FENCE.sub(r"\1", string), name)


def _modules() -> list[str]:
    names = [softprompt_hf.__name__]
    names += [info.name for info in pkgutil.walk_packages(softprompt_hf.__path__, prefix="softprompt_hf.")]
    return sorted(names)


def _find(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(parser=MarkdownDocTestParser(), exclude_empty=True)
    return [test for test in finder.find(module, module_name) if test.examples]


MODULES_WITH_EXAMPLES = [name for name in _modules() if _find(name)]


def _ready_objects(names: set[str], folder: Path) -> dict[str, Any]:
    """The objects of ``READY`` that the examples name (and what those need), built now."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from softprompt_hf import build_soft_prompt_model, load_raft
    from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH

    objects: dict[str, Any] = {}
    if names & {"tokenizer", "model"}:
        objects["tokenizer"] = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    if names & {"base_model", "model"}:
        objects["base_model"] = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH)
    if "model" in names:
        objects["model"] = build_soft_prompt_model(
            objects["base_model"], method="prompt_tuning", tokenizer=objects["tokenizer"]
        )
    if "data" in names:
        objects["data"] = load_raft(data_files=EMBEDDED_DATA_FILES)
    if "args" in names:
        objects["args"] = TrainingArguments(
            output_dir=str(folder / "run"),
            max_steps=2,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=64,
            learning_rate=3e-2,
            remove_unused_columns=False,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
        )
    return objects


def _publish_adapter(hub: HubServer, objects: dict[str, Any], folder: Path) -> None:
    """Publishes ``model`` as ``ADAPTER_ID``, with the label set that ``predict`` reads from ``softprompt_hf.json``."""
    from softprompt_hf.adapter.saving import INFERENCE_CONFIG_NAME, save_adapter

    saved = save_adapter(
        objects["model"], folder / "published-adapter", tokenizer=objects["tokenizer"], base_model_id=BASE_ID
    )
    settings_file = saved / INFERENCE_CONFIG_NAME
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    settings_file.write_text(json.dumps({**settings, "labels": objects["data"].classes}), encoding="utf-8")
    hub.add_folder(ADAPTER_ID, saved)


@pytest.mark.parametrize("module_name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    tests = _find(module_name)
    source = "\n".join(example.source for test in tests for example in test.examples)
    names = {name for name in READY if re.search(rf"\b{name}\b", source)}
    if "model" in names or "predict(" in source:
        names |= {"tokenizer", "base_model", "model"}
    if "predict(" in source:
        names.add("data")
    monkeypatch.chdir(tmp_path)
    from softprompt_hf.embedded import EMBEDDED_MODEL_PATH

    with HubServer(tokens={HUB_TOKEN: HUB_USER}) as hub:
        point_hub_client_at(monkeypatch, hub.endpoint, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
        hub.add_folder(BASE_ID, EMBEDDED_MODEL_PATH)
        objects = _ready_objects(names, tmp_path)
        if "predict(" in source:
            _publish_adapter(hub, objects, tmp_path)
        runner = doctest.DocTestRunner(optionflags=OPTIONS)
        report: list[str] = []
        for test in tests:
            test.globs.update(objects)
            runner.run(test, out=report.append, clear_globs=True)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted > 0, f"{module_name}: every example is skipped"
    assert failed == 0, f"{module_name}: {failed} of {attempted} examples failed:\n" + "".join(report)


def test_every_module_with_examples_is_found():
    """A module whose source holds doctest lines that the finder does not see would silently run nothing."""
    package = Path(softprompt_hf.__file__).parent
    with_prompts = set()
    for path in package.rglob("*.py"):
        if re.search(r"^\s*>>> ", path.read_text(encoding="utf-8"), re.MULTILINE):
            parts = path.relative_to(package.parent).with_suffix("").parts
            with_prompts.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert with_prompts == set(MODULES_WITH_EXAMPLES)


def test_fence_lines_end_the_expected_output():
    docstring = """
    ```python
    >>> 1 + 1
    2
    ```
    """
    [example] = MarkdownDocTestParser().get_examples(docstring)
    assert example.want == "2\n"
    # The stock parser reads the closing fence as part of the expected output.
    [stock] = doctest.DocTestParser().get_examples(docstring)
    assert stock.want == "2\n```\n"


def test_examples_read_the_same_without_the_fence_rule():
    """Each example ends with a blank line before its closing fence, so stock doctest tools read it as we do."""
    stock = doctest.DocTestParser()
    for module_name in MODULES_WITH_EXAMPLES:
        for test in _find(module_name):
            ours = [(example.source, example.want) for example in test.examples]
            theirs = [(example.source, example.want) for example in stock.get_examples(test.docstring or "")]
            assert ours == theirs, f"{test.name}: put a blank line before the closing ``` of its example"
