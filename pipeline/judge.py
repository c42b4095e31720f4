"""The rubric judge: one prompt per (question type, question, response), a tolerant parser.

It lives in `pipeline/` because evaluation and imagination's filter both use it. Judgments
are records like any other: keyed by judge model, rubric, image, question and response.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from pipeline.backends import Request, Sampling
from pipeline.criteria import CriteriaError, QuestionType
from pipeline.runner import Item
from pipeline.store import file_hash, record_key

_ENV = SandboxedEnvironment(undefined=StrictUndefined)


def load_judge_template(path: str | Path) -> str:
    path = Path(path)
    path = path / "judge.yaml" if path.is_dir() else path
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(data, dict) or not isinstance(data.get("judge"), str):
        raise CriteriaError(f"{path}: expected a YAML mapping with a 'judge' template")
    return data["judge"]


def render_judge(template: str, qtype: QuestionType, question: str, response: str) -> str:
    try:
        return _ENV.from_string(template).render(type=qtype, question=question, response=response)
    except TemplateError as err:
        raise CriteriaError(f"judge template failed for {qtype.source}: {err}") from err


def judge_item(
    template: str,
    qtype: QuestionType,
    image: str | Path,
    question: str,
    response: str,
    judge_model: str,
    sampling: Sampling,
    fields: dict | None = None,
    structured: bool = False,
) -> Item:
    """One judge request. `structured`: constrain the reply to `verdict_format(qtype)`; only
    for backends that send it (openai), since the format is part of the key."""
    prompt = render_judge(template, qtype, question, response)
    response_format = verdict_format(qtype) if structured else None
    # The format changes what the judge may say, so it is keyed; left out when unset so the
    # keys of unstructured judgments stay what they were.
    constraint = {"response_format": response_format} if response_format else {}
    key = record_key(
        stage="judge", judge=judge_model, rubric=qtype.content_hash, image=file_hash(image),
        question=question, response=response, prompt=prompt, sampling=sampling.__dict__,
        **constraint,
    )  # fmt: skip
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    request = Request(messages, (Path(image),), sampling, response_format=response_format)
    return Item(key, request, dict(fields or {}))


def verdict_format(qtype: QuestionType) -> dict:
    """An OpenAI `response_format` (JSON schema) whose verdict can only be one of `qtype`'s
    labels: True/False for tiers I and III, True/False/Ambiguous for tier II."""
    schema = {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": list(qtype.labels)},
                       "explanation": {"type": "string"}},
        "required": ["verdict", "explanation"],
        "additionalProperties": False,
    }  # fmt: skip
    return {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "strict": True, "schema": schema},
    }


def parse_verdict(text: str | None, labels: list[str] | tuple[str, ...]) -> str | None:
    """The verdict label in a judge's reply, or None when there is none to be found.

    Accepts JSON (`{"verdict": "True"}`), `Flag:`/`Verdict:` lines, markdown emphasis,
    any case and trailing punctuation; a reply naming two different labels is unparsed.
    """
    if not text:
        return None
    by_lower = {label.lower(): label for label in labels}
    found = _from_json(text, by_lower)
    if found:
        return found
    for line in text.splitlines():
        match = re.match(r"^\W*(?:flag|verdict|label|answer|judgment)\W*[:=]\W*(\w+)", line, re.I)
        if match and match.group(1).lower() in by_lower:
            return by_lower[match.group(1).lower()]
    words = re.findall(r"[A-Za-z]+", text)
    opening = {by_lower[w.lower()] for w in words[:4] if w.lower() in by_lower}
    if words and words[0].lower() in by_lower and len(opening) == 1:  # "True. The response..."
        return by_lower[words[0].lower()]
    named = {by_lower[w.lower()] for w in words if w.lower() in by_lower}
    return named.pop() if len(named) == 1 and len(words) <= 3 else None


def _from_json(text: str, by_lower: dict[str, str]) -> str | None:
    for candidate in re.findall(r"\{.*?\}", text, re.S):
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            value = str(data.get("verdict", data.get("flag", ""))).strip().strip(".").lower()
            if value in by_lower:
                return by_lower[value]
    return None
