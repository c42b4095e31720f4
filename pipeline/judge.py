"""The rubric judge: one prompt per (question type, question, response), a strict parser.

It lives in `pipeline/` because evaluation and imagination's filter both use it. Judgments
are records like any other: keyed by judge model, rubric, image, question and response.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from pipeline.backends import BackendConfig, Request, Sampling, backend_identity
from pipeline.criteria import PARTIAL_VERDICT, VERDICTS, CriteriaError, QuestionType
from pipeline.runner import Item
from pipeline.store import file_hash, record_key

_ENV = SandboxedEnvironment(undefined=StrictUndefined)
DEFAULT_JUDGE = "gpt-4o-2024-08-06"  # a dated snapshot: verdicts stay comparable over time


@dataclass
class JudgeConfig:
    """The rubric judge: which model, which server, which key, which settings.

    One description for every command that judges (`macaroon eval`, imagination's
    `--judge_filter`, METHOD=grpo's reward, `macaroon reproduce`); `resolve_judge` turns it
    into the backend settings and the identity that keys every judgment.
    """

    judge_backend: str = field(
        default="openai",
        metadata={"help": "Backend of the judge: openai (an API or a server; a local folder "
                  "is served by vLLM on 127.0.0.1), hf or vllm."},
    )  # fmt: skip
    judge_model: str | None = field(
        default=DEFAULT_JUDGE,
        metadata={"help": "Judge model: an API model name, a Hub id or a local folder."},
    )
    judge_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible judge endpoint (e.g. vllm serve)."}
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable with the judge's key."}
    )
    judge_concurrency: int = field(default=32, metadata={"help": "Judge calls in flight."})
    judge_max_tokens: int = field(default=256, metadata={"help": "Token limit per verdict."})
    judge_max_retries: int = field(
        default=6, metadata={"help": "Retries of a failing judge call before it counts as failed."}
    )
    judge_structured: bool = field(
        default=True,
        metadata={"help": "Ask for the verdict as JSON schema with the type's labels "
                  "(response_format; openai judge backend); off for servers that reject it. "
                  "The parser reads either form."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_judge_options(self)


def check_judge_options(cfg: JudgeConfig) -> None:
    if cfg.judge_concurrency < 1 or cfg.judge_max_tokens < 1 or cfg.judge_max_retries < 0:
        raise ValueError(
            "--judge_concurrency and --judge_max_tokens must be 1 or more, "
            "--judge_max_retries 0 or more"
        )


def judge_options(cfg: JudgeConfig) -> JudgeConfig:
    """The judge fields of any config that carries them, as a plain JudgeConfig."""
    return JudgeConfig(**{f.name: getattr(cfg, f.name) for f in fields(JudgeConfig)})


@dataclass(frozen=True)
class Judge:
    """A resolved judge: the backend it runs on, whether replies are constrained to the
    type's labels, and its sampling (greedy, `judge_max_tokens`)."""

    backend: BackendConfig
    structured: bool
    sampling: Sampling

    @functools.cached_property
    def identity(self) -> dict:
        """What keys its judgments (judge_identity); computed once, on first use."""
        return judge_identity(self.backend, self.structured)

    def describe(self) -> dict:
        """The judge as reports and plan locks name it (no key, only its variable)."""
        return {"model": self.backend.model, "backend": self.backend.backend,
                "base_url": self.backend.base_url, "temperature": self.sampling.temperature,
                "max_tokens": self.sampling.max_tokens, "structured": self.structured}  # fmt: skip


def resolve_judge(
    cfg: JudgeConfig, runtime: BackendConfig | None = None, seed: int = 0, check: bool = True
) -> Judge:
    """The judge `cfg` describes, ready to open. `runtime`: the stage's own backend settings
    (dtype, batch size, executor, image cap), which a judge on hf or vllm shares; a judge
    with no model of its own (imagination's default) is `runtime`'s model, at its endpoint.
    `check`: refuse, before any work, an API judge whose key is not in the environment."""
    runtime = runtime or BackendConfig()
    base = {f.name: getattr(runtime, f.name) for f in fields(BackendConfig)}
    backend = BackendConfig(**{
        **base, "backend": cfg.judge_backend, "model": cfg.judge_model or runtime.model,
        "base_url": cfg.judge_base_url or (None if cfg.judge_model else runtime.base_url),
        "api_key_env": cfg.judge_api_key_env, "concurrency": cfg.judge_concurrency,
        "max_retries": cfg.judge_max_retries,
    })  # fmt: skip
    if check:
        _check_key(backend)
    # The engines behind hf and vllm do not constrain decoding: no format to send or key.
    structured = cfg.judge_structured and backend.backend == "openai"
    sampling = Sampling(max_tokens=cfg.judge_max_tokens, temperature=0.0, seed=seed)
    return Judge(backend, structured, sampling)


def _check_key(backend: BackendConfig) -> None:
    if backend.backend != "openai" or backend.base_url or Path(backend.model).is_dir():
        return
    if not os.environ.get(backend.api_key_env):
        raise ValueError(
            f"the judge {backend.model} needs an API key in ${backend.api_key_env}; or judge "
            "with another server (--judge_base_url URL --judge_model NAME) or a local model "
            "folder (--judge_model DIR, served on 127.0.0.1 by vLLM)"
        )


def judge_fingerprint(judge: Judge, types: dict[str, QuestionType], prompts: str | Path) -> str:
    """One hash of everything that decides a verdict but the answer: the judge's identity
    and settings, every type's rubric and the judge template. Two runs judged alike share
    it; a table refuses to set side by side runs that do not."""
    return record_key(
        identity=judge.identity, sampling=judge.sampling.__dict__, structured=judge.structured,
        rubrics={name: qtype.content_hash for name, qtype in types.items()},
        template=load_judge_template(prompts),
    )  # fmt: skip


def load_judge_template(path: str | Path) -> str:
    path = Path(path)
    path = path / "judge.yaml" if path.is_dir() else path
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not isinstance(data, dict) or not isinstance(data.get("judge"), str):
        raise CriteriaError(f"{path}: expected a YAML mapping with a 'judge' template")
    return data["judge"]


def render_judge(template: str, qtype: QuestionType, question: str, response: str) -> str:
    try:
        return _compiled(template).render(type=qtype, question=question, response=response)
    except TemplateError as err:
        raise CriteriaError(f"judge template failed for {qtype.source}: {err}") from err


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    # Compiling takes milliseconds, rendering microseconds: a GRPO run judges every batch.
    return _ENV.from_string(template)


def judge_identity(cfg: BackendConfig, structured: bool) -> dict:
    """The judge's identity for judgment keys: the model's (backend_identity), and, for
    structured replies from a vLLM server on this machine serving a model folder (the one
    this project starts, for the run or for the demo), that server's structured-output
    settings. They decide what a constrained reply may hold (free whitespace or none): a
    verdict judged under other settings must not be reused."""
    from pipeline.backends.openai_api import is_loopback_url
    from pipeline.fingerprint import is_model_folder

    identity = backend_identity(cfg)
    ours = not cfg.base_url or is_loopback_url(cfg.base_url)
    if structured and cfg.backend == "openai" and ours and is_model_folder(cfg.model):
        from pipeline.serve import STRUCTURED_OUTPUTS

        identity["structured_outputs"] = STRUCTURED_OUTPUTS
    return identity


def judge_item(
    template: str,
    qtype: QuestionType,
    image: str | Path,
    question: str,
    response: str,
    judge: dict | str,
    sampling: Sampling,
    fields: dict | None = None,
    structured: bool = False,
) -> Item:
    """One judge request. `judge` identifies the judge model in the key
    (pipeline.backends.backend_identity). `structured`: constrain the reply to
    `verdict_format(qtype)`; only for backends that send it (openai), since the format is
    part of the key."""
    prompt = render_judge(template, qtype, question, response)
    response_format = verdict_format(qtype) if structured else None
    # The format changes what the judge may say, so it is keyed; left out when unset so the
    # keys of unstructured judgments stay what they were.
    constraint = {"response_format": response_format} if response_format else {}
    key = record_key(
        stage="judge", judge=judge, rubric=qtype.content_hash, image=file_hash(image),
        question=question, response=response, prompt=prompt, sampling=sampling.__dict__,
        **constraint,
    )  # fmt: skip
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    request = Request(messages, (Path(image),), sampling, response_format=response_format)
    return Item(key, request, dict(fields or {}))


def judge_explanation(text: str | None) -> str:
    """The judge's explanation in its reply (the whole reply when it has no such field)."""
    # The closing quote may be missing: a reply cut off by the token limit inside the string.
    match = re.search(r'"explanation"\s*:\s*"((?:[^"\\]|\\.)*)', text or "")
    if not match:
        return text or ""
    try:
        return json.loads(f'"{match.group(1)}"')
    except json.JSONDecodeError:  # an escape cut in half ("\\u00")
        return match.group(1)


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


# Where a judge states its verdict: the fields of a JSON reply, and `Key: label` anywhere in
# the text (the original MACAROON judge ends its reply with `Flag: True`, mid-line or not).
_VERDICT_KEYS = frozenset({"flag", "verdict", "label", "judgment", "judgement", "answer"})
_KEYED = re.compile(r"\b(?:flag|verdict|label|judge?ment|answer)[\s*_\"'`]*[:=]", re.I)
# A word with the markdown emphasis, quotes or brackets a judge may wrap a label in.
_WORD = re.compile(r"[\s*_`\"'\[(>#]*([A-Za-z]+)[*_`\"'\])]*")
# After a label: nothing, a sentence's or JSON object's end, or a clause break ("True - the
# response...").
_CLEAN_END = re.compile(r"\s*(?:$|[.!\n}]|[,;:\-\u2013\u2014]\s*([A-Za-z]*))")
# Before a label these negate or hedge it ("not True", "partially true", "could be true",
# "neither true nor false"); after a label and a comma or dash they qualify it.
_HEDGES = frozenset(
    "not never hardly partially partly mostly largely somewhat slightly nearly almost "
    "neither nor either or could might may maybe perhaps possibly probably likely arguably "
    "half semi kind sort".split()
)
# A judge that takes its verdict back ("True. Actually, the answer is False.") opens a
# clause with one of these; a label later in that clause is one more verdict position.
_RETRACTION = re.compile(
    r"(?:^|[.!?;,\n])\s*(?:actually|wait|no wait|correction|on second thought|on reflection|"
    r"scratch that|i mean|i meant|rather|let me reconsider|hmm+)\b",
    re.I,
)
# Every label of any type, so that one outside a type's set is seen, and rejected.
_ANY_LABEL = frozenset(label.lower() for label in (*VERDICTS, PARTIAL_VERDICT))
_REJECTED = "\0rejected"  # a verdict position holding no clean label of the type


def parse_verdict(text: str | None, labels: list[str] | tuple[str, ...]) -> str | None:
    """The verdict label in a judge's reply, or None (unparsed) unless it is unmistakable.

    Verdict positions are: the verdict/flag/label/judgment/answer field of a JSON object
    (fenced or not, any key order), `Flag:`/`Verdict:`/`Label:`/`Judgment:`/`Answer:`
    followed by a label anywhere in the text, a reply that opens with a label (bold or
    quoted, it needs no punctuation after it: `**True** The response ...`), and the label a
    retraction settles on (`True. Actually, the answer is False.` names two). Each must
    hold one of `labels` (any case, with markdown emphasis, quotes or trailing
    punctuation); the reply parses only when every position agrees. A negated or hedged
    label ("not True", "partially true", "True/False", "true or false?"), a label outside
    `labels` (Ambiguous on a True/False type) or two different labels is unparsed: a
    wrong verdict would be counted, an unparsed one is reported.

    The original MACAROON judge (github.com/ShujinWu-0814/MACAROON, eval/metric_cal.py)
    asks GPT-4-turbo for "Explanation: <reasoning>\n Flag: True/False" and reads
    `reply.split('Flag:')[-1].strip()`, counting only an exact 'True' or 'Ambiguous';
    that form parses here too.
    """
    if not text:
        return None
    by_lower = {label.lower(): label for label in labels}
    known = _ANY_LABEL | set(by_lower)
    found = set(_verdict_positions(text, known))
    if len(found) != 1:
        return None
    return by_lower.get(found.pop())  # _REJECTED and labels of other types are not in it


def _verdict_positions(text: str, known: frozenset[str]) -> list[str]:
    found = []
    for data in _json_objects(text):
        for key, value in data.items():
            if str(key).lower() in _VERDICT_KEYS:  # a verdict field must hold a label
                found.append((_read(value, known) if isinstance(value, str) else None) or _REJECTED)
    # `Answer: the mug is red` in an explanation is no verdict: such values are skipped.
    found += [_read(text[m.end() :], known) for m in _KEYED.finditer(text)]
    found.append(_read(text, known))  # "True. The response asks which mug..."
    found += [_retracted(text[m.end() :], known) for m in _RETRACTION.finditer(text)]
    return [f for f in found if f is not None]


def _retracted(clause: str, known: frozenset[str]) -> str | None:
    """The label a retraction clause settles on ("Actually, the answer is False."): the first
    clean label before the clause ends; a label inside a phrase ("the false premise") is
    none."""
    for word in re.finditer(r"[A-Za-z]+|[.!?\n]", clause[:200]):
        if not word.group().isalpha():
            return None  # the clause ended with no label
        if word.group().lower() in known:
            label = _read(clause[word.start() :], known)
            if label is not None and label != _REJECTED:
                return label
    return None


def _read(value: str, known: frozenset[str]) -> str | None:
    """The label `value` opens with (lower case); _REJECTED when that label is negated,
    hedged or unfinished ("True/False"); None when `value` opens with no label at all."""
    first = _WORD.match(value)
    if not first:
        return None
    word = first.group(1).lower()
    if word in known:
        end = _CLEAN_END.match(value, first.end())
        clean = end is not None and (end.group(1) or "").lower() not in _HEDGES
        # Emphasis or quotes close a label by themselves ("**True** The response asks..."),
        # unless what follows hedges it or names another label ("**True** or **False**").
        closed = first.end() > first.start(1) + len(first.group(1))
        following = re.findall(r"[A-Za-z]+", value[first.end() :])[:1]
        if closed and not clean and end is None:
            clean = not following or following[0].lower() not in _HEDGES | known
        return word if clean else _REJECTED
    following = re.findall(r"[A-Za-z]+", value[first.end() :])[:3]
    if word in _HEDGES and any(w.lower() in known for w in following):
        return _REJECTED
    return None


def _json_objects(text: str) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            data, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(data, dict):
            yield data
        start = text.find("{", end)
