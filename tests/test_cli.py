"""The ``softprompt-hf`` command's own layer: ``--help`` and argument errors answer before torch, transformers or
peft are imported (those take seconds), and the package's public names still resolve lazily.

What the commands do is tested where their work is: ``predict`` in test_predict.py and test_bad_input.py, ``push``
in test_hub.py, ``export`` in test_export.py, ``prepare-real`` in test_real.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: What a fast answer must not have imported.
FRAMEWORKS = {"torch", "transformers", "peft", "accelerate", "datasets", "huggingface_hub", "numpy", "pandas"}


def run_python(code: str) -> dict:
    """Runs ``code`` in a fresh interpreter (this one has imported everything already); it prints one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


CLI_RUN = """
import contextlib, io, json, sys
from softprompt_hf.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main({argv!r})
    except SystemExit as exit:
        code = exit.code
print(json.dumps({{"code": code, "out": out.getvalue(), "err": err.getvalue(), "modules": sorted(sys.modules)}}))
"""


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (["--help"], 0, "prepare-real"),
        (["predict", "--help"], 0, "--label-tokenization {joint,separate}"),
        (["push", "--help"], 0, "--base-model-id"),
        (["predict"], 2, "the following arguments are required: adapter"),
        (["predict", "a", "--mode", "vote"], 2, "argument --mode: invalid choice: 'vote'"),
        (["push", "only/one-argument"], 2, "the following arguments are required: repo_id"),
        (["export", "--help"], 0, "--overwrite"),
        (["export", "adapter", "out", "--dtype", "float8"], 2, "argument --dtype: invalid choice: 'float8'"),
        (["export", "only-the-adapter"], 2, "the following arguments are required: output"),
        (["train"], 2, "invalid choice: 'train'"),
    ],
)
def test_help_and_argument_errors_answer_without_importing_the_frameworks(argv, code, says):
    answer = run_python(CLI_RUN.format(argv=argv))
    assert answer["code"] == code
    assert says in " ".join((answer["out"] + answer["err"]).split())
    assert FRAMEWORKS.isdisjoint(name.split(".")[0] for name in answer["modules"])


def test_a_command_that_runs_imports_its_work_and_answers():
    # A bad push (no such folder) goes past argument parsing into softprompt_hf.commands, and fails as input.
    answer = run_python(CLI_RUN.format(argv=["push", "no-such-folder", "alice/x"]))
    assert answer["code"] == 1
    assert answer["err"].startswith("softprompt-hf push: error: 'no-such-folder' holds no adapter_config.json")
    assert "softprompt_hf.commands" in answer["modules"] and "torch" in answer["modules"]


def test_the_package_imports_no_framework_until_a_name_is_used():
    answer = run_python(
        "import json, sys, softprompt_hf\n"
        "before = sorted(sys.modules)\n"
        "metrics = softprompt_hf.GenerationMetrics\n"
        "print(json.dumps({'before': before, 'after': sorted(sys.modules), 'name': metrics.__module__}))"
    )
    assert FRAMEWORKS.isdisjoint(name.split(".")[0] for name in answer["before"])
    assert "torch" in answer["after"] and answer["name"] == "softprompt_hf.evaluation.compute_metrics"


def test_every_public_name_is_its_modules_object_and_no_module_takes_its_name():
    import softprompt_hf.serving.predict  # a module named like a public function, one level down

    # Importing a submodule binds it to the package under its own name: none may be named like a public name.
    package = Path(softprompt_hf.__file__).parent
    submodules = {path.stem for path in package.glob("*.py")}
    submodules |= {path.name for path in package.iterdir() if path.is_dir()}
    assert submodules.isdisjoint(softprompt_hf.__all__)

    for name in softprompt_hf.__all__:
        value = getattr(softprompt_hf, name)
        # A constant such as TEXT_METRICS (a dict) has no __module__: the package's own map says where it lives.
        home = getattr(value, "__module__", None) or f"softprompt_hf.{softprompt_hf._MODULES[name]}"
        assert getattr(sys.modules[home], name) is value, name
    from softprompt_hf import predict

    assert callable(predict) and predict.__module__ == "softprompt_hf.serving.predict"
    assert set(softprompt_hf.__all__) <= set(dir(softprompt_hf))
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        softprompt_hf.no_such_name  # noqa: B018
