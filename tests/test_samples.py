"""The bundled samples validate, cover every type, and stay small."""

import json
from collections import Counter

import pytest
from conftest import PIE_TYPES, SAMPLES

from pipeline.images import list_images, open_image
from pipeline.pie import PieError, load_pie


def test_samples_are_under_one_megabyte():
    assert sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file()) < 1_000_000


def test_a_dozen_images_that_open():
    images = list_images(SAMPLES / "images")
    assert len(images) >= 12
    for path in images:
        assert min(open_image(path).size) >= 32


def test_pie_sample_validates_and_covers_all_six_types():
    items = load_pie(SAMPLES / "evaluation_dataset.jsonl", set(PIE_TYPES))
    counts = Counter(item.question_type for item in items)
    assert set(counts) == set(PIE_TYPES) and min(counts.values()) >= 2


def test_general_preference_sample_has_the_original_layout():
    records = json.loads((SAMPLES / "VLfeedback_dataset.json").read_text())
    assert len(records) >= 4
    for record in records:
        assert {"id", "image", "conversations"} <= set(record)
        question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        assert isinstance(question, str) and question.strip()
        assert set(answer) == {"preferred", "rejected"}
        assert answer["preferred"] != answer["rejected"]
        assert (SAMPLES / record["image"]).is_file()


@pytest.fixture
def pie_copy(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("sample_001", "sample_002"):
        (tmp_path / "images" / f"{name}.jpg").write_bytes(
            (SAMPLES / "images" / f"{name}.jpg").read_bytes()
        )
    return tmp_path


def row(image="sample_001", question="Why is the mug empty?", qtype="False Premise"):
    return json.dumps({"Image ID": image, "Question": question, "Question Type": qtype})


def test_bad_pie_rows_are_all_listed_with_line_numbers(pie_copy):
    lines = [
        row(),
        "{not json",
        row(qtype="Sarcasm"),
        row(image="sample_404"),
        row(),
        json.dumps({"Image ID": "sample_002", "Question": "Which dog?"}),
        row(image="sample_002", question="Which dog?", qtype="Subject Ambiguity"),
    ]
    path = pie_copy / "evaluation_dataset.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PieError) as err:
        load_pie(pie_copy, set(PIE_TYPES))
    message = str(err.value)
    assert str(path) in message and "5 bad row(s)" in message
    assert "line 2: not valid JSON" in message
    assert "line 3: unknown Question Type 'Sarcasm'" in message
    assert "line 4: image" in message and "sample_404.jpg not found" in message
    assert "line 5: duplicate of line 1" in message
    assert "line 6: missing or empty 'Question Type'" in message


def test_the_other_released_file_name_is_found(pie_copy):
    (pie_copy / "evaluation_data.jsonl").write_text(row() + "\n")
    assert [item.image_id for item in load_pie(pie_copy, set(PIE_TYPES))] == ["sample_001"]


def test_a_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="bad.jpg: cannot read image"):
        open_image(bad)
