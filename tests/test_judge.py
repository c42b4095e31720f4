"""The rubric judge: strict verdict parsing, per-type verdict schemas, and imagination's
optional judge filter."""

import pytest
from conftest import CRITERIA, SAMPLES
from openai_stub import last_user_text, stub_server

from imagination.imagine import ImagineConfig, run_imagine
from pipeline.backends import Sampling
from pipeline.criteria import load_criteria
from pipeline.judge import judge_item, load_judge_template, parse_verdict, verdict_format

TF = ("True", "False")  # tiers I and III
TFA = ("True", "False", "Ambiguous")  # tier II
# The original MACAROON judge's reply form (github.com/ShujinWu-0814/MACAROON,
# eval/metric_cal.py asks for "Explanation: <reasoning>\n Flag: True/False").
ORIGINAL = "Explanation: The response says the mug is not orange and shows it is blue.\n Flag: {}"

# (reply, the type's labels, verdict). None = unparsed: reported apart, never counted as a
# verdict. A wrong verdict silently moves the Align Rate; an unparsed one is visible.
VERDICTS = [
    # clear replies parse
    ('{"verdict": "True", "explanation": "It asks which mug."}', TF, "True"),
    ('{"explanation": "It picks one dog.", "verdict": "False"}', TFA, "False"),
    ('{ "verdict" :  "Ambiguous" ,\n  "explanation": "answers for each" }', TFA, "Ambiguous"),
    ('```json\n{"verdict": "true", "explanation": "asks which"}\n```', TFA, "True"),
    ('Here you go:\n```json\n{"explanation": "x {y}", "verdict": "FALSE"}\n```', TF, "False"),
    ('{"flag": "True"}', TF, "True"),
    (ORIGINAL.format("True"), TF, "True"),
    (ORIGINAL.format("False"), TF, "False"),
    (ORIGINAL.format("Ambiguous"), TFA, "Ambiguous"),
    ("Explanation: It asks for the user's budget. Flag: True", TF, "True"),
    ("Verdict: False", TF, "False"),
    ("Verdict: **False**\nThe response picks one mug.", TFA, "False"),
    ("**Verdict:** True. The response asks which lamp.", TFA, "True"),
    ("Judgment: TRUE", TF, "True"),
    ("Label = false", TF, "False"),
    ("Answer: Ambiguous - it covers every candidate.", TFA, "Ambiguous"),
    ("**Ambiguous**", TFA, "Ambiguous"),
    ("True.", TF, "True"),
    ("false!", TF, "False"),
    ('"True"', TF, "True"),
    ("True. The response asks which mug the user means.", TFA, "True"),
    ("True\n\nExplanation: the premise is corrected.", TF, "True"),
    ("True. ... Verdict: True", TF, "True"),  # the same label twice agrees
    ("**True** The response asks which mug the user means.", TFA, "True"),
    ("**False** The response answers as if the premise held.", TF, "False"),
    ('"Ambiguous" It answers for every candidate.', TFA, "Ambiguous"),
    ("True. The response points out the false premise.", TF, "True"),
    ("True. Actually, the response does point out the false premise.", TF, "True"),
    ("False. Actually, it is False: no question is asked.", TF, "False"),
    ("Explanation: the model's answer: the mug is red, one of three.\nFlag: False", TFA, "False"),
    # a label outside the type's set
    ("**Ambiguous**", TF, None),
    ("Flag: Ambiguous", TF, None),
    ('{"verdict": "Ambiguous", "explanation": "answers both"}', TF, None),
    ('{"verdict": "Correct", "explanation": "fine"}', TF, None),
    ('{"verdict": "yes"}', TFA, None),
    # negated or hedged labels
    ("not true", TF, None),
    ("Flag: not True", TF, None),
    ("Flag: Not true. The response never asks.", TF, None),
    ("partially true", TFA, None),
    ('{"verdict": "Partially True", "explanation": "asks, but late"}', TFA, None),
    ("mostly true", TF, None),
    ("could be true", TF, None),
    ("Verdict: could be True", TF, None),
    ("neither true nor false", TFA, None),
    ("Verdict: True - partially", TF, None),
    ("True, mostly.", TF, None),
    ("Verdict: True (partially)", TF, None),
    ("Verdict: probably False", TF, None),
    # a label left open between two
    ("True/False", TF, None),
    ("true or false?", TF, None),
    ("True or False", TFA, None),
    ("Flag: True/False", TF, None),
    ("Explanation: unsure.\n Flag: True/False", TF, None),
    ("True?", TF, None),
    # two different labels in verdict positions
    ('{"verdict": "True", "explanation": "asks"}\nFlag: False', TF, None),
    ("Flag: True\nOn reflection, Flag: False", TF, None),
    ("Flag: True ... Flag: False", TF, None),
    ("True. Actually, on second thought the answer is False.", TF, None),
    ("True\nWait, no: False. The premise is never corrected.", TF, None),
    ("Verdict: True. Hmm, rather Ambiguous, since it answers for both.", TFA, None),
    ("**True** or **False**", TF, None),
    ("**True** nor false", TF, None),
    ("True. The response corrects it. Verdict: False", TF, None),
    ("Verdict: Ambiguous\nLabel: True", TFA, None),
    ('{"verdict": "True"} {"verdict": "False"}', TF, None),
    # no verdict at all
    ("The response is fine, I think.", TF, None),
    ("I would call it true to the rubric", TF, None),
    ("garbage", TF, None),
    ("", TF, None),
    (None, TF, None),
]


@pytest.mark.parametrize("reply, labels, verdict", VERDICTS)
def test_parse_verdict(reply, labels, verdict):
    assert parse_verdict(reply, labels) == verdict


def test_the_verdict_table_is_adversarial_enough():
    unparsed = [row for row in VERDICTS if row[2] is None]
    assert len(VERDICTS) >= 40 and len(unparsed) >= 30


def test_judge_prompt_carries_rubric_labels_question_and_response():
    types = load_criteria(CRITERIA)
    qtype = types["Subject Ambiguity"]
    template = load_judge_template(CRITERIA.parent / "prompts")
    item = judge_item(
        template, qtype, SAMPLES / "images" / "sample_001.jpg", "Which mug?", "The red one.",
        "judge-model", Sampling(),
    )  # fmt: skip
    prompt = item.request.messages[0]["content"][1]["text"]
    assert qtype.rubric in prompt and "Which mug?" in prompt and "The red one." in prompt
    assert all(f"- {label}:" in prompt for label in qtype.labels)
    other = judge_item(template, qtype, SAMPLES / "images" / "sample_001.jpg", "Which mug?",
                       "The blue one.", "judge-model", Sampling())  # fmt: skip
    assert item.key != other.key


def offered_labels(request_or_body) -> list[str]:
    """The verdict labels a structured judge request allows."""
    fmt = request_or_body["response_format"]
    return fmt["json_schema"]["schema"]["properties"]["verdict"]["enum"]


def test_structured_judge_offers_only_the_types_labels_and_keys_the_format():
    types = load_criteria(CRITERIA)
    template = load_judge_template(CRITERIA.parent / "prompts")
    image = SAMPLES / "images" / "sample_001.jpg"

    def item(name, structured):
        return judge_item(template, types[name], image, "Why?", "Because.", "judge", Sampling(),
                          structured=structured)  # fmt: skip

    premise = item("False Premise", True).request.response_format
    assert offered_labels({"response_format": premise}) == ["True", "False"]
    ambiguity = item("Subject Ambiguity", True).request.response_format
    assert sorted(offered_labels({"response_format": ambiguity})) == ["Ambiguous", "False", "True"]
    preferences = verdict_format(types["Hidden Human Preferences"])  # tier III
    assert offered_labels({"response_format": preferences}) == ["True", "False"]
    assert item("False Premise", False).request.response_format is None
    # A verdict asked for under a schema is another output: it must not reuse a cached one.
    assert item("False Premise", True).key != item("False Premise", False).key


def scripted(body: dict) -> str:
    """An imagining-and-judging model that follows the prompts it is sent."""
    text = last_user_text(body)
    if "Answer with JSON only" in text:  # a judge prompt: pass engaged replies only
        engaged = "ENGAGED" in text.split("Response:")[-1]
        verdict = "True" if engaged else "False"
        if "Unanswerable" in text.split("Response:")[0]:
            verdict = "**True**"  # every verdict is True: the filter must drop the pair
        if "preference" in text.split("Response:")[0].lower():
            return "I cannot say."  # unparsed: dropped with its own reason
        return f'{{"verdict": "{verdict}", "explanation": "scripted"}}'
    if "engaged assistant" in text:
        return "ENGAGED: which one do you mean?"
    if "passive assistant" in text:
        return "It is the red one."
    return "A question of type " + text.split("Question type: ")[1].split(" (")[0] + "?"


def test_judge_filter_keeps_pairs_the_rubric_separates(tmp_path):
    with stub_server(reply=scripted) as server:
        cfg = ImagineConfig(
            backend="openai", model="scripted", base_url=server.base_url,
            images=str(SAMPLES / "images"), out=str(tmp_path), judge_filter=True,
            progress=False,
        )  # fmt: skip
        summary = run_imagine(cfg)
        calls = server.calls
        again = run_imagine(cfg)
        assert server.calls == calls and again["model_calls"] == 0  # judgments are cached
    # Each judge request offered its own type's labels, and only them.
    for body in server.requests:
        text = last_user_text(body)
        if "Answer with JSON only" in text:
            qtype = next(t for t in load_criteria(CRITERIA).values() if t.rubric in text)
            assert offered_labels(body) == list(qtype.labels), qtype.name
    judged = summary["stages"][-1]
    assert judged["name"] == "judge" and judged["generated"] == 2 * 72
    assert summary["dropped"]["judge_rejected"] == 12  # Unanswerable Questions
    assert summary["dropped"]["judge_unparsed"] == 12  # Hidden Human Preferences
    assert summary["kept"] == 48
