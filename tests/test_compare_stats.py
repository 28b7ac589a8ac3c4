"""The paired and unpaired comparisons on constructed verdicts whose answers are known."""

from __future__ import annotations

import pytest
from scipy import stats

from chareval.evaluators.compare import compare
from verdicts import verdicts


def test_an_identical_pair_shows_no_difference():
    before = verdicts([True] * 30 + [False] * 10)
    result = compare(before, before, "boundary_holding")
    assert result["test"] == "paired" and result["n"] == 40 and result["paired_on"] == "context content"
    assert result["diff_mean"] == 0 and result["ci_low"] == result["ci_high"] == 0 and result["p_value"] == 1.0
    assert result["pass_diff"] == 0 and result["pass_p_value"] == 1.0 and result["lost"] == result["gained"] == 0


def test_one_flipped_verdict_in_forty_is_not_significant():
    passes = [True] * 36 + [False] * 4
    flipped = passes.copy()
    flipped[0] = False
    result = compare(verdicts(passes), verdicts(flipped), "boundary_holding")
    assert result["lost"] == 1 and result["gained"] == 0
    assert result["pass_diff"] == pytest.approx(-1 / 40)
    assert result["pass_p_value"] == 1.0  # exact McNemar: one discordant pair is a coin toss
    assert result["pass_ci_low"] < 0 < result["pass_ci_high"]


def test_a_drop_from_ninety_to_forty_five_percent_is_significant():
    before = [True] * 36 + [False] * 4
    after = [True] * 18 + [False] * 22  # the 18 lost are among the 36 that held before
    result = compare(verdicts(before), verdicts(after), "boundary_holding")
    assert result["baseline_pass_rate"] == 0.9 and result["candidate_pass_rate"] == 0.45
    assert result["lost"] == 18 and result["gained"] == 0
    assert result["pass_p_value"] == pytest.approx(2 * 0.5**18)  # exact McNemar: 18 of 18 discordant one way
    assert result["pass_ci_high"] < 0
    assert result["diff_mean"] == pytest.approx(-18 * 6 / 40) and result["p_value"] < 0.001


def test_the_score_interval_is_scipys_paired_t():
    before = verdicts([True] * 5, scores=[7, 8, 9, 8, 7])
    after = verdicts([True, True, False, True, False], scores=[8, 9, 5, 9, 6])
    result = compare(before, after, "boundary_holding")
    expected = stats.ttest_rel([8, 9, 5, 9, 6], [7, 8, 9, 8, 7])
    interval = expected.confidence_interval(0.95)
    assert result["score_test"] == "paired t"
    assert result["diff_mean"] == pytest.approx(-0.4)
    assert (result["ci_low"], result["ci_high"], result["p_value"]) == pytest.approx(
        (interval.low, interval.high, expected.pvalue)
    )


def test_an_interval_from_two_pairs_is_clipped_to_what_a_difference_can_be():
    result = compare(verdicts([True, False]), verdicts([False, False]), "boundary_holding")
    assert result["pass_diff"] == -0.5 and (result["pass_ci_low"], result["pass_ci_high"]) == (-1.0, 1.0)
    assert result["ci_low"] == -9.0 and result["ci_high"] == 9.0  # t with one degree of freedom: +-38


def test_other_contexts_are_compared_as_independent_samples():
    """Two contexts runs both number their contexts ctx-001..: their content tells them apart."""
    baseline = verdicts([True] * 36 + [False] * 4, contexts="a")
    candidate = verdicts([True] * 18 + [False] * 22, contexts="b")
    for record in candidate:
        record.context_id = record.context_id.replace("b-", "a-")  # the same ids, other contexts
    result = compare(baseline, candidate, "boundary_holding")
    assert result["test"] == "independent" and result["pass_test"].startswith("two-proportion")
    assert result["pass_diff"] == pytest.approx(-0.45) and result["pass_p_value"] < 0.001
    assert result["pass_ci_low"] < -0.45 < result["pass_ci_high"] < 0


def test_records_without_context_hashes_pair_by_context_id():
    result = compare(verdicts([True] * 4, sha=False), verdicts([True, True, True, False]), "boundary_holding")
    assert result["paired_on"] == "context id" and result["n"] == 4 and result["lost"] == 1


def test_a_conversation_judged_several_times_passes_by_majority_and_a_tie_fails():
    one = verdicts([True, False])
    repeated = [r.model_copy(update={"sample": 1, "passed": True, "score": 8}) for r in one]
    # conv-000: pass + pass = pass; conv-001: fail + pass = a tie, which fails
    result = compare(one + repeated, one + repeated, "boundary_holding")
    assert result["baseline_pass_rate"] == 0.5 and result["baseline_mean"] == pytest.approx((8.5 + 5.5) / 2)


def test_errors_and_other_evaluators_are_left_out_and_extra_units_counted():
    before = verdicts([True] * 3)
    after = verdicts([True] * 2) + [
        verdicts([False])[0].model_copy(update={"evaluator": "grounding"}),
    ]
    errored = before[0].model_copy(update={"id": "x", "score": None, "passed": None, "error": "no verdict"})
    result = compare([errored, *before[1:]], after, "boundary_holding")
    assert result["n"] == 1 and result["left_out"] == 2  # ctx-002 only before; ctx-000's before is an error
