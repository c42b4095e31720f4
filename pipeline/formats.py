"""The TRL-ready dataset layouts that `build` and `import` both write.

One `DatasetDict`, one entry per training format (docs/DESIGN.md §2):

- `sft`: images, messages (user question, preferred answer)
- `dpo`: images, prompt, chosen, rejected
- `crl`: images, prompt, completion, reward (`good` or `bad`): one row per response
- `multiturn`: images, messages (question, rejected answer, feedback, preferred answer)

Messages use TRL's conversational vision layout: `{"role", "content": [{"type": "image"},
{"type": "text", "text": ...}]}`; the image itself sits in the `images` column. Every row
also carries provenance: question_type, tier, criteria_hash, model, key, source.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

REWARDS = ("good", "bad")  # the paper's reward tokens: good -> preferred, bad -> rejected
CONFIGS = ("sft", "dpo", "crl", "multiturn")
PROVENANCE = ("question_type", "tier", "criteria_hash", "model", "key", "source")


def user_turn(text: str, with_image: bool = True) -> dict:
    content = ([{"type": "image", "text": None}] if with_image else []) + [
        {"type": "text", "text": text}
    ]
    return {"role": "user", "content": content}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def provenance(**values: str | None) -> dict:
    unknown = set(values) - set(PROVENANCE)
    if unknown:
        raise ValueError(f"unknown provenance field(s): {sorted(unknown)}")
    return {name: values.get(name) or "" for name in PROVENANCE}


def sft_row(image: str | Path, question: str, answer: str, meta: dict) -> dict:
    return {
        "images": [str(image)],
        "messages": [user_turn(question), assistant_turn(answer)],
        **meta,
    }


def dpo_row(image: str | Path, question: str, chosen: str, rejected: str, meta: dict) -> dict:
    return {
        "images": [str(image)],
        "prompt": [user_turn(question)],
        "chosen": [assistant_turn(chosen)],
        "rejected": [assistant_turn(rejected)],
        **meta,
    }


def crl_row(image: str | Path, question: str, answer: str, reward: str, meta: dict) -> dict:
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    return {
        "images": [str(image)],
        "prompt": [user_turn(question)],
        "completion": [assistant_turn(answer)],
        "reward": reward,
        **meta,
    }


def multiturn_row(image: str | Path, turns: list[str], meta: dict) -> dict:
    """`turns` alternate user, assistant, user, ...; the image goes with the first user turn."""
    if len(turns) < 2 or len(turns) % 2:
        raise ValueError(f"a conversation needs user/assistant pairs, got {len(turns)} turns")
    messages = [
        user_turn(text, with_image=i == 0) if i % 2 == 0 else assistant_turn(text)
        for i, text in enumerate(turns)
    ]
    return {"images": [str(image)], "messages": messages, **meta}


def to_dataset_dict(rows: dict[str, Iterable[dict]]):
    """Rows per config -> `DatasetDict` with `images` decoded as `Image` features.

    Images are stored as paths until here and embedded by `save_to_disk`, so the saved
    dataset does not depend on the image folder.
    """
    import datasets
    from datasets import Dataset, DatasetDict, Image, Sequence

    datasets.disable_progress_bars()  # our stages show their own progress
    out = {}
    for name, items in rows.items():
        items = list(items)
        if not items:
            continue
        dataset = Dataset.from_list(items)
        out[name] = dataset.cast_column("images", Sequence(Image()))
    return DatasetDict(out)
