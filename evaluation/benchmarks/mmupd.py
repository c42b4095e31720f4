"""MM-UPD: unsolvable problem detection, in its published TSV format.

Source: Miyai et al., "Unsolvable Problem Detection: Robust Understanding Evaluation for
Large Multimodal Models", ACL 2025 (arXiv 2403.20331); dataset card
https://huggingface.co/datasets/MM-UPD/MM-UPD (files data/mm{aad,iasd,ivqd}_*_{base,option}.tsv).

Format: MMBench-style TSV, one row per question: `index`, `question`, `hint`, options `A`..`E`
(empty where the question has fewer), `answer` (the correct option letter), `category`,
`image` (base64-encoded image), `source`, `split`, `type` (`standard` or `upd`) and
`masked_answer` (AAD: the correct option removed from the upd version). A standard row and
its upd twin share `index`. The file name says the kind: mmaad (absent answer detection:
the right option is removed), mmiasd (incompatible answer set: no option fits the question),
mmivqd (incompatible visual question: the question does not fit the image).

Our types: upd rows of AAD and IASD are `Unanswerable Questions` (the options hold no
answer); of IVQD `False Premise` (the question assumes what the image does not show).
Standard rows are controls (they have an answer).

Scoring, as MM-UPD defines it, in the base setting: a standard row is hit when the answer
picks the correct option; a upd row is hit when the answer withholds one (MM-UPD matches the
free answer to a "none of the above / I cannot answer" option with GPT; here our rubric
judge decides, its verdict True being that match); `dual_accuracy` counts a pair hit when
both of its rows are. Option letters are read as MM-UPD's own matcher reads them (a reply
that is the letter, or opens with `A.`, `A)`, `(A)` and names no other option).
"""

from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from evaluation.benchmarks import BenchmarkItem, answer_key
from pipeline import DEFAULT_SAMPLES_DIR

NAME = "mmupd"
CITATION = (
    "Miyai et al., Unsolvable Problem Detection: Robust Understanding Evaluation for Large "
    "Multimodal Models, ACL 2025 (arXiv 2403.20331); https://huggingface.co/datasets/MM-UPD/MM-UPD"
)
TYPES = {"aad": "Unanswerable Questions", "iasd": "Unanswerable Questions",
         "ivqd": "False Premise"}  # fmt: skip
DEFAULT_DATA = DEFAULT_SAMPLES_DIR / "benchmarks" / "mmupd" / "mmaad_sample_base.tsv"
COLUMNS = ("index", "question", "hint", "A", "B", "answer", "category", "image", "type")
OPTIONS = "ABCDE"


def kind_of(path: Path) -> str:
    match = re.match(r"mm(aad|iasd|ivqd)_", path.name)
    if not match:
        raise ValueError(
            f"--data {path}: an MM-UPD file is named mmaad_*, mmiasd_* or mmivqd_* (as "
            "published); the name says which kind of unsolvable problem it holds"
        )
    return match.group(1)


def load(path: str | Path, workdir: str | Path) -> list[BenchmarkItem]:
    """Every row of an MM-UPD TSV; images decoded into WORKDIR/images/<index>-<type>.png."""
    path, images = Path(path), Path(workdir) / "images"
    kind = kind_of(path)
    csv.field_size_limit(1 << 30)  # base64 images are long fields
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(
            f"--data {path}: not an MM-UPD TSV (needs the columns {', '.join(COLUMNS)}; "
            f"missing {', '.join(missing) or 'every row'})"
        )
    images.mkdir(parents=True, exist_ok=True)
    items, errors = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if row["type"] not in ("standard", "upd"):
            errors.append(f"  line {number}: type {row['type']!r}; expected standard or upd")
            continue
        try:
            image = _decode(row["image"], images / f"{row['index']}-{row['type']}.png")
        except ValueError as err:
            errors.append(f"  line {number}: {err}")
            continue
        options = {c: row[c] for c in OPTIONS if _present(row.get(c))}
        gold = {"index": row["index"], "type": row["type"], "answer": row["answer"],
                "options": options, "category": row["category"],
                "masked_answer": row.get("masked_answer")}  # fmt: skip
        qtype = TYPES[kind] if row["type"] == "upd" else None
        items.append(BenchmarkItem(number, f"mmupd-{row['index']}-{row['type']}",
                                   prompt(row, options), qtype, image, gold))  # fmt: skip
    if errors:
        raise ValueError(f"{path}: {len(errors)} bad row(s):\n" + "\n".join(errors))
    return items


def prompt(row: dict, options: dict[str, str]) -> str:
    """The question as lmms-eval's mmupd task poses it (base setting): hint, question, options."""
    listed = "".join(f"\n{letter}. {text}" for letter, text in options.items())
    hint = row.get("hint")
    return f"{hint}\n{row['question']}{listed}" if _present(hint) else f"{row['question']}{listed}"


def _present(value: str | None) -> bool:
    return bool(value) and value.strip().lower() not in ("nan", "none")


def _decode(data: str, target: Path) -> Path:
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except (ValueError, UnidentifiedImageError, OSError) as err:
        raise ValueError(f"the image column is not a base64-encoded image ({err})") from err
    # Rewritten only when it changed: its mtime and bytes stay, so do cached hashes.
    if not target.is_file() or target.read_bytes() != buffer.getvalue():
        target.write_bytes(buffer.getvalue())
    return target


def option_letter(answer: str, options: dict[str, str]) -> str | None:
    """The option an answer picks, as MM-UPD's matcher reads it, or None."""
    answer = (answer or "").strip()
    picked = []
    for letter in options:
        others = [f"{o}{p}" for o in OPTIONS if o != letter for p in ".),"]
        opens = any(answer.startswith(p) for p in (f"{letter})", f"{letter}.", f"{letter},",
                                                     f"({letter})"))  # fmt: skip
        if answer == letter or (opens and not any(o in answer for o in others)):
            picked.append(letter)
    return picked[0] if len(picked) == 1 else None


def score(items: list[BenchmarkItem], answers: dict[str, str | None],
          verdicts: dict[str, str]) -> dict:  # fmt: skip
    """Standard, upd and dual accuracy (MM-UPD's figures), over the pairs in the file."""
    hits: dict[str, dict[str, bool | None]] = {}
    for item in items:
        key, gold = answer_key(item), item.gold
        answer = answers.get(key)
        if gold["type"] == "standard":
            hit = None if answer is None else option_letter(answer, gold["options"]) == gold[
                "answer"].strip()  # fmt: skip
        else:
            verdict = verdicts.get(key)
            hit = None if verdict in (None, "failed") else verdict == "True"
        hits.setdefault(gold["index"], {})[gold["type"]] = hit
    standard = [h["standard"] for h in hits.values() if h.get("standard") is not None]
    upd = [h["upd"] for h in hits.values() if h.get("upd") is not None]
    pairs = [h for h in hits.values() if h.get("standard") is not None
             and h.get("upd") is not None]  # fmt: skip
    return {
        "name": NAME,
        "citation": CITATION,
        "standard_accuracy": _mean(standard),
        "upd_accuracy": _mean(upd),
        "dual_accuracy": _mean([h["standard"] and h["upd"] for h in pairs]),
        "pairs": len(pairs),
        "note": "upd rows hit when our rubric judge finds the answer withholds one "
        "(MM-UPD matches it to a none-of-the-above option with GPT)",
    }


def _mean(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None
