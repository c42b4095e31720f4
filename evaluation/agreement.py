"""Judge agreement: two judges' verdicts, or a judge's and human labels, per question type.

Sources: a run folder (its `items.jsonl`) or a CSV with columns `Image ID`, `Question` and
`label` (True / False / Ambiguous). Items either side could not judge are left out and
counted.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

from evaluation.metrics import FAILED, UNPARSED


def load_verdicts(source: str | Path) -> dict[tuple[str, str], dict]:
    """(Image ID, Question) -> {"verdict", "question_type"}."""
    source = Path(source)
    if source.is_dir():
        path = source / "items.jsonl"
        if not path.is_file():
            raise ValueError(f"{source}: no items.jsonl; run `macaroon eval` (report stage) there")
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        return {(r["image_id"], r["question"]): r for r in rows}
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"Image ID", "Question", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{source}: missing column(s) {', '.join(sorted(missing))}")
        return {
            (row["Image ID"], row["Question"]): {
                "verdict": row["label"].strip().capitalize(),
                "question_type": row.get("Question Type", ""),
            }
            for row in reader
        }


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    left, right = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(left[label] * right[label] for label in left) / (n * n)
    if expected == 1:
        return 1.0 if observed == 1 else None  # one label everywhere: kappa is undefined
    return (observed - expected) / (1 - expected)


def agreement(ours: dict, theirs: dict) -> dict:
    """Per type (from our side): items compared, raw agreement, Cohen's kappa, left out."""
    by_type: dict[str, list[tuple[str, str]]] = defaultdict(list)
    left_out: Counter = Counter()
    for key, mine in ours.items():
        other = theirs.get(key)
        qtype = mine["question_type"]
        if other is None or {mine["verdict"], other["verdict"]} & {UNPARSED, FAILED}:
            left_out[qtype] += 1
            continue
        by_type[qtype].append((mine["verdict"], other["verdict"]))
    result = {}
    for qtype in sorted(set(by_type) | set(left_out)):
        pairs = by_type.get(qtype, [])
        result[qtype] = {
            "n": len(pairs),
            "agreement": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
            "kappa": cohen_kappa(pairs),
            "left_out": left_out[qtype],
        }
    return result


def agreement_table(result: dict) -> str:
    lines = [
        "| question type | n | agreement | Cohen's kappa | left out |",
        "|---|---|---|---|---|",
    ]
    for qtype, r in result.items():
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(
            f"| {qtype} | {r['n']} | {fmt(r['agreement'])} | {fmt(r['kappa'])} | {r['left_out']} |"
        )
    return "\n".join(lines) + "\n"
