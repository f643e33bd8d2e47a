"""From N samples per item to a plan's score (expected, any n <= N) and to the concrete
answer passed downstream (the first n samples, aggregated; deterministic).

Samples arrive as answers: the subtask's `answer:` extractor applied to each completion
(`tools.evaluate.load_extractor`; default: the stripped text). An extractor that finds no
answer gives None: such a sample never wins a vote and scores as the empty answer. Labels
are compared in the same form (`label_answer`).

Aggregators:
- `first`: the first sample, whatever n (score: mean single-sample accuracy);
- `majority`: majority vote over the answers, ties to the earliest (score: expected
  majority@n over random n-subsets, `tools.evaluate.expected_majority_at_k`);
- `oracle`: best of n with a perfect verifier (score: unbiased pass@n); its concrete answer
  is the best-scoring of the n (the earliest on ties), so it needs the stage's gold output;
- `verifier`: verifier-weighted majority (Liu et al. 2023, their best recipe): the answer
  cluster with the largest sum of a trained verifier's scores, its best-scored sample
  (score: `tools.verifier.expected_weighted_majority_at_k` over n-subsets);
- `verifier_best`: best of n by the verifier's score (score: `expected_best_of_k`).
  A sample without an answer scores -1 for both, below every answer (as it never wins a
  vote); at n = 1 both are the one sample.
"""

from __future__ import annotations

from collections.abc import Sequence

from tools.evaluate import (
    Extractor,
    Metric,
    best_of_n,
    expected_best_of_k,
    expected_majority_at_k,
    majority_vote,
)
from tools.verifier import expected_weighted_majority_at_k, weighted_majority

VERIFIED = ("verifier", "verifier_best")
AGGREGATORS = ("first", "majority", "oracle", *VERIFIED)

Answer = str | None  # what a completion answers; None: the extractor found nothing


def label_answer(label: str, extract: Extractor) -> str:
    """A gold output in the form answers are compared in: its extracted answer, or the
    stripped label where the extractor finds none (a label that is the bare answer)."""
    answer = extract(label)
    return label.strip() if answer is None else answer


def expected_score(samples: Sequence[Sequence[Answer]], labels: Sequence[str], metric: Metric,
                   aggregator: str, n: int,
                   scores: Sequence[Sequence[float]] | None = None) -> float:
    """Mean over items of the expected score of `aggregator` with `n` of the N answers;
    `scores` (the verifier's, one per sample) for the verifier aggregators at n > 1."""
    total = 0.0
    for i, (answers, label) in enumerate(zip(samples, labels, strict=True)):
        correct = [metric(a or "", label) for a in answers]
        if aggregator == "first" or (aggregator in VERIFIED and n == 1):
            total += sum(correct) / len(correct)
        elif aggregator == "majority":
            total += expected_majority_at_k(list(answers), correct, n, abstain=None)
        elif aggregator in VERIFIED:
            if scores is None:
                raise ValueError(f"the {aggregator} aggregator needs the verifier's scores")
            keys, values = _clusters(answers, scores[i])
            total += (expected_weighted_majority_at_k(keys, values, correct, n, key=_same)
                      if aggregator == "verifier" else expected_best_of_k(values, correct, n))
        else:
            total += expected_best_of_k(correct, correct, n)
    return total / len(samples)


def expected_cascade(answers: Sequence[Answer], label: str, metric: Metric, n: int,
                     min_agreeing: int, escalated: float) -> tuple[float, float]:
    """One item's expected score, and probability of escalation, of a majority vote over a
    random n-subset of its N answers that escalates where fewer than `min_agreeing` of the n
    agree with the vote (`planner.cascade`), scoring `escalated` (the strong plan's expected
    score on the item) there."""
    correct = [metric(a or "", label) for a in answers]
    kept = expected_majority_at_k(list(answers), correct, n, abstain=None,
                                  min_count=min_agreeing)
    keep = 1.0 if min_agreeing <= 0 else expected_majority_at_k(
        list(answers), [1.0] * len(answers), n, abstain=None, min_count=min_agreeing)
    return kept + (1 - keep) * escalated, 1 - keep


def _clusters(answers: Sequence[Answer], scores: Sequence[float]) -> tuple[list, list[float]]:
    """Cluster keys (the answer; a sample without one is a cluster of its own) and scores
    (-1 for a sample without an answer: below any answer's)."""
    keys = [a if a is not None else (None, i) for i, a in enumerate(answers)]
    return keys, [s if a is not None else -1.0 for a, s in zip(answers, scores, strict=True)]


def _same(key: object) -> object:
    return key


def aggregate(samples: Sequence[Answer], aggregator: str, n: int, metric: Metric,
              label: str | None = None, scores: Sequence[float] | None = None) -> str:
    """The answer of the first `n` samples ('' where none answers); `label` is needed for
    `oracle`, the verifier's `scores` (one per sample) for `verifier` and `verifier_best`."""
    head = list(samples[:n])
    if aggregator == "first" or (aggregator in VERIFIED and n == 1):
        return head[0] or ""
    if aggregator == "majority":
        votes = [a for a in head if a is not None]
        return str(majority_vote(votes)) if votes else ""
    if aggregator in VERIFIED:
        if scores is None:
            raise ValueError(f"the {aggregator} aggregator needs the verifier's scores")
        keys, values = _clusters(head, scores[:n])
        chosen = (weighted_majority(keys, values, key=_same) if aggregator == "verifier"
                  else best_of_n(keys, values))
        return chosen if isinstance(chosen, str) else ""
    if label is None:
        raise ValueError("the oracle aggregator needs the gold label")
    return max((a or "" for a in head), key=lambda s: metric(s, label))
