"""PIE metrics and judge agreement against hand-computed figures."""

import pytest

from evaluation.agreement import agreement, cohen_kappa
from evaluation.metrics import UNPARSED, bootstrap_ci, summarize, type_metrics
from pipeline.judge import parse_verdict


def test_both_conventions_for_align_and_ambiguous_rates():
    verdicts = ["True", "True", "False", "Ambiguous", "unparsed", "failed"]
    m = type_metrics(verdicts, tier="II")
    assert (m["n"], m["judged"], m["aligned"]) == (6, 4, 2)
    # Over judged items: unparsed and failed left out.
    assert m["align_rate"] == 0.5 and m["ambiguous_rate"] == 0.25
    # Over all items (the original code's, the paper's): unparsed counts as not aligned; a
    # judge call that did not happen (failed) is no verdict at all, and the type incomplete.
    assert m["align_rate_all"] == pytest.approx(2 / 5)
    assert m["ambiguous_rate_all"] == pytest.approx(1 / 5)
    assert (m["unparsed"], m["failed"], m["incomplete"]) == (1, 1, True)
    assert m["unparsed_rate"] == pytest.approx(1 / 6) and m["failed_rate"] == pytest.approx(1 / 6)
    tier_one = type_metrics(["True", "False"], tier="I")
    assert tier_one["ambiguous_rate"] is None and tier_one["ambiguous_rate_all"] is None


def test_five_true_and_five_unparsed_is_half_aligned_in_the_papers_convention():
    m = type_metrics(["True"] * 5 + [UNPARSED] * 5, tier="I")
    assert m["align_rate"] == 1.0 and m["align_rate_all"] == 0.5
    low, high = m["ci95_all"]
    assert low < 0.5 < high and m["ci95"] == [1.0, 1.0]


def test_ambiguous_on_a_true_false_type_is_unparsed_not_a_verdict():
    replies = ["True"] * 5 + ['{"verdict": "Ambiguous", "explanation": "both"}'] * 5
    verdicts = [parse_verdict(r, ("True", "False")) or UNPARSED for r in replies]
    m = type_metrics(verdicts, tier="I")
    assert (m["judged"], m["unparsed"]) == (5, 5)
    assert m["align_rate"] == 1.0 and m["align_rate_all"] == 0.5


def test_no_verdict_at_all_is_not_zero_over_judged_items_but_zero_over_all():
    m = type_metrics(["unparsed", "failed"], tier="I")
    assert m["align_rate"] is None and m["ci95"] is None
    assert m["align_rate_all"] == 0.0 and m["ci95_all"] == [0.0, 0.0]


def test_bootstrap_interval_brackets_the_rate_and_is_seeded():
    flags = [True] * 7 + [False] * 3
    low, high = bootstrap_ci(flags, seed=1)
    assert low <= 0.7 <= high and 0.3 < low and high <= 1.0
    assert bootstrap_ci(flags, seed=1) == [low, high]
    assert bootstrap_ci([True] * 5) == [1.0, 1.0]


def test_aar_is_the_unweighted_mean_and_the_weighted_one_counts_questions():
    per_type = {
        "A": type_metrics(["True"] * 1 + ["False"] * 1, "I"),  # 0.5 over 2
        "B": type_metrics(["True"] * 9 + ["False"] * 1, "I"),  # 0.9 over 10
        "C": type_metrics(["False"] * 4, "III"),  # 0.0 over 4
    }
    s = summarize(per_type)
    assert s["aar"] == pytest.approx((0.5 + 0.9 + 0.0) / 3)
    assert s["aar_weighted"] == pytest.approx(10 / 16)
    assert s["tiers"]["I"]["align_rate"] == pytest.approx(0.7)
    assert s["tiers"]["I"]["align_rate_weighted"] == pytest.approx(10 / 12)
    assert s["tiers"]["III"]["align_rate"] == 0.0 and s["aar_types"] == 3


def test_aar_over_all_items_counts_every_type_and_every_item():
    per_type = {
        "A": type_metrics(["True"] * 2 + ["unparsed"] * 2, "I"),  # 1.0 judged, 0.5 all
        "B": type_metrics(["True"] * 3 + ["False"] + ["unparsed"] * 4, "II"),  # 0.75, 0.375
        "C": type_metrics(["unparsed"] * 4, "III"),  # no verdict: left out, 0.0
    }
    s = summarize(per_type)
    assert s["aar"] == pytest.approx((1.0 + 0.75) / 2) and s["aar_types"] == 2
    assert s["aar_all"] == pytest.approx((0.5 + 0.375 + 0.0) / 3)
    assert s["aar_weighted"] == pytest.approx(5 / 6)
    assert s["aar_weighted_all"] == pytest.approx(5 / 16)
    assert s["tiers"]["II"]["align_rate_all"] == pytest.approx(0.375)
    assert s["tiers"]["II"]["align_rate_weighted_all"] == pytest.approx(3 / 8)
    assert s["tiers"]["III"]["align_rate"] is None and s["tiers"]["III"]["align_rate_all"] == 0.0
    assert (s["incomplete"], s["missing_verdicts"]) == (False, 0)


def test_missing_verdicts_make_the_run_incomplete_with_no_aar_in_either_convention():
    per_type = {
        "A": type_metrics(["True"] * 2 + ["False"] * 2, "I"),
        "B": type_metrics(["True"] * 3 + ["unparsed"] + ["failed"] * 4, "II"),
    }
    assert per_type["B"]["align_rate_all"] == pytest.approx(3 / 4)  # failed: not "not aligned"
    s = summarize(per_type)
    assert (s["incomplete"], s["missing_verdicts"]) == (True, 4)
    for key in ("aar", "aar_all", "aar_weighted", "aar_weighted_all"):
        assert s[key] is None, key
    assert s["tiers"]["II"]["align_rate_all"] is None  # the tier holding the missing ones
    assert s["tiers"]["I"]["align_rate_all"] == 0.5  # a complete tier keeps its figure


def test_cohen_kappa_by_hand():
    # 10 items: agree on 4 True + 3 False; a says True 6 times, b 5 times.
    pairs = [("True", "True")] * 4 + [("False", "False")] * 3 + [("True", "False")] * 2
    pairs += [("False", "True")]
    observed = 0.7
    expected = (6 * 5 + 4 * 5) / 100
    assert cohen_kappa(pairs) == pytest.approx((observed - expected) / (1 - expected))
    assert cohen_kappa([("True", "True")] * 3) == 1.0
    assert cohen_kappa([]) is None


def test_agreement_per_type_leaves_out_what_either_side_could_not_judge():
    ours = {
        ("1", "q1"): {"verdict": "True", "question_type": "A"},
        ("2", "q2"): {"verdict": "False", "question_type": "A"},
        ("3", "q3"): {"verdict": "unparsed", "question_type": "A"},
        ("4", "q4"): {"verdict": "True", "question_type": "B"},
    }
    theirs = {
        ("1", "q1"): {"verdict": "True"},
        ("2", "q2"): {"verdict": "True"},
        ("3", "q3"): {"verdict": "True"},
    }
    result = agreement(ours, theirs)
    assert (
        result["A"]["n"] == 2 and result["A"]["agreement"] == 0.5 and result["A"]["left_out"] == 1
    )
    assert result["B"] == {"n": 0, "agreement": None, "kappa": None, "left_out": 1}
