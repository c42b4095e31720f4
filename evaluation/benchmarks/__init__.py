"""Engagement benchmarks beyond PIE, each read in its published format (one module each).

A benchmark module gives:
- `NAME`, `CITATION` (paper and dataset card), `TYPES` (its item kinds -> our question types)
  and `DEFAULT_DATA` (the bundled few-row fixture in the published format);
- `load(path, workdir) -> list[BenchmarkItem]`: every row checked, each item's question as
  the benchmark poses it and its question type (None: a control item, which has an answer);
- `score(items, answers, verdicts) -> dict`: the benchmark's own scoring where it defines
  one; items of a question type are also judged by our rubric judge (`verdicts`).

`macaroon eval --benchmark NAME [--data FILE]` runs one (evaluation/run.py): the model
answers every item, the judge judges the typed ones, metrics.json holds the Align Rates of
the mapped types and, under `benchmark`, the benchmark's own scores.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from pipeline.pie import PieItem

BENCHMARKS = ("mmupd", "vizwiz")


@dataclass(frozen=True)
class BenchmarkItem(PieItem):
    """A PIE-like item (image, question, our question type or None) and its gold data."""

    gold: dict = field(default_factory=dict, compare=False, hash=False)


def benchmark(name: str) -> ModuleType:
    """The module of benchmark `name`, or an error listing the known ones."""
    if name not in BENCHMARKS:
        raise ValueError(
            f"--benchmark {name!r}: unknown; choose pie or one of {', '.join(BENCHMARKS)} "
            "(evaluation/benchmarks/)"
        )
    return importlib.import_module(f"evaluation.benchmarks.{name}")


def answer_key(item: PieItem) -> str:
    """How evaluation/run.py keys an item's answer and verdict."""
    return f"{item.image_id}\0{item.question}"
