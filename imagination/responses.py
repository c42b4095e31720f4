"""Stage `responses`: a preferred and a rejected response per question, from the criteria."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imagination.prompts import chat, render
from pipeline.backends import Request, Sampling
from pipeline.criteria import QuestionType
from pipeline.runner import Item
from pipeline.store import record_key

KINDS = ("preferred", "rejected")


def response_items(
    questions: Sequence[dict],
    types: dict[str, QuestionType],
    templates: dict[str, str],
    model: dict,  # what identifies the model (pipeline.backends.backend_identity)
    sampling: Sampling,
) -> list[Item]:
    """Two items per question record (which carries image, question_type and question)."""
    items = []
    for question in questions:
        qtype = types[question["question_type"]]
        for kind in KINDS:
            prompt = render(templates[kind], qtype, question=question["question"])
            key = record_key(
                stage="responses", kind=kind, image=question["image_hash"], type=qtype.name,
                prompt=prompt, model=model, sampling=sampling.__dict__,
            )  # fmt: skip
            fields = {
                "kind": kind,
                "question_key": question["key"],
                **{k: question[k] for k in ("image", "image_hash", "question_type", "tier")},
                "criteria_hash": qtype.content_hash,
                "question": question["question"],
            }
            items.append(
                Item(key, Request(chat(prompt), (Path(question["image"]),), sampling), fields)
            )
    return items
