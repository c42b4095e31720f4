"""Run one generation stage through a backend into a record store, with progress."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from pipeline.backends import Backend, EndpointUnreachable, Request
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
    # Failed items of this stage (this run's and earlier ones'), per distinct reason, most
    # frequent first: {"reason", "count", "example"} with one record's image and question.
    failures: list[dict] = field(default_factory=list)

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

    def failure_lines(self) -> list[str]:
        """Why items failed: one line per reason, with an example record."""
        if not self.failures:
            return []
        total = sum(f["count"] for f in self.failures)
        lines = [f"{self.name}: {total} failed, by reason:"]
        for failure in self.failures:
            lines.append(f"  {failure['count']} x {failure['reason']}")
            example = ", ".join(f"{k} {v}" for k, v in failure["example"].items())
            if example:
                lines.append(f"      e.g. {example}")
        return lines


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
    # The same work asked twice (a repeated question, a pair whose two responses read the
    # same) is done once and counted once.
    unique = len({item.key for item in items})
    stats = StageStats(name, total=unique, cut_short=int(store.dropped_line is not None))
    todo = pending(items, store, retry_failed, stats)
    if not todo:
        stats.failures = failure_reasons(items, store)
        return stats
    if backend is None:
        raise RuntimeError(f"stage {name}: {len(todo)} items to generate but no backend")
    start = time.monotonic()
    bar = tqdm(total=unique, initial=unique - len(todo), desc=name, disable=not progress)
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
    except EndpointUnreachable as err:
        done = stats.cached + stats.generated + stats.failed
        raise EndpointUnreachable(
            f"stage {name} stopped early, {done} of {len(items)} items done: {err}"
        ) from None
    finally:
        store.flush()
        bar.close()
        stats.seconds = time.monotonic() - start
    stats.failures = failure_reasons(items, store)
    return stats


def stored_stats(name: str, items: Sequence[Item], store: RecordStore) -> StageStats:
    """The stats of a stage left out of --stages: what its store holds, nothing generated."""
    keys = {item.key for item in items}
    return StageStats(
        name, total=len(keys), cached=sum(store.is_ok(key) for key in keys),
        cut_short=int(store.dropped_line is not None), failures=failure_reasons(items, store),
    )  # fmt: skip


# What an example names of its record: enough to find the image and question it was about.
EXAMPLE_FIELDS = ("image", "image_id", "question_type", "question", "kind")


def failure_reasons(items: Sequence[Item], store: RecordStore, limit: int = 5) -> list[dict]:
    """The stage's failed records counted per distinct reason, each with one example."""
    counts: Counter[str] = Counter()
    examples: dict[str, dict] = {}
    for key in dict.fromkeys(item.key for item in items):
        record = store.get(key)
        if record is None or record.get("status") != FAILED:
            continue
        reason = str(record.get("error") or "no reason recorded")
        counts[reason] += 1
        examples.setdefault(reason, {k: _short(record[k]) for k in EXAMPLE_FIELDS
                                     if record.get(k)})  # fmt: skip
    ranked = counts.most_common()
    failures = [
        {"reason": reason, "count": count, "example": examples[reason]}
        for reason, count in ranked[:limit]
    ]
    if len(ranked) > limit:
        rest = ranked[limit:]
        failures.append({"reason": f"{len(rest)} other reasons (see the stage's records)",
                         "count": sum(c for _, c in rest), "example": {}})  # fmt: skip
    return failures


def _short(value: object, limit: int = 80) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
