"""Question types as data: load, validate and hash the criteria YAML files.

Each `*.yaml` file in a criteria folder describes one question type (docs/DESIGN.md §1).
Adding a type means dropping one more file there; nothing else changes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

TIERS = {"I": "invalid", "II": "ambiguous", "III": "personalizable"}
FIELDS = (
    "name",
    "tier",
    "description",
    "imagine_question",
    "examples",
    "preferred_criteria",
    "rejected_criteria",
    "judge",
)
VERDICTS = ("True", "False")
PARTIAL_VERDICT = "Ambiguous"  # tier II only: the response handles the ambiguity in part


class CriteriaError(ValueError):
    """A criteria file is missing, malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class QuestionType:
    name: str
    tier: str
    description: str
    imagine_question: str
    examples: tuple[str, ...]
    preferred_criteria: tuple[str, ...]
    rejected_criteria: tuple[str, ...]
    rubric: str
    labels: dict[str, str]
    source: str  # the file it came from, for error messages

    @property
    def tier_name(self) -> str:
        return TIERS[self.tier]

    @property
    def content_hash(self) -> str:
        """Stable hash of what the type says (not where it lives): changes iff the text does."""
        content = {k: v for k, v in asdict(self).items() if k != "source"}
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_criteria(directory: str | Path) -> dict[str, QuestionType]:
    """Load every `*.yaml` in `directory`, keyed by type name, ordered by tier then file name."""
    directory = Path(directory)
    if directory.is_file():
        raise CriteriaError(
            f"{directory}: is a file; give the folder of criteria *.yaml files (one per type)"
        )
    if not directory.is_dir():
        raise CriteriaError(f"{directory}: criteria folder not found")
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if not files:
        raise CriteriaError(f"{directory}: no *.yaml criteria files; add one per question type")
    loaded = [load_question_type(path) for path in files]
    types: dict[str, QuestionType] = {}
    for qtype in sorted(loaded, key=lambda t: (list(TIERS).index(t.tier), Path(t.source).name)):
        if qtype.name in types:
            raise CriteriaError(
                f"{qtype.source}: field 'name': type {qtype.name!r} is already defined in "
                f"{types[qtype.name].source}; each type needs exactly one file"
            )
        types[qtype.name] = qtype
    return types


def load_question_type(path: str | Path) -> QuestionType:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CriteriaError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    except (yaml.YAMLError, ValueError) as err:  # ValueError: a date like 2001-13-45
        raise CriteriaError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise CriteriaError(f"{path}: expected a mapping with fields {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise CriteriaError(f"{path}: missing field(s) {', '.join(map(repr, missing))}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise CriteriaError(f"{path}: unknown field(s) {names}; allowed: {', '.join(FIELDS)}")
    tier = str(data["tier"])
    if tier not in TIERS:
        raise CriteriaError(
            f"{path}: field 'tier': unknown tier {data['tier']!r}; use one of {', '.join(TIERS)}"
        )
    judge = data["judge"]
    if not isinstance(judge, dict) or set(judge) != {"rubric", "labels"}:
        raise CriteriaError(f"{path}: field 'judge': needs exactly the keys 'rubric' and 'labels'")
    return QuestionType(
        name=_text(path, "name", data["name"]),
        tier=tier,
        description=_text(path, "description", data["description"]),
        imagine_question=_text(path, "imagine_question", data["imagine_question"]),
        examples=_texts(path, "examples", data["examples"]),
        preferred_criteria=_texts(path, "preferred_criteria", data["preferred_criteria"]),
        rejected_criteria=_texts(path, "rejected_criteria", data["rejected_criteria"]),
        rubric=_text(path, "judge.rubric", judge["rubric"]),
        labels=_labels(path, tier, judge["labels"]),
        source=str(path),
    )


def _text(path: Path, field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CriteriaError(f"{path}: field {field!r}: expected non-empty text, got {value!r}")
    return value.strip()


def _texts(path: Path, field: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise CriteriaError(f"{path}: field {field!r}: expected a non-empty list of strings")
    return tuple(_text(path, f"{field}[{i}]", item) for i, item in enumerate(value))


def _labels(path: Path, tier: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise CriteriaError(f"{path}: field 'judge.labels': expected a mapping label -> meaning")
    # YAML reads an unquoted True as a boolean; accept it but keep the label as text.
    labels = {str(k): _text(path, f"judge.labels.{k}", v) for k, v in value.items()}
    expected = set(VERDICTS) | ({PARTIAL_VERDICT} if tier == "II" else set())
    if set(labels) != expected:
        raise CriteriaError(
            f"{path}: field 'judge.labels': tier {tier} needs exactly the labels "
            f"{', '.join(sorted(expected))}, got {', '.join(sorted(labels)) or 'none'}"
        )
    return labels


def criteria_hash(types: dict[str, QuestionType]) -> str:
    """One hash for a whole criteria set (dataset cards record it)."""
    blob = "".join(f"{name}:{t.content_hash};" for name, t in sorted(types.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
