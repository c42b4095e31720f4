"""Stage `build`: the filtered pairs as a `DatasetDict` (sft, dpo, crl, multiturn) + card."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from imagination.prompts import render
from pipeline.criteria import QuestionType
from pipeline.formats import (
    crl_row,
    dpo_row,
    multiturn_row,
    provenance,
    sft_row,
    to_dataset_dict,
)


def dataset_rows(
    pairs: list[dict], types: dict[str, QuestionType], feedback_template: str, model_id: str
) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {"sft": [], "dpo": [], "crl": [], "multiturn": []}
    for pair in pairs:
        qtype = types[pair["question_type"]]
        meta = provenance(
            question_type=qtype.name, tier=qtype.tier, criteria_hash=qtype.content_hash,
            model=model_id, key=pair["key"], source="imagined",
        )  # fmt: skip
        image, question = pair["image"], pair["question"]
        preferred, rejected = pair["preferred"], pair["rejected"]
        rows["sft"].append(sft_row(image, question, preferred, meta))
        rows["dpo"].append(dpo_row(image, question, preferred, rejected, meta))
        rows["crl"].append(crl_row(image, question, preferred, "good", meta))
        rows["crl"].append(crl_row(image, question, rejected, "bad", meta))
        feedback = render(feedback_template, qtype, question=question)
        rows["multiturn"].append(
            multiturn_row(image, [question, rejected, feedback, preferred], meta)
        )
    return rows


def write_dataset(rows: dict[str, list[dict]], out: Path, card: dict) -> Path:
    """Save the DatasetDict (images embedded) with a dataset card; returns its folder.

    Written beside the old one and swapped in whole: a build that fails on the way leaves
    the previous dataset as it was."""
    dataset = to_dataset_dict(rows)
    folder, partial, old = out / "dataset", out / "dataset.partial", out / "dataset.old"
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    dataset.save_to_disk(str(partial))
    (partial / "README.md").write_text(dataset_card(rows, card), encoding="utf-8")
    (partial / "card.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    if folder.exists():
        os.replace(folder, old)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def dataset_card(rows: dict[str, list[dict]], card: dict) -> str:
    types = Counter(r["question_type"] for r in rows["dpo"])
    lines = [
        "# MACAROON contrastive preference data",
        "",
        "Made by self-imagination: the model imagined questions for each question type and a",
        "preferred (engaged) and a rejected (passive) response to each, from the criteria.",
        "",
        f"- model: `{card['model']}` (backend `{card['backend']}`)",
        f"- criteria hash: `{card['criteria_hash']}` ({card['criteria_dir']})",
        f"- images: {card['images']}",
        "",
        "| config | rows |",
        "|---|---|",
        *[f"| {name} | {len(items)} |" for name, items in rows.items()],
        "",
        "| question type | pairs |",
        "|---|---|",
        *[f"| {name} | {types.get(name, 0)} |" for name in card["types"]],
        "",
        "| stage | items | generated | cached | failed |",
        "|---|---|---|---|---|",
        *[
            f"| {s['name']} | {s['total']} | {s['generated']} | {s['cached']} | "
            f"{s['failed'] + s['skipped_failed']} |"
            for s in card["stages"]
        ],
        "",
        "Pairs dropped by the filter: "
        + (", ".join(f"{k} {v}" for k, v in card["dropped"].items()) or "none"),
        "",
        *removed_lines(card),
        "",
    ]
    return "\n".join(lines)


def removed_lines(card: dict) -> list[str]:
    """How many pairs the rule filters, the judge filter and the review each removed (the
    first filter to drop a pair counts it), and what the review could not apply."""
    removed = card.get("removed_by") or {}
    judge = f"{removed.get('judge', 0)}" if card.get("judge_filter") else "not run"
    review = card.get("review")
    lines = [
        "| filter | pairs removed |",
        "|---|---|",
        f"| rules | {removed.get('rules', 0)} |",
        f"| judge (`--judge_filter`) | {judge} |",
        f"| review (`--review`) | {removed.get('review', 0) if review else 'no review'} |",
    ]
    if review:
        lines += [
            "",
            f"Review `{review['file']}`: {review['applied']} marks applied ({review['drop']} "
            f"drop, {review['keep']} keep; {review['restored']} kept against the judge, "
            f"{review['keep_on_rule_dropped']} keep on pairs the rules drop, not applied).",
        ]
        if review["stale"]:
            lines.append(
                f"{review['stale']} marks not applied: their pair no longer exists (its "
                "records changed), e.g. " + "; ".join(review["stale_examples"]) + "."
            )
    return lines
