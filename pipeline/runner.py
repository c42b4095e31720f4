"""Run one generation stage through a backend into a record store, with progress."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from pipeline.backends import Backend, Request
from pipeline.store import FAILED, OK, RecordStore


@dataclass
class Item:
    """One unit of work: its key, the request to send, and fields to keep in its record."""

    key: str
    request: Request
    fields: dict = field(default_factory=dict)


@dataclass
class StageStats:
    name: str
    total: int = 0
    generated: int = 0
    cached: int = 0
    failed: int = 0
    skipped_failed: int = 0  # failures from an earlier run, left alone without --retry-failed
    cut_short: int = 0  # a last line cut short by a kill, dropped when the store was opened
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.name:<10} {self.total:>6} items: {self.generated} generated, "
            f"{self.cached} cached, {self.failed + self.skipped_failed} failed"
            + (f" ({self.skipped_failed} from earlier runs)" if self.skipped_failed else "")
            + (f", {self.cut_short} cut-short line dropped" if self.cut_short else "")
            + (f", {self.tokens_per_second:.1f} tokens/s" if self.generated else "")
        )


def run_stage(
    name: str,
    items: Sequence[Item],
    backend: Backend | None,
    store: RecordStore,
    retry_failed: bool = False,
    progress: bool = True,
) -> StageStats:
    """Generate what the store lacks; store each completion as it arrives.

    `backend` may be None when nothing needs generating (it is only opened on demand by
    the caller if `pending(...)` is non-empty).
    """
    stats = StageStats(name, total=len(items), cut_short=int(store.dropped_line is not None))
    todo = pending(items, store, retry_failed, stats)
    if not todo:
        return stats
    if backend is None:
        raise RuntimeError(f"stage {name}: {len(todo)} items to generate but no backend")
    start = time.monotonic()
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=name, disable=not progress)
    try:
        for completion in backend.generate([item.request for item in todo]):
            item = todo[completion.index]
            record = {"key": item.key, "stage": name, **item.fields}
            if completion.ok:
                record.update(status=OK, text=completion.text, error=None)
                stats.generated += 1
            else:
                record.update(status=FAILED, text=None, error=completion.error)
                stats.failed += 1
            record["usage"] = [completion.prompt_tokens, completion.completion_tokens]
            # "length": cut off by max_tokens. Such a text is kept, and flagged, so that
            # filters and reports can say so instead of treating it as a finished answer.
            record["finish_reason"] = completion.finish_reason
            stats.completion_tokens += completion.completion_tokens
            store.append(record)
            bar.update()
    finally:
        store.flush()
        bar.close()
        stats.seconds = time.monotonic() - start
    return stats


def stored_stats(name: str, items: Sequence[Item], store: RecordStore) -> StageStats:
    """The stats of a stage left out of --stages: what its store holds, nothing generated."""
    return StageStats(
        name, total=len(items), cached=sum(store.is_ok(item.key) for item in items),
        cut_short=int(store.dropped_line is not None),
    )  # fmt: skip


def pending(
    items: Sequence[Item], store: RecordStore, retry_failed: bool, stats: StageStats | None = None
) -> list[Item]:
    """The items the store does not hold yet (and its failures, with `retry_failed`)."""
    stats = stats or StageStats("")
    todo, seen = [], set()
    for item in items:
        if item.key in seen:
            continue  # the same work asked twice (e.g. a repeated user question): do it once
        seen.add(item.key)
        record = store.get(item.key)
        if record is None:
            todo.append(item)
        elif record["status"] == OK:
            stats.cached += 1
        elif retry_failed:
            todo.append(item)
        else:
            stats.skipped_failed += 1
    return todo
