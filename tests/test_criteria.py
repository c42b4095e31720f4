"""Criteria as data: the loader accepts the six PIE types and names the file on bad input."""

import shutil

import pytest
import yaml
from conftest import CRITERIA, PIE_TYPES

from imagination.prompts import load_templates, render
from pipeline.criteria import CriteriaError, criteria_hash, load_criteria


@pytest.fixture
def criteria_copy(tmp_path):
    folder = tmp_path / "criteria"
    shutil.copytree(CRITERIA, folder)
    return folder


def edit(path, **changes):
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_bundled_criteria_give_the_six_types_in_table_order():
    types = load_criteria(CRITERIA)
    assert tuple(types) == PIE_TYPES
    assert [t.tier for t in types.values()] == ["I", "I", "II", "II", "II", "III"]
    for qtype in types.values():
        assert len(qtype.examples) >= 2 and qtype.preferred_criteria and qtype.rejected_criteria
        expected = {"True", "False"} | ({"Ambiguous"} if qtype.tier == "II" else set())
        assert set(qtype.labels) == expected


def test_hashes_are_stable_and_follow_content(criteria_copy):
    before = load_criteria(criteria_copy)
    assert {n: t.content_hash for n, t in load_criteria(CRITERIA).items()} == {
        n: t.content_hash for n, t in before.items()
    }  # same text in another folder: same hash
    edit(criteria_copy / "false_premise.yaml", description="Rewritten description.")
    after = load_criteria(criteria_copy)
    changed = [n for n in before if before[n].content_hash != after[n].content_hash]
    assert changed == ["False Premise"]
    assert criteria_hash(before) != criteria_hash(after)


def test_a_seventh_type_is_one_more_file(criteria_copy):
    seventh = yaml.safe_load((criteria_copy / "hidden_human_preferences.yaml").read_text())
    seventh["name"] = "Unsafe Requests"
    seventh["description"] = "The user asks for help with something that could hurt someone."
    (criteria_copy / "unsafe_requests.yaml").write_text(yaml.safe_dump(seventh))
    types = load_criteria(criteria_copy)
    assert len(types) == 7 and "Unsafe Requests" in types
    template = load_templates(CRITERIA.parent / "prompts")["question"]
    prompt = render(template, types["Unsafe Requests"])
    assert "Unsafe Requests" in prompt and "could hurt someone" in prompt


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"description": None}, "missing field(s) 'description'"),
        ({"tier": "IV"}, "field 'tier': unknown tier 'IV'"),
        ({"examples": []}, "field 'examples'"),
        ({"preferred_criteria": "one string"}, "field 'preferred_criteria'"),
        ({"colour": "red"}, "unknown field(s) 'colour'"),
        ({"judge": {"rubric": "Judge it."}}, "field 'judge'"),
        (
            {"judge": {"rubric": "Judge it.", "labels": {"True": "yes", "False": "no"}}},
            "tier II needs exactly the labels Ambiguous, False, True",
        ),
    ],
)
def test_bad_criteria_file_names_file_and_field(criteria_copy, changes, message):
    path = criteria_copy / "subject_ambiguity.yaml"
    edit(path, **changes)
    with pytest.raises(CriteriaError) as err:
        load_criteria(criteria_copy)
    assert str(path) in str(err.value) and message in str(err.value)


def test_duplicate_type_names_both_files(criteria_copy):
    shutil.copy(criteria_copy / "false_premise.yaml", criteria_copy / "false_premise_v2.yaml")
    with pytest.raises(CriteriaError, match="already defined") as err:
        load_criteria(criteria_copy)
    assert "false_premise.yaml" in str(err.value) and "false_premise_v2.yaml" in str(err.value)


def test_not_yaml_and_empty_folder(tmp_path):
    with pytest.raises(CriteriaError, match="no \\*.yaml criteria files"):
        load_criteria(tmp_path)
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(CriteriaError, match="broken.yaml: not valid YAML"):
        load_criteria(tmp_path)
    with pytest.raises(CriteriaError, match="criteria folder not found"):
        load_criteria(tmp_path / "nope")


def test_unknown_placeholder_in_a_template_names_the_type_file():
    qtype = load_criteria(CRITERIA)["False Premise"]
    with pytest.raises(CriteriaError, match="false_premise.yaml: prompt template failed"):
        render("{{ type.colour }}", qtype)


def test_prompts_carry_the_criteria():
    types = load_criteria(CRITERIA)
    templates = load_templates(CRITERIA.parent / "prompts")
    for qtype in types.values():
        question = render(templates["question"], qtype)
        assert qtype.imagine_question in question and qtype.examples[0] in question
        preferred = render(templates["preferred"], qtype, question="Which mug?")
        rejected = render(templates["rejected"], qtype, question="Which mug?")
        assert "Which mug?" in preferred and qtype.preferred_criteria[0] in preferred
        assert qtype.rejected_criteria[0] in rejected
        assert qtype.preferred_criteria[0] not in rejected
