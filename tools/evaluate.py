"""Score completions: metrics, aggregators over n samples, and exact estimators over subsets.

"One sampling, every n": draw N samples per item once; `score_curve` then gives the expected
score of majority vote, best-of-n or pass@n for every n <= N, averaged over uniformly random
n-subsets of the N samples, exactly and without new inference.

Answer extractors turn a completion into the answer that is voted on and scored
(`last_number`, a regex's first group, or a user function); None means it holds no answer.

Example:
    >>> score_curve([["357", "357", "356"]], ["357"], exact_match, "majority", ks=[1, 3])
    {1: 0.666..., 3: 1.0}
"""

from __future__ import annotations

import functools
import importlib
import math
import re
import string
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

Metric = Callable[[str, str], float]  # (prediction, reference) -> score in [0, 1]
Extractor = Callable[[str], "str | None"]  # completion -> its answer, None if it holds none
Aggregator = Literal["majority", "best_of_n", "pass"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_NOTHING = object()  # no answer abstains
_FLOAT_COUNTS = 1000  # samples whose subsets a float counts: C(n, k) <= 2**n < 1.8e308
_NEGLIGIBLE = math.log(1e-16)  # beyond it, a count t of g's with under this chance is skipped


# Metrics


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the two strings are equal after stripping surrounding whitespace."""
    return float(prediction.strip() == reference.strip())


def numeric_match(prediction: str, reference: str, tolerance: float = 1e-6) -> float:
    """1.0 if the last numbers in both strings agree within `tolerance` (absolute or relative);
    thousands separators are ignored. 0.0 if either has no number."""
    pred, ref = _last_number(prediction), _last_number(reference)
    if pred is None or ref is None:
        return 0.0
    return float(math.isclose(pred, ref, rel_tol=tolerance, abs_tol=tolerance))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of lower-cased, punctuation-free whitespace tokens."""
    pred, ref = _tokens(prediction), _tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "token_f1": token_f1,
}


def load_metric(name: str, folder: str | Path | None = None) -> Metric:
    """A built-in metric by name, or a user function given as "package.module:function",
    importable from `folder` (e.g. a metric.py beside the task file) or the import path."""
    if name in METRICS:
        return METRICS[name]
    module, sep, function = name.partition(":")
    if not sep:
        raise ValueError(f"Unknown metric {name!r}; use one of {list(METRICS)} or 'module:func'.")
    if folder is None:
        return getattr(importlib.import_module(module), function)
    sys.path.insert(0, str(folder))
    try:
        return getattr(importlib.import_module(module), function)
    finally:
        sys.path.remove(str(folder))


# Answer extractors: a completion -> the answer it gives (None: it gives none)

_GROUPED_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")


def raw_answer(text: str) -> str:
    """The completion itself, stripped (the default: every completion is an answer)."""
    return text.strip()


def last_number(text: str) -> str | None:
    """The last number in the text, canonical: thousands separators dropped, `42.0` and
    `42` alike (`42`), `3.50` as `3.5`; None if there is none."""
    numbers = _GROUPED_NUMBER.findall(text)
    if not numbers:
        return None
    value = float(numbers[-1].replace(",", ""))
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def regex_extractor(pattern: str) -> Extractor:
    """The first match of `pattern` in the text: its first group if it has groups, else
    the whole match; stripped. None where it does not match (or the group did not take
    part)."""
    compiled = re.compile(pattern)

    def extract(text: str) -> str | None:
        match = compiled.search(text)
        if match is None:
            return None
        found = match.group(1) if compiled.groups else match.group(0)
        return None if found is None else found.strip()

    return extract


EXTRACTORS: dict[str, Extractor] = {"last_number": last_number}


def load_extractor(spec: str | dict[str, str] | None,
                   folder: str | Path | None = None) -> Extractor:
    """An extractor from its task.yaml form: None (the stripped text), a built-in name
    (`last_number`), `{"regex": PATTERN}`, or a user function "module:function" imported
    like `load_metric`'s. A user function's result must be a string or None."""
    if spec is None:
        return raw_answer
    if isinstance(spec, dict):
        return regex_extractor(spec["regex"])
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]
    function = load_metric(spec, folder) if ":" in spec else None
    if function is None:
        raise ValueError(f"Unknown answer extractor {spec!r}; use one of {list(EXTRACTORS)}, "
                         "{regex: PATTERN} or 'module:function'.")

    def checked(text: str) -> str | None:
        answer = function(text)
        if answer is not None and not isinstance(answer, str):
            raise TypeError(f"answer extractor {spec} returned {type(answer).__name__}; "
                            "return a string, or None where the text holds no answer")
        return answer

    return checked


# Aggregators: n answers -> one answer


def majority_vote(answers: Sequence[Hashable]) -> Hashable:
    """The most frequent answer; ties go to the answer seen first."""
    return Counter(answers).most_common(1)[0][0]


def best_of_n(answers: Sequence[str], scores: Sequence[float] | Callable[[str], float]) -> str:
    """The answer with the highest score: given per answer (reward-model values) or computed
    by a verifier function. Ties go to the earliest answer."""
    values = [scores(a) for a in answers] if callable(scores) else list(scores)
    return answers[int(np.argmax(values))]


# Estimators: expected score of an aggregator over a uniformly random k-subset of N samples


@functools.lru_cache(maxsize=1 << 16)
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k),
    in the numerically stable product form of Chen et al. 2021 (Codex, Fig. 3). Kept for
    the latest 65,536 (n, c, k): a table's items repeat few of them (its models' every item
    has the same n, and c lies in 0..n), and scoring every plan asks for each again and
    again."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def expected_majority_at_k(answers: Sequence[Hashable], correct: Sequence[float], k: int,
                           *, abstain: Hashable = _NOTHING, min_count: int = 0) -> float:
    """Expected correctness of the majority answer of a random k-subset of `answers`, drawn
    without replacement, with ties broken uniformly at random.

    `correct[i]` scores sample i (1/0 or partial credit); equal answers must score equally.
    Samples whose answer is `abstain` (e.g. None: the extractor found no answer) never win
    a vote: the majority is taken over the others, and a subset of abstentions only scores
    the abstentions' own value. With `min_count`, only subsets whose winner was drawn at least
    that many times count (a cascade keeps those; an abstentions-only subset has count 0).
    Exact and without enumerating subsets: for each correct answer g and each count t it may
    reach in the subset, count the ways the other answers fill the remaining k - t places with
    none above t, tracking how many tie at t (a tie among j + 1 answers is won with prob.
    1/(j + 1)). Cost grows with sum(count**2) over answers, not with C(N, k). Beyond
    `_FLOAT_COUNTS` samples the same recursion runs on shares of the draws instead of counts
    (the same to 1e-12), which no number of samples overflows, over the counts t that a subset
    draws with a chance above 1e-16.
    """
    n = len(answers)
    _check_k(n, k)
    counts = Counter(answers)
    silent = counts.pop(abstain, 0)  # abstentions: never a winner, never a tie
    value = _answer_values(answers, correct)
    # up to _FLOAT_COUNTS samples, subsets are counted (exactly, every count below 2**n);
    # beyond, each draw's share of them is (C(2100, 256) is above a float's range)
    counted = n <= _FLOAT_COUNTS
    won = 0.0  # subsets' (or shares') sum of the winner's value, fractional for ties
    for g, m_g in counts.items():
        if value[g] == 0:
            continue
        others = [m for a, m in counts.items() if a != g]
        for t in range(max(1, min_count, k - (n - m_g)), min(m_g, k) + 1):
            if counted:
                won += value[g] * math.comb(m_g, t) * _ways_others_at_most(others, t, k - t,
                                                                           silent)
            else:
                drawn = _log_comb(m_g, t) + _log_comb(n - m_g, k - t) - _log_comb(n, k)
                if drawn > _NEGLIGIBLE:  # the counts t a k-subset draws g with some chance
                    won += value[g] * math.exp(drawn) * _share_others_at_most(others, t,
                                                                              k - t, silent)
    if silent >= k and value.get(abstain, 0) and min_count <= 0:  # only abstentions drawn
        won += value[abstain] * (math.comb(silent, k) if counted
                                 else math.exp(_log_comb(silent, k) - _log_comb(n, k)))
    return won / math.comb(n, k) if counted else won


def expected_best_of_k(scores: Sequence[float], correct: Sequence[float], k: int) -> float:
    """Expected correctness of the top-scoring sample of a random k-subset, drawn without
    replacement, ties broken uniformly at random.

    Sorted by score, the sample at rank r (r samples below it) is the subset's maximum with
    probability C(r, k-1) / C(N, k). Samples with equal scores share their probability mass
    and contribute their mean correctness.
    """
    n = len(scores)
    _check_k(n, k)
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores, dtype=float)[order]
    sorted_correct = np.asarray(correct, dtype=float)[order]
    total = math.comb(n, k)
    expected, rank = 0.0, 0
    while rank < n:
        end = rank + 1
        while end < n and sorted_scores[end] == sorted_scores[rank]:
            end += 1
        p_max = sum(math.comb(r, k - 1) for r in range(rank, end)) / total
        expected += p_max * float(sorted_correct[rank:end].mean())
        rank = end
    return expected


def score_curve(
    per_item_samples: Sequence[Sequence[str]],
    labels: Sequence[str],
    metric: Metric,
    aggregator: Aggregator,
    ks: Sequence[int] | None = None,
    scores: Sequence[Sequence[float]] | None = None,
) -> dict[int, float]:
    """Mean over items of the expected aggregated score with k samples, for each k in `ks`
    (default 1..N), from one draw of N samples per item.

    aggregator: "majority" (vote over stripped texts), "best_of_n" (highest of `scores`, one
    per sample, e.g. verifier rewards) or "pass" (oracle: the best sample's metric, pass@k for
    0/1 metrics).
    """
    if aggregator == "best_of_n" and scores is None:
        raise ValueError("aggregator 'best_of_n' needs scores, one per sample.")
    n = min(len(samples) for samples in per_item_samples)
    ks = list(range(1, n + 1)) if ks is None else list(ks)
    totals = dict.fromkeys(ks, 0.0)
    for i, (samples, label) in enumerate(zip(per_item_samples, labels, strict=True)):
        correct = [metric(s, label) for s in samples]
        for k in ks:
            if aggregator == "majority":
                totals[k] += expected_majority_at_k([s.strip() for s in samples], correct, k)
            elif aggregator == "best_of_n":
                totals[k] += expected_best_of_k(scores[i], correct, k)
            else:
                totals[k] += expected_best_of_k(correct, correct, k)
    return {k: total / len(per_item_samples) for k, total in totals.items()}


def _ways_others_at_most(others: list[int], t: int, rest: int, silent: int = 0) -> float:
    """Sum over ways to draw `rest` samples from answer groups of sizes `others` (and
    `silent` abstentions) with no group drawn more than t times, each way weighted by
    1/(1 + number of groups drawn exactly t)."""
    # Groups smaller than t can never tie or exceed, nor can abstentions: together they are
    # one binomial pool.
    contenders = [m for m in others if m >= t]
    pool = sum(others) - sum(contenders) + silent
    # ways[s, j]: ways to draw s samples so far with j contender groups drawn exactly t times.
    ways = np.zeros((rest + 1, len(contenders) + 1))
    ways[:, 0] = [math.comb(pool, s) for s in range(rest + 1)]
    for m in contenders:
        new = np.zeros_like(ways)
        for x in range(min(t, rest + 1)):  # this group drawn x < t times
            new[x:] += math.comb(m, x) * ways[: rest + 1 - x]
        if t <= rest:  # drawn exactly t times: one more tie
            new[t:, 1:] += math.comb(m, t) * ways[: rest + 1 - t, :-1]
        ways = new
    return float(ways[rest] @ (1.0 / np.arange(1, len(contenders) + 2)))


def _share_others_at_most(others: list[int], t: int, rest: int, silent: int = 0
                          ) -> float:
    """`_ways_others_at_most` divided by the number of ways to draw `rest` of those samples:
    the probability that a random draw takes no group more than t times, weighted alike."""
    # Groups smaller than t can never tie or exceed, nor can abstentions: together they are
    # one pool, drawn from freely.
    contenders = [m for m in others if m >= t]
    size = sum(others) - sum(contenders) + silent  # samples of the groups added so far
    s = np.arange(rest + 1)[:, None]
    # p[s, j]: of the ways to draw s samples from the groups so far, the share that draws
    # none more than t times and j contenders exactly t times
    p = np.zeros((rest + 1, len(contenders) + 1))
    p[: size + 1, 0] = 1.0
    for m in contenders:
        # x < t of this group and s - x of the others: a hypergeometric share of the s
        x = np.arange(min(t, rest + 1))[None, :]
        ok = (x <= s) & (x <= m) & (s - x <= size) & (s <= size + m)
        share = np.exp(np.where(ok, _log_comb(m, x) + _log_comb(size, s - x)
                                - _log_comb(size + m, s), -np.inf))
        new = np.einsum("sx,sxj->sj", share, p[np.clip(s - x, 0, None)])
        if t <= rest:  # drawn exactly t times: one more tie
            tie = s[t:, 0]
            ok_t = (tie - t <= size) & (tie <= size + m)
            share_t = np.exp(np.where(ok_t, _log_comb(m, t) + _log_comb(size, tie - t)
                                      - _log_comb(size + m, tie), -np.inf))
            new[t:, 1:] += share_t[:, None] * p[: rest + 1 - t, :-1]
        p, size = new, size + m
    return float(p[rest] @ (1.0 / np.arange(1, len(contenders) + 2)))


def _log_comb(a: int | np.ndarray, b: int | np.ndarray) -> np.ndarray:
    """log C(a, b) (elementwise), read from a table of log factorials; any value where b is
    outside 0..a (the callers mask those)."""
    table = _log_factorials(max(1024, 1 << int(np.max(a)).bit_length()))  # few sizes
    b = np.clip(b, 0, a)
    return table[a] - table[b] - table[a - b]


@functools.cache
def _log_factorials(top: int) -> np.ndarray:
    """log k! for k = 0 .. top (read-only: it is shared)."""
    table = np.array([math.lgamma(k + 1) for k in range(top + 1)])
    table.flags.writeable = False
    return table


def _answer_values(answers: Sequence[Hashable], correct: Sequence[float]) -> dict[Hashable, float]:
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} correctness values.")
    value: dict[Hashable, float] = {}
    for answer, c in zip(answers, correct, strict=True):
        if value.setdefault(answer, c) != c:
            raise ValueError(f"Answer {answer!r} is scored both {value[answer]} and {c}.")
    return value


def _check_k(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of samples), got {k}.")


def _last_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def _tokens(text: str) -> list[str]:
    return text.lower().translate(str.maketrans("", "", string.punctuation)).split()
