"""Stage `questions`: imagine questions per image and type, or read the user's own."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from imagination.prompts import chat, render
from pipeline.backends import Request, Sampling
from pipeline.criteria import QuestionType
from pipeline.files import read_text_file
from pipeline.runner import Item
from pipeline.store import file_hash, record_key


def question_items(
    images: Sequence[Path],
    types: dict[str, QuestionType],
    template: str,
    model: dict,  # what identifies the model (pipeline.backends.backend_identity)
    per_type: int,
    sampling: Sampling,
) -> list[Item]:
    """`per_type` questions for every image and type; the sample index varies the seed."""
    items = []
    for image in images:
        image_hash = file_hash(image)
        for qtype in types.values():
            prompt = render(template, qtype)
            for sample in range(per_type):
                seeded = replace(sampling, seed=sampling.seed + sample)
                key = record_key(
                    stage="questions", image=image_hash, type=qtype.name, prompt=prompt,
                    model=model, sampling=seeded.__dict__,
                )  # fmt: skip
                fields = _fields(image, image_hash, qtype) | {"sample": sample}
                items.append(Item(key, Request(chat(prompt), (image,), seeded), fields))
    return items


def _fields(image: Path, image_hash: str, qtype: QuestionType) -> dict:
    return {
        "image": str(image),
        "image_hash": image_hash,
        "question_type": qtype.name,
        "tier": qtype.tier,
        "criteria_hash": qtype.content_hash,
    }


def clean_question(text: str) -> str:
    """The question from a model's reply: first non-empty line, without labels or quotes."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:question\s*\d*\s*[:.-]|[-*\d.)]+\s)\s*", "", line, flags=re.I)
        line = line.strip().strip("\"'“”").strip()
        if line:
            return line
    return ""


def user_questions(
    path: str | Path, types: dict[str, QuestionType], images_dir: str | Path
) -> list[dict]:
    """Read user-supplied questions: JSONL rows `{"image", "question", "question_type"}`.

    Relative image paths resolve against `images_dir`. Every bad row is listed, by line.
    """
    path, images_dir = Path(path), Path(images_dir)
    rows, errors = [], []
    for number, raw in enumerate(read_text_file(path, "--questions"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError("expected a JSON object")
        except ValueError as err:
            errors.append(f"  line {number}: not a JSON object ({err})")
            continue
        missing = [
            k for k in ("image", "question", "question_type")
            if not isinstance(row.get(k), str) or not row[k].strip()
        ]  # fmt: skip
        if missing:
            errors.append(f"  line {number}: missing {', '.join(missing)}")
            continue
        if row["question_type"] not in types:
            errors.append(
                f"  line {number}: unknown question_type {row['question_type']!r}; "
                f"known: {', '.join(types)} (or add a criteria file)"
            )
            continue
        image = (
            Path(row["image"]) if Path(row["image"]).is_absolute() else images_dir / row["image"]
        )
        if not image.is_file():
            errors.append(f"  line {number}: image {image} not found")
            continue
        qtype = types[row["question_type"]]
        record = _fields(image, file_hash(image), qtype) | {"question": row["question"].strip()}
        record["key"] = record_key(
            stage="user_question", image=record["image_hash"], type=qtype.name,
            question=record["question"],
        )  # fmt: skip
        rows.append(record)
    if errors:
        raise ValueError(f"{path}: {len(errors)} bad row(s):\n" + "\n".join(errors))
    return rows
