from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools import evaluate
from tools.evaluate import (
    best_of_n,
    exact_match,
    expected_best_of_k,
    expected_majority_at_k,
    load_metric,
    majority_vote,
    numeric_match,
    pass_at_k,
    score_curve,
    token_f1,
)

# Brute force: average the aggregator over every k-subset, ties split evenly.


def brute_majority(answers: list[str], correct: list[float], k: int) -> float:
    value = dict(zip(answers, correct, strict=True))
    total = Fraction(0)
    subsets = list(itertools.combinations(answers, k))
    for subset in subsets:
        counts = Counter(subset)
        top = max(counts.values())
        winners = [a for a, c in counts.items() if c == top]
        total += sum(Fraction(value[a]) for a in winners) / len(winners)
    return float(total / len(subsets))


def brute_best(scores: list[float], correct: list[float], k: int) -> float:
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(scores)), k))
    for subset in subsets:
        top = max(scores[i] for i in subset)
        winners = [i for i in subset if scores[i] == top]
        total += sum(Fraction(correct[i]) for i in winners) / len(winners)
    return float(total / len(subsets))


samples_and_k = st.lists(st.sampled_from("abcde"), min_size=1, max_size=9).flatmap(
    lambda answers: st.tuples(st.just(answers), st.integers(1, len(answers)))
)


@settings(max_examples=150, deadline=None)
@given(samples_and_k, st.sets(st.sampled_from("abcde")))
def test_majority_matches_brute_force(case: tuple[list[str], int], right: set[str]) -> None:
    answers, k = case
    correct = [float(a in right) for a in answers]
    assert expected_majority_at_k(answers, correct, k) == pytest.approx(
        brute_majority(answers, correct, k), abs=1e-12
    )


@settings(max_examples=150, deadline=None)
@given(samples_and_k, st.sets(st.sampled_from("abcde")), st.integers(0, 2))
def test_majority_over_shares_matches_brute_force(case: tuple[list[str], int], right: set[str],
                                                  min_count: int) -> None:
    """The recursion on shares of the draws, which runs beyond `_FLOAT_COUNTS` samples, is
    the counted one divided through: forced here on a few samples, abstentions included."""
    answers, k = case
    answers = [None if a == "e" else a for a in answers]
    correct = [float(a in right) for a in answers]
    counted = expected_majority_at_k(answers, correct, k, abstain=None, min_count=min_count)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "_FLOAT_COUNTS", 0)
        shared = expected_majority_at_k(answers, correct, k, abstain=None, min_count=min_count)
    assert shared == pytest.approx(counted, abs=1e-12)
    if min_count == 0 and None not in answers:
        assert shared == pytest.approx(brute_majority(answers, correct, k), abs=1e-12)


@pytest.mark.filterwarnings("error")  # nor a warning (numpy overflow on a masked value)
def test_majority_over_thousands_of_samples() -> None:
    """C(2100, 256) is above a float's range: counting subsets raised OverflowError (a
    replay table with 2,100 answers per item failed every trial at n >= 256)."""
    answers = ["a"] * 640 + ["b"] * 600 + ["c"] * 500 + ["d"] * 360
    correct = [float(a == "a") for a in answers]
    assert expected_majority_at_k(answers, correct, 1) == pytest.approx(640 / 2100, abs=1e-12)
    assert expected_majority_at_k(answers, correct, 2100) == 1.0  # the whole set: "a" leads
    at = [expected_majority_at_k(answers, correct, k) for k in (16, 256, 1024)]
    assert 640 / 2100 < at[0] < at[1] < at[2] < 1  # the leader wins more of larger subsets
    assert expected_majority_at_k(["a"] * 1500, [1.0] * 1500, 700) == pytest.approx(1.0)


def test_majority_with_partial_credit_and_ties() -> None:
    answers = ["a", "b", "a", "b", "c", "c", "d"]
    correct = [0.5, 1.0, 0.5, 1.0, 0.0, 0.0, 0.25]
    for k in range(1, 8):
        assert expected_majority_at_k(answers, correct, k) == pytest.approx(
            brute_majority(answers, correct, k), abs=1e-12
        )
    assert expected_majority_at_k(["a", "b"], [1.0, 0.0], 2) == 0.5  # a tie is a coin flip


def test_majority_rejects_inconsistent_scores_and_bad_k() -> None:
    with pytest.raises(ValueError, match="scored both"):
        expected_majority_at_k(["a", "a"], [1.0, 0.0], 1)
    with pytest.raises(ValueError, match="k must be"):
        expected_majority_at_k(["a"], [1.0], 2)


scored_samples_and_k = st.lists(
    st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=9
).flatmap(lambda pairs: st.tuples(st.just(pairs), st.integers(1, len(pairs))))


@settings(max_examples=150, deadline=None)
@given(scored_samples_and_k)
def test_best_of_k_matches_brute_force(case: tuple[list[tuple[int, bool]], int]) -> None:
    pairs, k = case  # few distinct scores: many ties
    scores = [float(s) for s, _ in pairs]
    correct = [float(c) for _, c in pairs]
    assert expected_best_of_k(scores, correct, k) == pytest.approx(
        brute_best(scores, correct, k), abs=1e-12
    )


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))
    )
)
def test_pass_at_k_is_the_closed_form(case: tuple[int, int, int]) -> None:
    n, c, k = case
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_matches_brute_force() -> None:
    correct = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    for k in range(1, 7):
        subsets = list(itertools.combinations(correct, k))
        brute = sum(max(s) for s in subsets) / len(subsets)
        assert pass_at_k(6, 2, k) == pytest.approx(brute)
        assert expected_best_of_k(correct, correct, k) == pytest.approx(brute)


def test_estimators_are_fast_at_256_samples() -> None:
    answers = [str(i % 7) for i in range(200)] + [str(i) for i in range(56)]
    correct = [float(a == "3") for a in answers]
    start = time.perf_counter()
    for k in (1, 16, 64, 128, 256):
        assert 0 <= expected_majority_at_k(answers, correct, k) <= 1
        assert 0 <= expected_best_of_k(list(range(256)), correct, k) <= 1
    assert time.perf_counter() - start < 2.0


def test_score_curve_matches_per_item_brute_force() -> None:
    samples = [["357", "357", " 356", "358"], ["15", "14", "14", "15 "], ["9", "9", "9", "8"]]
    labels = ["357", "15", "8"]
    verifier = [[0.9, 0.1, 0.5, 0.2], [0.3, 0.3, 0.8, 0.1], [0.2, 0.2, 0.2, 0.9]]
    curves = {
        "majority": score_curve(samples, labels, exact_match, "majority"),
        "best_of_n": score_curve(samples, labels, exact_match, "best_of_n", scores=verifier),
        "pass": score_curve(samples, labels, exact_match, "pass", ks=[1, 2, 4]),
    }
    assert list(curves["majority"]) == [1, 2, 3, 4]
    assert list(curves["pass"]) == [1, 2, 4]
    for k in (1, 2, 4):
        items = list(zip(samples, labels, verifier, strict=True))
        correct = [[exact_match(s, label) for s in ss] for ss, label, _ in items]
        majority = [
            brute_majority([s.strip() for s in ss], c, k)
            for (ss, _, _), c in zip(items, correct, strict=True)
        ]
        best = [brute_best(v, c, k) for (_, _, v), c in zip(items, correct, strict=True)]
        passed = [pass_at_k(len(c), int(sum(c)), k) for c in correct]
        assert curves["majority"][k] == pytest.approx(sum(majority) / 3)
        assert curves["best_of_n"][k] == pytest.approx(sum(best) / 3)
        assert curves["pass"][k] == pytest.approx(sum(passed) / 3)
    assert curves["majority"][1] == pytest.approx((2 / 4 + 2 / 4 + 1 / 4) / 3)
    with pytest.raises(ValueError, match="needs scores"):
        score_curve(samples, labels, exact_match, "best_of_n")


def test_metrics() -> None:
    assert exact_match(" 357\n", "357") == 1.0 and exact_match("357.", "357") == 0.0
    assert numeric_match("the answer is 1,234.0", "1234") == 1.0
    assert numeric_match("3 then 5", "3") == 0.0
    assert numeric_match("0.1 + 0.2 = 0.30000000001", "0.3") == 1.0
    assert numeric_match("-4", "4") == 0.0 and numeric_match("none", "4") == 0.0
    assert token_f1("The cat sat.", "the cat") == pytest.approx(0.8)
    assert token_f1("dog", "the cat") == 0.0 and token_f1("", "") == 1.0


def test_load_metric() -> None:
    assert load_metric("token_f1") is token_f1
    assert load_metric("tools.evaluate:numeric_match") is numeric_match
    with pytest.raises(ValueError, match="Unknown metric"):
        load_metric("bleu")


def test_aggregators() -> None:
    assert majority_vote(["5", "6", "6", "5", "7"]) == "5"  # tie: first seen
    assert majority_vote([1, 2, 2]) == 2
    assert best_of_n(["a", "bb", "c"], [0.1, 0.7, 0.7]) == "bb"
    assert best_of_n(["a", "bbb", "cc"], len) == "bbb"
