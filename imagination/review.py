"""A person's review of an imagined set: keep/drop marks exported from browse.html.

The page exports a marks file (docs/FORMATS.md): the set it was made for, and per pair its
key (imagination.filters.pair_key: the question and response records), the mark and a
note. `macaroon build --review FILE` reads it before any model call or write, checks it
belongs to this set, applies it, and remembers it as OUT/review.json for later runs on OUT.
A mark on a pair that no longer exists (a criteria edit regenerated its responses) is
reported with examples, never applied in silence.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.store import record_key

FORMAT = "macaroon_review"  # the field that marks a file as ours; its value is the version
VERSION = 1
MARKS = ("keep", "drop")
REMEMBERED = "review.json"  # OUT/review.json: the review later runs on OUT apply
NO_REVIEW = "none"  # --review none: build without the remembered review (and forget it)


class ReviewError(ValueError):
    """A marks file that cannot be used; the message names the file and the fix."""


@dataclass
class Marks:
    path: Path
    set: dict
    marks: dict[str, dict]  # pair key -> {"mark", "note", ...what the page recorded}


@dataclass
class Review:
    """What a review did to a set: per pair its mark (or None), and the marks it could
    not apply because their pair no longer exists."""

    path: str
    marks: list[str | None]
    notes: list[str | None]
    stale: list[dict] = field(default_factory=list)

    def report(self) -> dict:
        marked = [m for m in self.marks if m]
        return {
            "file": self.path, "applied": len(marked), "drop": marked.count("drop"),
            "keep": marked.count("keep"), "stale": len(self.stale),
            "stale_examples": [_example(m) for m in self.stale[:3]],
        }  # fmt: skip


def set_identity(pairs: list[dict], out: Path, criteria_hash: str | None = None) -> dict:
    """What a marks file says about the set it was made for: the folder, and a hash of its
    pair keys (equal exactly when every pair's records are the same)."""
    keys = sorted(p["pair_key"] for p in pairs)
    return {
        "out": str(Path(out).resolve()), "pairs": len(keys),
        "pairs_hash": record_key(stage="set", pairs=keys), "criteria_hash": criteria_hash,
    }  # fmt: skip


def resolve_review(review: str | None, out: Path) -> Path | None:
    """The marks file a run on `out` applies: --review FILE, else OUT/review.json when an
    earlier run remembered one; None for --review none or when there is none."""
    if review == NO_REVIEW:
        return None
    if review:
        return Path(review)
    remembered = out / REMEMBERED
    return remembered if remembered.is_file() else None


def read_marks(path: str | Path) -> Marks:
    """Read and check a marks file; every problem is a ReviewError naming the file."""
    path = Path(path)
    fix = "export the marks again from the set's browse.html (button `export marks`)"
    if not path.is_file():
        raise ReviewError(f"{path}: marks file not found; {fix}, or give its path to --review")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ReviewError(f"{path}: not a marks file (not UTF-8 text: {err}); {fix}") from err
    except json.JSONDecodeError as err:
        raise ReviewError(
            f"{path}: corrupt or truncated marks file (line {err.lineno}, column {err.colno}: "
            f"{err.msg}); {fix}"
        ) from err
    if not isinstance(data, dict) or FORMAT not in data:
        raise ReviewError(f"{path}: not a MACAROON marks file (no {FORMAT!r} field); {fix}")
    if data[FORMAT] != VERSION:
        raise ReviewError(f"{path}: marks file version {data[FORMAT]!r}, this version reads "
                          f"{VERSION}; {fix}")  # fmt: skip
    identity, rows = data.get("set"), data.get("marks")
    if not isinstance(identity, dict) or not isinstance(identity.get("pairs_hash"), str):
        raise ReviewError(f"{path}: the marks file does not say which set it is for (`set`); "
                          f"{fix}")  # fmt: skip
    if not isinstance(rows, list):
        raise ReviewError(f"{path}: `marks` must be a list of marks; {fix}")
    marks, errors = {}, []
    for n, row in enumerate(rows):
        problem = _problem(row)
        if problem:
            errors.append(f"  mark {n}: {problem}")
        else:
            marks[row["key"]] = {**row, "note": row.get("note") or ""}  # the last one wins
    if errors:
        more = f"\n  ... {len(errors) - 5} more" if len(errors) > 5 else ""
        shown = "\n".join(errors[:5]) + more
        raise ReviewError(f"{path}: {len(errors)} bad mark(s):\n{shown}\n{fix}")
    return Marks(path, identity, marks)


def _problem(row: object) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("key"), str) or not row["key"]:
        return "no pair `key`"
    if row.get("mark") not in MARKS:
        return f"`mark` is {row.get('mark')!r}; use keep or drop"
    if not isinstance(row.get("note") or "", str):
        return "`note` must be text"
    return None


def apply_marks(marks: Marks, pairs: list[dict], identity: dict) -> Review:
    """Each pair's mark; stops with a ReviewError when the file was made for another set
    (another folder, other pairs, and not one of its marks on a pair here)."""
    by_key = {p["pair_key"]: i for i, p in enumerate(pairs)}
    found = [key for key in marks.marks if key in by_key]
    same = marks.set.get("pairs_hash") == identity["pairs_hash"] or _same_folder(
        marks.set.get("out"), identity["out"]
    )
    if not same and not found:
        raise ReviewError(
            f"{marks.path}: these marks are for another set: exported from "
            f"{marks.set.get('out', '?')} ({marks.set.get('pairs', '?')} pairs), this set is "
            f"{identity['out']} ({identity['pairs']} pairs) and none of the "
            f"{len(marks.marks)} marks is on one of its pairs. Pass the marks exported from "
            f"{Path(identity['out']) / 'browse.html'}, or build the set they were made for "
            f"(--out {marks.set.get('out', 'DIR')}); --review none builds without marks"
        )
    mark: list[str | None] = [None] * len(pairs)
    notes: list[str | None] = [None] * len(pairs)
    for key in found:
        mark[by_key[key]] = marks.marks[key]["mark"]
        notes[by_key[key]] = marks.marks[key]["note"]
    stale = [m for key, m in marks.marks.items() if key not in by_key]
    return Review(str(marks.path), mark, notes, stale)


def _same_folder(a: str | None, b: str) -> bool:
    return bool(a) and os.path.normpath(a) == os.path.normpath(b)


def _example(mark: dict) -> str:
    question = (mark.get("question") or "")[:80]
    text = f"{mark.get('question_type', '?')}: {question!r} marked {mark['mark']}"
    return text + (f" ({mark['note']})" if mark.get("note") else "")


def remember(marks: Path | None, out: Path) -> None:
    """Keep the applied marks file as OUT/review.json (later runs apply it); --review none
    forgets it. Written only after a build succeeded, by rename, so it is never half there."""
    target = out / REMEMBERED
    if marks is None:
        target.unlink(missing_ok=True)
        return
    if marks.resolve() == target.resolve():
        return
    partial = target.with_suffix(".json.partial")
    shutil.copyfile(marks, partial)
    os.replace(partial, target)
