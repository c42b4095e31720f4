"""Load the PIE benchmark file and check every row before any model is called."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.files import read_text_file

FILE_NAMES = ("evaluation_dataset.jsonl", "evaluation_data.jsonl")  # both names were released
KEYS = ("Image ID", "Question", "Question Type")


class PieError(ValueError):
    """The PIE file has bad rows; the message lists every one with its line number."""


@dataclass(frozen=True)
class PieItem:
    line: int
    image_id: str
    question: str
    question_type: str
    image: Path


def find_pie_file(path: str | Path) -> Path:
    """Accept the file itself or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        for name in FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise PieError(f"--pie {path}: no {' or '.join(FILE_NAMES)} in this folder")
    if not path.is_file():
        raise PieError(f"--pie {path}: PIE file not found; check the path")
    return path


def load_pie(path: str | Path, known_types: set[str]) -> list[PieItem]:
    """Every row of the PIE file, images at `images/<Image ID>.jpg` beside it."""
    path = find_pie_file(path)
    images = path.parent / "images"
    items: list[PieItem] = []
    errors: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(read_text_file(path, "--pie"), start=1):
        if not raw.strip():
            continue
        item, problem = _parse_row(raw, number, images, known_types)
        if problem:
            errors.append(f"  line {number}: {problem}")
            continue
        key = (item.image_id, item.question)
        if key in seen:
            errors.append(f"  line {number}: duplicate of line {seen[key]} (same image, question)")
            continue
        seen[key] = number
        items.append(item)
    if errors:
        listing = "\n".join(errors)
        raise PieError(f"{path}: {len(errors)} bad row(s); fix or remove them:\n{listing}")
    if not items:
        raise PieError(
            f"--pie {path}: no rows; a PIE file holds one JSON object per line with "
            f"{', '.join(map(repr, KEYS))}"
        )
    return items


def _parse_row(raw: str, number: int, images: Path, known_types: set[str]):
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at column {err.colno})"
    return check_row(row, number, images, known_types)


def check_row(
    row: object, number: int, images: Path, known_types: set[str]
) -> tuple[PieItem | None, str | None]:
    """One PIE row already parsed (this loader's, or lmms-eval's json loader's): the item,
    or None and what is wrong with it."""
    if not isinstance(row, dict):
        return None, "expected a JSON object"
    missing = [k for k in KEYS if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        return None, f"missing or empty {', '.join(map(repr, missing))}"
    qtype = row["Question Type"]
    if qtype not in known_types:
        return None, f"unknown Question Type {qtype!r}; known: {', '.join(sorted(known_types))}"
    image = images / f"{row['Image ID']}.jpg"
    if not image.is_file():
        return None, f"image {image} not found"
    item = PieItem(number, row["Image ID"], row["Question"], qtype, image)
    return item, None
