"""The record store: append-only JSONL per stage, content-addressed keys, resume (§5).

A record's key hashes everything that determines it (image bytes, type, rendered prompt,
model, sampling, seed), never runtime knobs. Rerunning a stage skips keys already stored,
so an identical rerun makes no model calls and editing one type's criteria regenerates
only that type. A crash loses at most the records not yet flushed; a line cut short by a
kill is dropped on the next open, with a warning naming it. One process writes a store at
a time: opening one locks it (`pipeline.lock`) until it is closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import weakref
from functools import lru_cache
from pathlib import Path

from pipeline import lock

log = logging.getLogger(__name__)

OK, FAILED = "ok", "failed"


class StoreError(ValueError):
    """A record file is damaged beyond its last line; the message names file and line."""


def _not_a_record(record: object) -> str | None:
    """What keeps a decoded line from being a record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("key"), str):
        return "no text 'key'"
    if record.get("status") not in (OK, FAILED):
        return f"'status' is {record.get('status')!r}, not {OK!r} or {FAILED!r}"
    return None


def record_key(**parts: object) -> str:
    """Content address of a record: a hash of the canonical JSON of what determines it."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def file_hash(path: str | Path) -> str:
    """Hash of a file's bytes (images enter keys by content, not by path)."""
    stat = Path(path).stat()
    return _file_hash(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=65536)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


class RecordStore:
    """Records of one stage, keyed by `key`; the last record of a key wins.

    Locked from opening to `close` (LockError if another process has it open);
    `dropped_line` is the number of a line cut short by a kill and dropped on opening.
    """

    def __init__(self, path: str | Path, flush_every: int = 64, flush_seconds: float = 2.0):
        self.path = Path(path)
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.records: dict[str, dict] = {}
        self.dropped_line: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Locked before reading: dropping a cut-short line writes to the file.
        key = lock.acquire(self.path.with_name(self.path.name + ".lock"), self.path)
        # Released by close(), or when a store that was never closed is collected.
        self._unlock = weakref.finalize(self, lock.release, key)
        try:
            self._load()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (see close())
        except BaseException:
            self._unlock()
            raise
        self._pending, self._last_flush = 0, time.monotonic()

    def _load(self) -> None:
        if not self.path.exists():
            return
        if not self.path.is_file():
            raise StoreError(f"{self.path}: not a regular file; remove it or choose another --out")
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # A kill mid-write leaves a partial last line: drop it so appends start clean.
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(cut)
            data, self.dropped_line = data[:cut], data.count(b"\n", 0, cut) + 1
            log.warning(
                "%s: line %d was cut short by an interrupted write; dropped it, its item will "
                "be generated again", self.path, self.dropped_line,
            )  # fmt: skip
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                problem = _not_a_record(record)
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                problem = str(err)
            if problem:
                raise StoreError(
                    f"{self.path}: line {number} is not a record ({problem}); the file was "
                    "edited or damaged: delete that line (or the file, to regenerate the stage)"
                )
            self.records[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def is_ok(self, key: str) -> bool:
        record = self.records.get(key)
        return record is not None and record["status"] == OK

    def append(self, record: dict) -> None:
        if "key" not in record or record.get("status") not in (OK, FAILED):
            raise ValueError("a record needs a 'key' and a 'status' of 'ok' or 'failed'")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.records[record["key"]] = record
        self._pending += 1
        now = time.monotonic()
        if self._pending >= self.flush_every or now - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        # The OS keeps flushed bytes when the process is killed; fsync only guards power loss.
        self._file.flush()
        self._pending, self._last_flush = 0, time.monotonic()

    def close(self) -> None:
        try:
            if not self._file.closed:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
        finally:
            self._unlock()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def failed_records(self) -> list[dict]:
        return [r for r in self.records.values() if r["status"] == FAILED]
