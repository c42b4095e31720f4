"""Templated preference data for training tests: the answer depends only on the condition."""

from pathlib import Path

from conftest import SAMPLES

from pipeline.formats import crl_row, dpo_row, multiturn_row, provenance, sft_row, to_dataset_dict

PREFERRED = "Which one do you mean?"
REJECTED = "It is the red one."
TRAIN_QUESTIONS = [
    "What colour is the mug?",
    "How big is the dog?",
    "Is the lamp on?",
    "Which shirt is cheaper?",
    "What is on the plate?",
    "Where is the book?",
]
HELD_OUT_QUESTIONS = ["What colour is the car?", "How old is the sofa?"]


def images(names: range) -> list[Path]:
    return [SAMPLES / "images" / f"sample_{i:03d}.jpg" for i in names]


def random_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Scenes of coloured boxes: visual variety, so a model learns the text, not the image."""
    import random

    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng, paths = random.Random(seed), []
    for i in range(count):
        image = Image.new("RGB", (96, 72), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(rng.randrange(2, 7)):
            x, y = rng.randrange(80), rng.randrange(60)
            box = (x, y, x + rng.randrange(6, 40), y + rng.randrange(6, 30))
            draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        paths.append(folder / f"random_{i:03d}.png")
        image.save(paths[-1])
    return paths


def templated_rows(
    image_names=range(1, 10), questions=TRAIN_QUESTIONS, extra_images: list[Path] = ()
) -> dict[str, list]:
    meta = provenance(question_type="Subject Ambiguity", tier="II", source="test")
    rows = {"sft": [], "dpo": [], "crl": [], "multiturn": []}
    for image in [*images(image_names), *extra_images]:
        for question in questions:
            rows["sft"].append(sft_row(image, question, PREFERRED, meta))
            rows["dpo"].append(dpo_row(image, question, PREFERRED, REJECTED, meta))
            rows["crl"].append(crl_row(image, question, PREFERRED, "good", meta))
            rows["crl"].append(crl_row(image, question, REJECTED, "bad", meta))
            turns = [question, REJECTED, "Please ask me which one.", PREFERRED]
            rows["multiturn"].append(multiturn_row(image, turns, meta))
    return rows


def save_templated(folder: Path, **kwargs) -> Path:
    to_dataset_dict(templated_rows(**kwargs)).save_to_disk(str(folder))
    return folder
