"""Stage `filter`: keep contrastive, well-formed pairs; count every drop with its reason.

Three filters, in order: the rules (well-formed and contrastive), the judge (with
`--judge_filter`: the rubric passes the preferred and fails the rejected response) and a
person's review (marks from browse.html, imagination/review.py). A pair's reason is the
first filter that drops it; a person's `keep` overrules the judge, never the rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from pipeline.store import record_key

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
    "review_dropped",  # a person marked it `drop` in browse.html (--review)
)
JUDGE_REASONS = ("judge_rejected", "judge_unparsed", "judge_failed")
# A pair the judge cannot read: it is not judged (and so makes no judge call).
UNJUDGEABLE = ("missing_response", "empty")


def pair_up(questions: Iterable[dict], responses: dict[tuple[str, str], dict]) -> list[dict]:
    """One pair per question: {question record fields, preferred, rejected} (None if missing)."""
    pairs = []
    for question in questions:
        preferred = responses.get((question["key"], "preferred"))
        rejected = responses.get((question["key"], "rejected"))
        response_keys = [r["key"] if r else None for r in (preferred, rejected)]
        pairs.append(
            {
                **question,
                "pair_key": pair_key(question["key"], response_keys),
                "preferred": preferred["text"] if preferred else None,
                "rejected": rejected["text"] if rejected else None,
                "response_keys": [k for k in response_keys if k],
                "truncated": any(
                    r.get("finish_reason") == "length" for r in (preferred, rejected) if r
                ),
            }
        )
    return pairs


def pair_key(question_key: str, response_keys: list[str | None]) -> str:
    """A pair's identity: its question record and its two response records. A review mark
    is keyed by it, so a mark holds while those records do, and no longer once a criteria
    edit has regenerated either response."""
    return record_key(stage="pair", question=question_key, responses=response_keys)


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
    browse page can show every dropped pair with its reason. `judge` sees only the pairs
    the rules keep (combine() runs it on every judgeable pair and says more)."""
    reasons = rule_reasons(pairs, max_chars, drop_truncated)
    survivors = [i for i, reason in enumerate(reasons) if reason is None]
    if judge is not None and survivors:
        for i, reason in zip(survivors, judge([pairs[i] for i in survivors]), strict=True):
            reasons[i] = reason
    return reasons


def rule_reasons(
    pairs: list[dict], max_chars: int, drop_truncated: bool = True
) -> list[str | None]:
    """The rule filters' reason for each pair, None where the rules keep it."""
    seen: set = set()
    return [_drop_reason(pair, max_chars, seen, drop_truncated) for pair in pairs]


def combine(rule: str | None, judged: str | None, mark: str | None) -> str | None:
    """A pair's drop reason from the three filters: the rules' reason, the judge's (None
    when it passed or did not run) and the person's mark (keep, drop or None)."""
    if rule:
        return rule
    if mark == "drop":
        return judged or "review_dropped"
    return None if mark == "keep" else judged


def removed_by(rules: list, judged: list, marks: list) -> dict[str, int]:
    """How many pairs each filter removed: the first to drop a pair counts it."""
    counts = Counter()
    for rule, judge, mark in zip(rules, judged, marks, strict=True):
        if rule:
            counts["rules"] += 1
        elif judge and mark != "keep":
            counts["judge"] += 1
        elif mark == "drop":
            counts["review"] += 1
    return {name: counts[name] for name in ("rules", "judge", "review")}


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
