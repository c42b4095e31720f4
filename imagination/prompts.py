"""Render the imagination prompts from the criteria and the prompt templates (both YAML)."""

from __future__ import annotations

from pathlib import Path

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from pipeline.criteria import CriteriaError, QuestionType

TEMPLATE_KEYS = ("question", "preferred", "rejected", "feedback")


def load_templates(path: str | Path) -> dict[str, str]:
    """The imagination templates: one Jinja2 text per use (TEMPLATE_KEYS)."""
    path = Path(path)
    if path.is_dir():
        path = path / "imagination.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(data, dict):
        raise CriteriaError(f"{path}: expected a YAML mapping with keys {', '.join(TEMPLATE_KEYS)}")
    missing = [k for k in TEMPLATE_KEYS if not isinstance(data.get(k), str)]
    if missing:
        raise CriteriaError(f"{path}: missing template(s) {', '.join(missing)}")
    return {k: data[k] for k in TEMPLATE_KEYS}


_ENV = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False)


def render(template: str, qtype: QuestionType, **values: str) -> str:
    """Fill one template; an unknown placeholder is an error naming the type's file."""
    try:
        return _ENV.from_string(template).render(type=qtype, **values).strip()
    except TemplateError as err:
        raise CriteriaError(f"{qtype.source}: prompt template failed: {err}") from err


def chat(prompt: str) -> list[dict]:
    """One user turn: the image, then the prompt text (the layout every backend accepts)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
