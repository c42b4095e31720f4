"""Write the bundled few-row files in published formats, with small copies of the bundled
drawn images. Rerun to regenerate them byte for byte: `python scripts/make_samples.py`.

- datasets/samples/general/TASK/test.parquet: each default `make eval-general` task in the
  format of its published Hub dataset (the columns and feature types lmms-eval's task reads);
- datasets/samples/benchmarks/: MM-UPD (TSV, base64 images) and VizWiz-VQA (annotation JSON
  and an image folder), for `macaroon eval --benchmark NAME` (evaluation/benchmarks/).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from PIL import Image

import datasets

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "datasets" / "samples" / "images"
OUT = ROOT / "datasets" / "samples" / "general"


def image(name: str) -> dict:
    """A 160x120 JPEG of a bundled sample image, as the Image feature stores it."""
    with Image.open(IMAGES / name) as original:
        small = original.convert("RGB").resize((160, 120))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=70)
    return {"bytes": buffer.getvalue(), "path": None}


# lmms-lab/POPE (config default, split test): the columns of the published parquet files.
POPE = datasets.Features({
    "id": datasets.Value("string"), "question_id": datasets.Value("string"),
    "question": datasets.Value("string"), "answer": datasets.Value("string"),
    "image_source": datasets.Value("string"), "image": datasets.Image(),
    "category": datasets.Value("string"),
})  # fmt: skip
POPE_ROWS = [
    ("sample_001.jpg", "Is there a mug in the image?", "yes", "adversarial"),
    ("sample_001.jpg", "Is there a dog in the image?", "no", "adversarial"),
    ("sample_002.jpg", "Is there a dog in the image?", "yes", "popular"),
    ("sample_002.jpg", "Is there a laptop in the image?", "no", "random"),
]

# lmms-lab/MME (split test): each image is asked twice, a yes and a no question, under one
# question_id (MME scores pairs: accuracy and accuracy+).
MME = datasets.Features({
    "question_id": datasets.Value("string"), "image": datasets.Image(),
    "question": datasets.Value("string"), "answer": datasets.Value("string"),
    "category": datasets.Value("string"),
})  # fmt: skip
MME_ROWS = [
    ("sample_001.jpg", "existence/sample_001.jpg", "Are there mugs in this image?", "Yes"),
    ("sample_001.jpg", "existence/sample_001.jpg", "Are there cars in this image?", "No"),
    ("sample_003.jpg", "count/sample_003.jpg", "Are there four cars in this image?", "Yes"),
    ("sample_003.jpg", "count/sample_003.jpg", "Are there two cars in this image?", "No"),
]

# lmms-lab/ScienceQA (config ScienceQA-IMG, split test).
SQA = datasets.Features({
    "image": datasets.Image(), "question": datasets.Value("string"),
    "choices": datasets.Sequence(datasets.Value("string")), "answer": datasets.Value("int8"),
    "hint": datasets.Value("string"), "task": datasets.Value("string"),
    "grade": datasets.Value("string"), "subject": datasets.Value("string"),
    "topic": datasets.Value("string"), "category": datasets.Value("string"),
    "skill": datasets.Value("string"), "lecture": datasets.Value("string"),
    "solution": datasets.Value("string"),
})  # fmt: skip
SQA_ROWS = [
    (
        "sample_001.jpg",
        "How many mugs are on the table?",
        ["two", "three", "five"],
        1,
        "The picture shows a table.",
        "counting",
    ),
    (
        "sample_002.jpg",
        "Which animals are in the park?",
        ["cats", "horses", "dogs"],
        2,
        "",
        "identification",
    ),
    ("sample_004.jpg", "What is in the bowl?", ["fruit", "soup"], 0, "", "identification"),
]


def pope() -> datasets.Dataset:
    rows = [{"id": str(n), "question_id": str(n), "question": q, "answer": a,
             "image_source": name.removesuffix(".jpg"), "image": image(name), "category": c}
            for n, (name, q, a, c) in enumerate(POPE_ROWS, start=1)]  # fmt: skip
    return datasets.Dataset.from_list(rows, features=POPE)


def mme() -> datasets.Dataset:
    rows = [{"question_id": qid, "image": image(name),
             "question": f"{q} Please answer yes or no.", "answer": a,
             "category": qid.split("/")[0]}
            for name, qid, q, a in MME_ROWS]  # fmt: skip
    return datasets.Dataset.from_list(rows, features=MME)


def scienceqa() -> datasets.Dataset:
    rows = [{"image": image(name), "question": q, "choices": choices, "answer": answer,
             "hint": hint, "task": "closed choice", "grade": "grade2",
             "subject": "natural science", "topic": "drawn scenes", "category": skill,
             "skill": skill, "lecture": "", "solution": f"The answer is {choices[answer]}."}
            for name, q, choices, answer, hint, skill in SQA_ROWS]  # fmt: skip
    return datasets.Dataset.from_list(rows, features=SQA)


# MM-UPD (AAD, base setting): two questions, each as a standard row and its upd twin, in
# which the correct option is removed (masked_answer).
MMUPD_COLUMNS = (
    *("index", "question", "hint", "A", "B", "C", "D", "E", "answer", "category", "image"),
    *("source", "l2-category", "comment", "split", "type", "masked_answer"),
)
MMUPD_ROWS = [
    (
        "0",
        "sample_001.jpg",
        "What is on the table?",
        ["mugs", "shoes", "books", "plants"],
        "A",
        "object_localization",
    ),
    (
        "1",
        "sample_002.jpg",
        "Which animals play in the park?",
        ["cats", "dogs", "birds"],
        "B",
        "attribute_recognition",
    ),
]

# VizWiz-VQA (val): two answerable questions and two unanswerable ones.
VIZWIZ_ROWS = [
    (
        "VizWiz_val_00000000",
        "sample_001.jpg",
        "What is this?",
        1,
        "other",
        ["mugs"] * 7 + ["cups"] * 3,
    ),
    ("VizWiz_val_00000001", "sample_003.jpg", "How many cars are there?", 1, "number", ["4"] * 10),
    (
        "VizWiz_val_00000002",
        "sample_005.jpg",
        "What is the expiry date on this can?",
        0,
        "unanswerable",
        ["unanswerable"] * 10,
    ),
    (
        "VizWiz_val_00000003",
        "sample_010.jpg",
        "What does the back of this box say?",
        0,
        "unanswerable",
        ["unanswerable"] * 8 + ["unsuitable"] * 2,
    ),
]


def mmupd(path: Path) -> None:
    rows = []
    for index, name, question, options, answer, category in MMUPD_ROWS:
        encoded = base64.b64encode(image(name)["bytes"]).decode()
        cells = dict.fromkeys(MMUPD_COLUMNS, "")
        cells.update(index=index, question=question, hint="nan", answer=answer,
                     category=category, image=encoded, source="macaroon-samples",
                     split="dev")  # fmt: skip
        standard = {**cells, **dict(zip("ABCDE", options, strict=False)), "type": "standard"}
        kept = [o for letter, o in zip("ABCDE", options, strict=False) if letter != answer]
        upd = {**cells, **dict(zip("ABCDE", kept, strict=False)), "type": "upd",
               "masked_answer": options["ABCDE".index(answer)]}  # fmt: skip
        rows += [standard, upd]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, MMUPD_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def vizwiz(path: Path) -> None:
    folder = path.parent / path.stem
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, source, question, answerable, answer_type, answers in VIZWIZ_ROWS:
        (folder / f"{name}.jpg").write_bytes(image(source)["bytes"])
        rows.append({"image": f"{name}.jpg", "question": question,
                     "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
                     "answer_type": answer_type, "answerable": answerable})  # fmt: skip
    path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    for task, build in (("pope", pope), ("mme", mme), ("scienceqa_img", scienceqa)):
        path = OUT / task / "test.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        build().to_parquet(path)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")
    benchmarks = ROOT / "datasets" / "samples" / "benchmarks"
    mmupd(benchmarks / "mmupd" / "mmaad_sample_base.tsv")
    vizwiz(benchmarks / "vizwiz" / "val.json")
    print(f"{benchmarks.relative_to(ROOT)}: MM-UPD and VizWiz samples")


if __name__ == "__main__":
    main()
