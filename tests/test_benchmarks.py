"""Every benchmark script runs on a tiny model and prints its tables (marked slow); the generate() correctness
script runs in the default run and its table is checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

SCRIPTS = {
    "train_throughput.py": ["--size", "tiny", "--steps", "1", "--batches", "1", "--repeats", "1"],
    "eval_throughput.py": ["--size", "tiny", "--rows", "12", "--repeats", "1", "--seed_repeats", "1"],
    "eval_ceiling.py": ["--size", "tiny", "--rows", "12", "--repeats", "1"],
    "eval_memory.py": ["--size", "tiny", "--rows", "8", "16", "--modes", "generate"],
    "engine_vs_generate.py": ["--models", "tiny", "--rows", "12", "--repeats", "1"],
    "gpu.py": ["--smoke"],
    "fsdp_memory.py": ["--size", "tiny"],
    "output_head.py": ["--shapes", "32x4096", "16x3000", "--rows", "4", "--repeats", "1"],
}


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run a benchmark script offline; it must exit 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _table_rows(stdout: str) -> list[list[str]]:
    """The cells of every markdown table row printed, header rows included, separator rows left out."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs(script):
    result = _run(script, SCRIPTS[script])
    assert len(_table_rows(result.stdout)) >= 2, result.stdout  # a header and at least one measured row
    assert "nan" not in result.stdout.lower()
    if script == "gpu.py":
        assert [title for title in GPU_PART_TITLES.values() if f"## {title}" not in result.stdout] == []


# The title each part of gpu.py prints above its table(s).
GPU_PART_TITLES = {
    "train": "Training throughput",
    "eval": "Evaluation throughput",
    "ceiling": "Evaluation: the compute-bound ceiling",
    "memory": "Peak memory of a full evaluation",
}


@pytest.mark.slow
def test_gpu_script_runs_only_the_parts_asked_for():
    result = _run("gpu.py", ["--smoke", "--parts", "ceiling", "memory"])
    printed = {part for part, title in GPU_PART_TITLES.items() if f"## {title}" in result.stdout}
    assert printed == {"ceiling", "memory"}, result.stdout


def test_generate_correctness_script_shows_stock_wrong_and_fixed_right():
    # Two models, one of which (Mistral) crosses its sliding window, and both prompt placements (virtual token
    # embeddings, prefix key/values); the script exits 1 if a fixed row differs from its full-forward reference.
    args = ["--models", "gpt2", "mistral", "--methods", "p_tuning_mlp", "prefix_tuning", "--texts", "3"]
    result = _run("generate_correctness.py", [*args, "--new-tokens", "4"])
    rows = _table_rows(result.stdout)[1:]
    assert [row[:3] for row in rows] == [
        [model, method, "3"] for model in ("gpt2", "mistral") for method in ("p_tuning_mlp", "prefix_tuning")
    ]
    assert all(row[5] == row[6] == "3/3" for row in rows), result.stdout
    assert any(cell != "3/3" for row in rows for cell in row[3:5]), result.stdout


def test_engine_vs_generate_script_gives_the_same_labels_both_ways():
    # The decoder that GenerationMetrics runs and the generate() that predict runs, on both soft-prompt placements
    # and the embedded model: the script exits 1 if a row's tokens differ; the table says so per model and method.
    args = ["--models", "embedded", "--methods", "p_tuning", "prefix_tuning", "--rows", "10", "--repeats", "1"]
    rows = _table_rows(_run("engine_vs_generate.py", args).stdout)[1:]
    assert [row[:4] for row in rows] == [
        ["embedded", method, "10", "10/10"] for method in ("p_tuning", "prefix_tuning")
    ]


def test_every_script_is_smoke_tested():
    scripts = {path.name for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_")}
    assert scripts == {*SCRIPTS, "generate_correctness.py"}
