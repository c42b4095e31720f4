"""Import the original MACAROON training files (Wu et al. 2024) into our dataset layouts.

The released files are lists of `{"id", "image", "conversations"}` records. The original
readers used only the positions in `conversations` and each turn's `value`, so we do too:

- pair files (`preference_dataset.json`, `VLfeedback_dataset.json`): turn 0 is the
  question, turn 1 a dict `{"preferred", "rejected"}` -> `sft`, `dpo` and two `crl` rows.
- separate files (`*_seperate.json`, sic): turn 1 holds ONE of the two -> one `crl` row,
  plus an `sft` row when it is the preferred answer.
- multiturn files (`preference_dataset_multiturn.json`, `vlfeedback_nlf_conversations.jsonl`):
  plain string turns alternating user / assistant -> `multiturn` rows.

Other `*.json` / `*.jsonl` files are accepted too; their kind is sniffed from turn 1.
Every problem is collected and reported at once, naming file, record and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.formats import (
    CONFIGS,
    crl_row,
    dpo_row,
    multiturn_row,
    provenance,
    sft_row,
    to_dataset_dict,
)

if TYPE_CHECKING:
    from datasets import DatasetDict

PAIR, SEPARATE, MULTITURN = "pair", "separate", "multiturn"
KNOWN_FILES = {
    "preference_dataset.json": PAIR,
    "vlfeedback_dataset.json": PAIR,
    "preference_dataset_seperate.json": SEPARATE,
    "vlfeedback_dataset_seperate.json": SEPARATE,
    "preference_dataset_multiturn.json": MULTITURN,
    "vlfeedback_nlf_conversations.jsonl": MULTITURN,
}
ANSWER_KEYS = ("preferred", "rejected")
MAX_LISTED = 20  # problems listed in one error; the rest are counted
# LLaVA-style data puts the image placeholder into the text; our messages carry the image
# as a separate part, so a marker at either end of the first user turn is dropped.
_IMAGE_MARKER = re.compile(r"^\s*<image>\s*|\s*<image>\s*$")


class ImportFormatError(ValueError):
    """Bad import input; `problems` lists every problem (the message shows the first 20)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        more = len(problems) - MAX_LISTED
        tail = f"\n  and {more} more" if more > 0 else ""
        super().__init__(f"import failed, {len(problems)} problem(s):\n{listed}{tail}")


class _Bad(Exception):
    """One record's problem; the caller adds file and record to the message."""


def _type(value: Any) -> str:
    return type(value).__name__


# --- reading files -------------------------------------------------------------------------


def _read_json(path: Path) -> list[tuple[int | None, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        hint = " (JSON Lines? name the file *.jsonl)" if err.msg == "Extra data" else ""
        msg = f"not valid JSON at line {err.lineno} column {err.colno}: {err.msg}{hint}"
        raise _Bad(msg) from err
    if not isinstance(data, list):
        got = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else _type(data)
        raise _Bad(f"must be a JSON list of records, got {got}")
    return [(None, record) for record in data]


def _read_jsonl(path: Path, problems: list[str]) -> list[tuple[int | None, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            problems.append(
                f"{path.name}: line {number}: not valid JSON ({err.msg} at column {err.colno});"
                " fix or remove the line"
            )
    return records


def _read_records(path: Path, problems: list[str]) -> list[tuple[int | None, Any]] | None:
    """(line number or None, record) pairs; None (and a problem) when the file is unusable."""
    try:
        if not path.is_file():
            raise _Bad("file not found" if not path.exists() else "not a file")
        if path.suffix.lower() == ".jsonl":
            return _read_jsonl(path, problems)
        if path.suffix.lower() == ".json":
            return _read_json(path)
        raise _Bad("unsupported file type: expected a .json list or a .jsonl file")
    except _Bad as err:
        problems.append(f"{path}: {err}")
    except (OSError, UnicodeDecodeError) as err:
        fix = "; save it as UTF-8" if isinstance(err, UnicodeDecodeError) else ""
        problems.append(f"{path}: cannot read: {err}{fix}")
    return None


# --- checking records ----------------------------------------------------------------------


def _values(record: Any) -> list:
    """The `value` of each turn in `conversations`."""
    if not isinstance(record, dict):
        raise _Bad(f"must be an object with 'image' and 'conversations', got {_type(record)}")
    turns = record.get("conversations")
    if turns is None:
        raise _Bad("has no 'conversations': add the list of turns [{'value': ...}, ...]")
    if not isinstance(turns, list) or len(turns) < 2:
        raise _Bad("'conversations' must be a list of at least 2 turns (question, answer)")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "value" not in turn:
            raise _Bad(f"conversations[{i}] must be an object with a 'value'")
    return [turn["value"] for turn in turns]


def _text(value: Any, where: str, first_user: bool = False) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{where} must be a string, got {_type(value)}")
    text = _IMAGE_MARKER.sub("", value).strip() if first_user else value
    if not text.strip():
        raise _Bad(f"{where} is empty: give the {'question' if first_user else 'text'}")
    return text


def _sniff(values: list) -> str | None:
    second = values[1]
    if isinstance(second, str):
        return MULTITURN
    if isinstance(second, dict):
        present = [key for key in ANSWER_KEYS if key in second]
        return {2: PAIR, 1: SEPARATE}.get(len(present))
    return None


def _answers(value: Any, kind: str) -> dict[str, str]:
    where = "conversations[1].value"
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be an object with 'preferred'/'rejected', got {_type(value)}")
    present = [key for key in ANSWER_KEYS if key in value]
    if kind == PAIR and len(present) != 2:
        raise _Bad(
            f"{where} must hold 'preferred' and 'rejected', got keys {sorted(value)}"
            " (single answers belong in a *_seperate.json file)"
        )
    if kind == SEPARATE and len(present) != 1:
        raise _Bad(
            f"{where} must hold exactly one of 'preferred' or 'rejected' in a separate (CRL)"
            f" file, got keys {sorted(value)} (pairs belong in preference_dataset.json)"
        )
    return {key: _text(value[key], f"{where}.{key}") for key in present}


def _content(values: list, kind: str) -> tuple[str, Any]:
    """(question, answers dict) for pair/separate records; (question, turns) for multiturn."""
    question = _text(values[0], "conversations[0].value (the question)", first_user=True)
    if kind == MULTITURN:
        if len(values) % 2:
            raise _Bad(f"conversations must alternate user/assistant pairs, got {len(values)}")
        rest = [_text(v, f"conversations[{i}].value") for i, v in enumerate(values[1:], 1)]
        return question, [question, *rest]
    if len(values) != 2:
        raise _Bad(f"conversations must have 2 turns (question, answers), got {len(values)}")
    return question, _answers(values[1], kind)


class _Images:
    """Resolves and checks image paths once each (records often share an image)."""

    def __init__(self, image_root: Path | None):
        self.root = image_root
        self.checked: dict[Path, str | None] = {}

    def resolve(self, record: dict, data_file: Path) -> tuple[Path, str | None]:
        """(path, problem or None); a bad or missing `image` field raises instead."""
        image = record.get("image")
        if not isinstance(image, str) or not image.strip():
            raise _Bad("has no 'image': give the image path (relative to the data file)")
        path, base = Path(image), None
        if not path.is_absolute():
            base = self.root if self.root is not None else data_file.parent
            path = base / path
        if path not in self.checked:
            self.checked[path] = self._check(path, base)
        return path, self.checked[path]

    @staticmethod
    def _check(path: Path, base: Path | None) -> str | None:
        from PIL import Image

        if not path.is_file():
            hint = f" (relative paths resolve against {base}; set image_root)" if base else ""
            return f"image not found: {path}{hint}"
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as err:  # PIL raises many types for a broken file
            return f"image unreadable: {path} ({err})"
        return None


# --- rows ----------------------------------------------------------------------------------


def _rows(kind: str, image: Path, content: tuple[str, Any], meta: dict) -> dict[str, list]:
    question, body = content
    if kind == MULTITURN:
        return {"multiturn": [multiturn_row(image, body, meta)]}
    rows: dict[str, list] = {"sft": [], "dpo": [], "crl": []}
    if "preferred" in body:
        rows["sft"].append(sft_row(image, question, body["preferred"], meta))
        rows["crl"].append(crl_row(image, question, body["preferred"], "good", meta))
    if "rejected" in body:
        rows["crl"].append(crl_row(image, question, body["rejected"], "bad", meta))
    if kind == PAIR:
        rows["dpo"].append(dpo_row(image, question, body["preferred"], body["rejected"], meta))
    return rows


def _record_id(record: Any) -> str | None:
    has_id = isinstance(record, dict) and record.get("id") is not None
    return str(record["id"]) if has_id else None


def _meta(path: Path, index: int, record: dict) -> dict:
    source = f"{path.name}#{index}"
    key = _record_id(record) or source
    # The original files carry no question type; VLFeedback is the general-purpose mix.
    general = "vlfeedback" in path.name.lower()
    return provenance(source=source, key=key, question_type="general" if general else "")


def _where(path: Path, index: int, line: int | None, record: Any) -> str:
    details = [f"line {line}"] if line is not None else []
    if _record_id(record) is not None:
        details.append(f"id {_record_id(record)!r}")
    return f"{path.name}: record {index}" + (f" ({', '.join(details)})" if details else "")


def _file_kind(path: Path, records: list, problems: list[str]) -> str | None:
    kind = KNOWN_FILES.get(path.name.lower())
    if kind is not None or not records:
        return kind
    for _, record in records:
        try:
            kind = _sniff(_values(record))
        except _Bad:
            continue
        if kind is not None:
            return kind
    names = ", ".join(KNOWN_FILES)
    problems.append(
        f"{path}: cannot tell the file's kind from conversations[1].value (want a dict with"
        f" 'preferred'/'rejected' or a string); name it one of {names}"
    )
    return None


def _import_record(path, index, line, record, kind, images, skip_missing, state) -> None:
    where = _where(path, index, line, record)
    try:
        content = _content(_values(record), kind)
        image, missing = images.resolve(record, path)
    except _Bad as err:
        state["problems"].append(f"{where}: {err}")
        return
    stats = state["files"][-1]
    if missing and not skip_missing:
        state["problems"].append(f"{where}: {missing}, or pass skip_missing_images=True")
    elif missing:
        stats["skipped"] += 1
        skipped = {"file": path.name, "record": index, "id": _record_id(record)}
        state["skipped"].append(skipped | {"reason": missing})
    else:
        stats["imported"] += 1
        for config, rows in _rows(kind, image, content, _meta(path, index, record)).items():
            state["rows"][config].extend(rows)


def _import_file(path: Path, images: _Images, skip_missing: bool, state: dict) -> None:
    """Adds one file's rows, skipped records and problems to `state`."""
    records = _read_records(path, state["problems"])
    if records is None:
        return
    kind = _file_kind(path, records, state["problems"])
    state["files"].append(
        {"path": str(path), "kind": kind, "records": len(records), "imported": 0, "skipped": 0}
    )
    if kind is None:
        return
    for index, (line, record) in enumerate(records):
        _import_record(path, index, line, record, kind, images, skip_missing, state)


def import_files(
    paths: Sequence[str | Path],
    image_root: str | Path | None = None,
    skip_missing_images: bool = False,
) -> tuple[DatasetDict, dict]:
    """Rows from all files combined per config.

    Returns (dataset_dict, summary); the summary counts rows per config, records per file
    and lists skipped records with their reasons. Raises `ImportFormatError` listing every
    problem in every file when any record is bad.
    """
    if not paths:
        raise ImportFormatError(["no files given: pass the MACAROON .json/.jsonl files"])
    images = _Images(Path(image_root) if image_root is not None else None)
    state: dict = {"rows": {c: [] for c in CONFIGS}, "files": [], "skipped": [], "problems": []}
    for path in paths:
        _import_file(Path(path), images, skip_missing_images, state)
    if state["problems"]:
        raise ImportFormatError(state["problems"])
    counts = {config: len(rows) for config, rows in state["rows"].items()}
    if not any(counts.values()):
        raise ImportFormatError(
            [f"no rows imported from {[str(p) for p in paths]} ({len(state['skipped'])} skipped)"]
        )
    summary = {
        "rows": counts,
        "files": state["files"],
        "skipped": state["skipped"],
        "image_root": str(image_root) if image_root is not None else None,
    }
    return to_dataset_dict(state["rows"]), summary


# --- saving --------------------------------------------------------------------------------


def _card(summary: dict) -> str:
    rows = "\n".join(f"| {c} | {n} |" for c, n in summary["rows"].items() if n)
    files = "\n".join(
        f"| `{f['path']}` | {f['kind']} | {f['records']} | {f['imported']} | {f['skipped']} |"
        for f in summary["files"]
    )
    return f"""# MACAROON training data (imported)

These rows came from the original MACAROON training files (Wu et al., EMNLP 2024 Findings,
arXiv 2406.14137), converted by `imagination/importer.py` into this project's layouts
(docs/DESIGN.md §2). The images are embedded; load with `datasets.load_from_disk`.

| config | rows |
|---|---|
{rows}

## Source files

| file | kind | records | imported | skipped |
|---|---|---|---|---|
{files}

Each row's `source` is `<file name>#<record index>` and `key` the record's `id`.
The original files carry no question type; rows from VLFeedback files have
`question_type` `general`. Skipped records and their reasons: `import_summary.json`.
"""


def save_import(dataset_dict: DatasetDict, summary: dict, out: Path) -> None:
    """Writes out/dataset (with README.md card) and out/import_summary.json.

    `save_to_disk` embeds the image bytes (datasets >= 4 does so for `Image` features),
    so the saved dataset no longer needs the source image files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset_dict.save_to_disk(str(out / "dataset"))
    (out / "dataset" / "README.md").write_text(_card(summary), encoding="utf-8")
    (out / "import_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
