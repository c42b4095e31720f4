"""VizWiz-VQA: questions from blind people, many of them unanswerable from the photo taken,
in its published annotation format.

Source: Gurari et al., "VizWiz Grand Challenge: Answering Visual Questions from Blind People",
CVPR 2018 (arXiv 1802.08218); dataset page https://vizwiz.org/tasks-and-datasets/vqa/
(Annotations/{train,val}.json, images in {train,val}/).

Format: a JSON list, one object per question: `image` (file name, e.g.
VizWiz_val_00000000.jpg), `question`, `answers` (ten `{"answer", "answer_confidence"}`),
`answer_type` (`yes/no`, `number`, `other` or `unanswerable`) and `answerable` (0 or 1).
Images are in a folder named after the file (val.json -> val/) or in the file's folder.

Our types: unanswerable questions (`answerable` 0) are `Unanswerable Questions`; answerable
ones are controls. The question is posed as asked, with no instruction to say
"unanswerable": what the model does unprompted is what engagement measures.

Scoring: VizWiz's own VQA accuracy for every item (an answer scores min(1, matches / 3)
against the ten human answers, averaged over the ten leave-one-out subsets, after the VQA
answer normalization: lower case, punctuation, articles and number words), reported over all,
answerable and unanswerable items; and, for unanswerable items, our judge's Align Rate (in
metrics.json's types). VizWiz's answerability task scores a confidence with average
precision; a text answer has none, so it is not reported.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from evaluation.benchmarks import BenchmarkItem, answer_key
from pipeline import DEFAULT_SAMPLES_DIR

NAME = "vizwiz"
CITATION = (
    "Gurari et al., VizWiz Grand Challenge: Answering Visual Questions from Blind People, "
    "CVPR 2018 (arXiv 1802.08218); https://vizwiz.org/tasks-and-datasets/vqa/"
)
TYPES = {"unanswerable": "Unanswerable Questions"}
DEFAULT_DATA = DEFAULT_SAMPLES_DIR / "benchmarks" / "vizwiz" / "val.json"
KEYS = ("image", "question", "answers", "answerable")


def load(path: str | Path, workdir: str | Path | None = None) -> list[BenchmarkItem]:
    """Every question of a VizWiz annotation file, each image found and checked."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--data {path}: not a VizWiz annotation file ({err})") from err
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"--data {path}: expected a JSON list of questions with {KEYS}")
    folders = [path.parent / path.stem, path.parent]
    items, errors = [], []
    for number, row in enumerate(rows, start=1):
        missing = [k for k in KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            errors.append(f"  question {number}: missing {', '.join(missing)}")
            continue
        image = next((f / row["image"] for f in folders if (f / row["image"]).is_file()), None)
        if image is None:
            errors.append(f"  question {number}: image {row['image']} not in "
                          f"{' or '.join(map(str, folders))}")  # fmt: skip
            continue
        answers = [a["answer"] for a in row["answers"] if isinstance(a, dict) and "answer" in a]
        gold = {"answers": answers, "answerable": int(row["answerable"]),
                "answer_type": row.get("answer_type")}  # fmt: skip
        qtype = None if gold["answerable"] else TYPES["unanswerable"]
        items.append(BenchmarkItem(number, Path(row["image"]).stem, row["question"], qtype,
                                   image, gold))  # fmt: skip
    if errors:
        raise ValueError(f"{path}: {len(errors)} bad question(s):\n" + "\n".join(errors))
    return items


_ARTICLES = {"a", "an", "the"}
_NUMBERS = {w: str(n) for n, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}  # fmt: skip


def normalize(answer: str) -> str:
    """The VQA evaluation's answer normalization (lower case, punctuation, articles,
    number words)."""
    text = re.sub(r"(?<=\d),(?=\d)", "", answer.lower().strip())
    text = re.sub(r"[^\w\s']", " ", text).replace("'", "")
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(answer: str, humans: list[str]) -> float:
    """min(1, matches / 3), averaged over the leave-one-out subsets of the human answers."""
    if not humans:
        return 0.0
    mine, theirs = normalize(answer), [normalize(h) for h in humans]
    scores = []
    for left_out in range(len(theirs)):
        others = theirs[:left_out] + theirs[left_out + 1 :]
        scores.append(min(1.0, sum(h == mine for h in others) / 3))
    return sum(scores) / len(scores)


def score(items: list[BenchmarkItem], answers: dict[str, str | None],
          verdicts: dict[str, str]) -> dict:  # fmt: skip
    groups: dict[str, list[float]] = {"all": [], "answerable": [], "unanswerable": []}
    for item in items:
        answer = answers.get(answer_key(item))
        if answer is None:
            continue
        accuracy = vqa_accuracy(answer, item.gold["answers"])
        groups["all"].append(accuracy)
        groups["answerable" if item.gold["answerable"] else "unanswerable"].append(accuracy)
    return {
        "name": NAME,
        "citation": CITATION,
        **{f"vqa_accuracy_{k}": (sum(v) / len(v) if v else None) for k, v in groups.items()},
        "answered": len(groups["all"]),
    }
