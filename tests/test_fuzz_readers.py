"""Every reader of a user's file or a model's reply, fuzzed (hypothesis).

On any input each returns a value or raises the project's own error, whose message names
the file: never another traceback. The judge parser never returns a label for a reply
that names two different labels as its verdict.
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import CRITERIA, PIE_TYPES, SAMPLES
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imagination.importer import KNOWN_FILES, ImportFormatError, import_files
from pipeline.config import ConfigError, parse_config
from pipeline.criteria import CriteriaError, load_question_type
from pipeline.files import InputFileError
from pipeline.judge import parse_verdict
from pipeline.pie import PieError, load_pie
from pipeline.store import RecordStore, StoreError

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip

# JSON values, nested a little: what a hand-edited or foreign file may hold.
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)  # fmt: skip
# Lines of a JSONL file: JSON values, broken JSON and stray text.
LINE = JSON.map(json.dumps) | st.text(max_size=60) | JSON.map(lambda v: json.dumps(v)[:-1])


def lines_of(strategy) -> st.SearchStrategy[bytes]:
    return st.lists(strategy, max_size=6).map(lambda ls: "\n".join(ls).encode())


def raw_bytes() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=200)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ---- PIE JSONL ------------------------------------------------------------------------

PIE_ROW = st.fixed_dictionaries(
    {"Image ID": st.sampled_from(["sample_001", "sample_002", "nope", ""]) | st.integers(),
     "Question": st.text(max_size=30),
     "Question Type": st.sampled_from(PIE_TYPES) | st.text(max_size=20)},
    optional={"extra": JSON},
).map(json.dumps)  # fmt: skip


@FUZZ
@given(data=lines_of(PIE_ROW | LINE) | raw_bytes())
@example(
    data=b"\xef\xbb\xbf"
    + json.dumps(
        {"Image ID": "sample_001", "Question": "Why?", "Question Type": "False Premise"}
    ).encode()
)
def test_pie_reader(folder, data):
    pie = folder / "pie"
    if not pie.exists():
        pie.mkdir()
        (pie / "images").symlink_to(SAMPLES / "images")
    path = pie / "evaluation_dataset.jsonl"
    path.write_bytes(data)
    try:
        items = load_pie(path, set(PIE_TYPES))
    except (PieError, InputFileError) as err:
        assert str(path) in str(err)
    else:
        assert items and all(item.question_type in PIE_TYPES for item in items)


# ---- the original MACAROON files --------------------------------------------------------

TURN = st.fixed_dictionaries({}, optional={"from": st.sampled_from(["human", "gpt", 3]),
                                           "value": JSON})  # fmt: skip
RECORD = st.fixed_dictionaries(
    {},
    optional={"image": st.sampled_from(["images/sample_001.jpg", "missing.jpg", ""]) | JSON,
              "conversations": st.lists(TURN, max_size=3) | JSON, "id": JSON},
)  # fmt: skip


@FUZZ
@given(kind=st.sampled_from(sorted(KNOWN_FILES)),
       data=st.lists(RECORD | JSON, max_size=4).map(json.dumps).map(str.encode)
       | lines_of(RECORD.map(json.dumps) | LINE) | raw_bytes())  # fmt: skip
def test_importer(folder, kind, data):
    path = folder / "import" / kind
    if not path.parent.exists():
        shutil.copytree(SAMPLES / "images", path.parent / "images")
    path.write_bytes(data)
    try:
        dataset, summary = import_files([path])
    except ImportFormatError as err:
        assert path.name in str(err)  # each problem opens with the file's name
    else:
        assert sum(summary["rows"].values()) == sum(len(split) for split in dataset.values())


# ---- criteria YAML ------------------------------------------------------------------------

SOUND = yaml.safe_load((CRITERIA / "false_premise.yaml").read_text())
FIELD_VALUES = JSON | st.sampled_from(["I", "II", "III", "IV", 2]) | st.just(SOUND["judge"])


@FUZZ
@given(data=st.dictionaries(st.sampled_from([*SOUND, "typo"]), FIELD_VALUES, max_size=9)
       .map(lambda d: yaml.safe_dump({**SOUND, **d}).encode())
       | st.text(max_size=120).map(str.encode) | raw_bytes())  # fmt: skip
@example(data=b"name: x\ntier: 2001-13-45\n")  # a date YAML cannot build
@example(data=b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[")
def test_criteria_reader(folder, data):
    path = folder / "type.yaml"
    path.write_bytes(data)
    try:
        qtype = load_question_type(path)
    except CriteriaError as err:
        assert str(path) in str(err)
    else:
        assert qtype.tier in ("I", "II", "III") and set(qtype.labels) >= {"True", "False"}


# ---- configs --------------------------------------------------------------------------------


@settings(FUZZ, max_examples=80)  # each parse builds TRL's parser: ~70 ms
@given(data=st.dictionaries(st.sampled_from(["model", "out", "max_tokens", "temperature",
                                             "progress", "stages", "name", "adapter", "typo"]),
                            JSON, max_size=4).map(lambda d: yaml.safe_dump(d).encode())
       | st.text(max_size=80).map(str.encode) | raw_bytes())  # fmt: skip
@example(data=b"max_tokens: lots\n")
@example(data=b"model: 12\n")
@example(data=b"progress: maybe\n")
def test_config_reader(folder, data):
    from evaluation.run import EvalConfig

    path = folder / "config.yaml"
    path.write_bytes(data)
    try:
        (cfg,) = parse_config([EvalConfig], ["--config", str(path)], "macaroon eval")
    except ConfigError as err:
        assert str(path) in str(err)
    except ValueError as err:  # the config's own checks (--stages, judge options)
        assert "--" in str(err)
    else:
        assert isinstance(cfg.model, str) and isinstance(cfg.max_tokens, int)


# ---- judge replies ---------------------------------------------------------------------------

LABELS = ("True", "False", "Ambiguous")


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.none(), tier_two=st.booleans())
def test_parse_verdict_takes_anything(text, tier_two):
    labels = LABELS if tier_two else LABELS[:2]
    assert parse_verdict(text, labels) in (*labels, None)


def _dressed(label: str, style: int) -> str:
    return [label, label.lower(), f"**{label}**", f'"{label}"', f"`{label}`"][style]


VERDICT_AT = [  # verdict positions, each holding one label
    lambda label, style: f"{_dressed(label, style)}. ",
    lambda label, style: f"Verdict: {_dressed(label, style)}\n",
    lambda label, style: f"\nFlag: {_dressed(label, style)}\n",
    lambda label, style: json.dumps({"verdict": label, "explanation": "x"}),
    lambda label, style: f"Judgment = {_dressed(label, style)}.\n",
]


@settings(max_examples=200, deadline=None)
@given(pair=st.permutations(LABELS).map(lambda p: p[:2]),
       where=st.lists(st.sampled_from(range(len(VERDICT_AT))), min_size=2, max_size=2,
                      unique=True),
       styles=st.tuples(st.integers(0, 4), st.integers(0, 4)),
       filler=st.text(alphabet=st.characters(categories=["Ll", "Zs"]), max_size=40))  # fmt: skip
def test_a_reply_naming_two_labels_as_its_verdict_is_unparsed(pair, where, styles, filler):
    first, second = (VERDICT_AT[w] for w in sorted(where))
    reply = first(pair[0], styles[0]) + filler + " " + second(pair[1], styles[1])
    assert parse_verdict(reply, LABELS) is None, reply


# ---- stored records -------------------------------------------------------------------------

GOOD = json.dumps({"key": "k1", "status": "ok", "text": "fine"})
RECORD_LINE = st.fixed_dictionaries(
    {}, optional={"key": JSON | st.text(max_size=8), "status": st.sampled_from(["ok", "failed"])
                  | JSON, "text": JSON},
).map(json.dumps)  # fmt: skip


@FUZZ
@given(data=lines_of(RECORD_LINE | LINE | st.just(GOOD)).map(lambda b: b + b"\n") | raw_bytes())
@example(data=b'{"key": "k1", "status": "ok"}\n\xff\xfe\n')
@example(data=b'{"key": ["a"], "status": "ok"}\n')
@example(data=b'{"key": "k1"}\n')
def test_record_store_reader(folder, data):
    path = folder / "records.jsonl"
    path.write_bytes(data)
    try:
        store = RecordStore(path)
    except StoreError as err:
        assert str(path) in str(err)
        return
    with store:
        for key in list(store.records):
            store.is_ok(key)
        store.failed_records()
        store.append({"key": "new", "status": "ok", "text": "x"})
