"""Stage `filter`: keep contrastive, well-formed pairs; count every drop with its reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

DROP_REASONS = (
    "missing_response",  # one of the two responses failed to generate
    "truncated",  # a response was cut off by the token limit (--response_max_tokens)
    "empty",
    "too_long",
    "duplicate",
    "not_contrastive",  # preferred and rejected say the same thing
    "judge_rejected",  # the judge did not pass the preferred and fail the rejected
    "judge_unparsed",  # the judge's reply held no verdict label
    "judge_failed",  # the judge call failed (its record says why)
)


def pair_up(questions: Iterable[dict], responses: dict[tuple[str, str], dict]) -> list[dict]:
    """One pair per question: {question record fields, preferred, rejected} (None if missing)."""
    pairs = []
    for question in questions:
        preferred = responses.get((question["key"], "preferred"))
        rejected = responses.get((question["key"], "rejected"))
        pairs.append(
            {
                **question,
                "preferred": preferred["text"] if preferred else None,
                "rejected": rejected["text"] if rejected else None,
                "response_keys": [r["key"] for r in (preferred, rejected) if r],
                "truncated": any(
                    r.get("finish_reason") == "length" for r in (preferred, rejected) if r
                ),
            }
        )
    return pairs


def filter_pairs(
    pairs: Iterable[dict],
    max_chars: int,
    judge: Callable[[list[dict]], list[str | None]] | None = None,
    drop_truncated: bool = True,
) -> tuple[list[dict], Counter]:
    """The pairs worth training on, and a count of the others by reason.

    `judge`, when given, takes the surviving pairs and gives for each a drop reason, or
    None when the rubric passes the preferred response and fails the rejected one.
    """
    pairs = list(pairs)
    reasons = drop_reasons(pairs, max_chars, judge, drop_truncated)
    kept = [pair for pair, reason in zip(pairs, reasons, strict=True) if reason is None]
    return kept, Counter(reason for reason in reasons if reason)


def drop_reasons(
    pairs: list[dict],
    max_chars: int,
    judge: Callable[[list[dict]], list[str | None]] | None = None,
    drop_truncated: bool = True,
) -> list[str | None]:
    """Each pair's drop reason (one of DROP_REASONS), None for a kept one; in order, so the
    browse page can show every dropped pair with its reason."""
    seen: set = set()
    reasons = [_drop_reason(pair, max_chars, seen, drop_truncated) for pair in pairs]
    survivors = [i for i, reason in enumerate(reasons) if reason is None]
    if judge is not None and survivors:
        for i, reason in zip(survivors, judge([pairs[i] for i in survivors]), strict=True):
            reasons[i] = reason
    return reasons


def _drop_reason(pair: dict, max_chars: int, seen: set, drop_truncated: bool) -> str | None:
    preferred, rejected = pair.get("preferred"), pair.get("rejected")
    if not pair["question"].strip():
        return "empty"
    if preferred is None or rejected is None:
        return "missing_response"
    if drop_truncated and pair.get("truncated"):
        return "truncated"
    if not preferred.strip() or not rejected.strip():
        return "empty"
    if len(preferred) > max_chars or len(rejected) > max_chars:
        return "too_long"
    identity = (pair["image_hash"], _norm(pair["question"]))
    if identity in seen:
        return "duplicate"
    seen.add(identity)
    if _norm(preferred) == _norm(rejected):
        return "not_contrastive"
    return None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())
