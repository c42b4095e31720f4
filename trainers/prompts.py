"""METHOD=grpo's prompts: each question once, with its image and type, as the judge needs it.

GRPO samples its own answers, so it needs questions, not responses: those of a `make
imagine` / `macaroon import` folder (any of its splits; every row carries its
`question_type`), or a PIE-layout JSONL of the user's own questions (`Image ID`,
`Question`, `Question Type`; images in images/ beside it). The judge sends images by file
and keys them by content, so embedded images are written once into `images_dir`, named by
their hash.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from datasets import Dataset
from pipeline.formats import user_turn
from trainers.collator import with_reward_token
from trainers.data import DataError, load_dataset_dict

# Splits that hold one question per row (crl holds two rows per question; deduplicated).
SPLITS = ("dpo", "sft", "crl")
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif"}


def grpo_prompts(
    data: str, types: set[str], images_dir: Path, conditioning: str | None = None
) -> Dataset:
    """prompt (one user turn: image + question, `conditioning` first), images, question,
    question_type, image_path: one row per distinct (image, question)."""
    rows = _pie_rows(data, types) if data.endswith(".jsonl") else _dataset_rows(data, images_dir)
    unknown = sorted({r["question_type"] for r in rows} - types)
    if unknown:
        raise DataError(
            f"{data}: question type(s) {', '.join(unknown)} have no rubric in --criteria "
            f"(it has {', '.join(sorted(types))}); the judge cannot reward them: add their "
            "criteria files or pass the criteria the data was imagined with"
        )
    seen, unique = set(), []
    for row in rows:
        if (row["image_path"], row["question"]) not in seen:
            seen.add((row["image_path"], row["question"]))
            unique.append(row)
    if not unique:
        raise DataError(f"{data}: no questions to train on")
    return _as_dataset(unique, conditioning)


def _as_dataset(rows: list[dict], conditioning: str | None) -> Dataset:
    from datasets import Image, Sequence

    def prompt(question: str) -> list[dict]:
        turn = [user_turn(question)]
        return with_reward_token(turn, conditioning) if conditioning else turn

    dataset = Dataset.from_list(
        [{"prompt": prompt(r["question"]), "images": [r["image_path"]], **r} for r in rows]
    )
    return dataset.cast_column("images", Sequence(Image()))


def _pie_rows(path: str, types: set[str]) -> list[dict]:
    from pipeline.pie import load_pie

    return [
        {"question": i.question, "question_type": i.question_type, "image_path": str(i.image)}
        for i in load_pie(path, types)
    ]


def _dataset_rows(data: str, images_dir: Path) -> list[dict]:
    from datasets import Image, Sequence

    dataset_dict = load_dataset_dict(data)
    split = next((s for s in SPLITS if s in dataset_dict), None)
    if split is None:
        raise DataError(
            f"{data}: has none of the splits {', '.join(SPLITS)} (it has "
            f"{', '.join(dataset_dict) or 'none'}); METHOD=grpo takes their questions"
        )
    dataset = dataset_dict[split]
    if "question_type" not in dataset.column_names:
        raise DataError(
            f"{data}: '{split}' has no question_type column, so the judge cannot pick a "
            "rubric; pass data from `make imagine` or `macaroon import`, or a PIE-layout JSONL"
        )
    dataset = dataset.cast_column("images", Sequence(Image(decode=False)))
    turns = "prompt" if "prompt" in dataset.column_names else "messages"
    rows = []
    for row in dataset.select_columns(["images", turns, "question_type"]):
        if len(row["images"]) != 1:
            raise DataError(f"{data}: a '{split}' row has {len(row['images'])} images, not one")
        rows.append({
            "question": _first_user_text(row[turns]),
            "question_type": row["question_type"],
            "image_path": str(_image_file(row["images"][0], images_dir)),
        })  # fmt: skip
    return rows


def _first_user_text(messages: list[dict]) -> str:
    for message in messages:
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return " ".join(p["text"] for p in content if p.get("type") == "text" and p["text"])
    raise DataError("a row has no user turn to take the question from")


def _image_file(image: dict, images_dir: Path) -> Path:
    """The image as a file: its own path when it has no bytes, else its bytes written once."""
    if not image.get("bytes"):
        return Path(image["path"])
    from PIL import Image

    data = image["bytes"]
    with Image.open(io.BytesIO(data)) as opened:
        suffix = SUFFIXES.get(opened.format or "")
        if suffix is None:  # a format judges are not sent (BMP, TIFF, ...): sent as PNG
            buffer, suffix = io.BytesIO(), ".png"
            opened.convert("RGB").save(buffer, "PNG")
            data = buffer.getvalue()
    path = images_dir / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    if not path.is_file():
        images_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)
    return path
