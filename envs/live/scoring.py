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
  is the best-scoring of the n (the earliest on ties), so it needs the stage's gold output.
"""

from __future__ import annotations

from collections.abc import Sequence

from tools.evaluate import (
    Extractor,
    Metric,
    expected_best_of_k,
    expected_majority_at_k,
    majority_vote,
)

AGGREGATORS = ("first", "majority", "oracle")

Answer = str | None  # what a completion answers; None: the extractor found nothing


def label_answer(label: str, extract: Extractor) -> str:
    """A gold output in the form answers are compared in: its extracted answer, or the
    stripped label where the extractor finds none (a label that is the bare answer)."""
    answer = extract(label)
    return label.strip() if answer is None else answer


def expected_score(samples: Sequence[Sequence[Answer]], labels: Sequence[str], metric: Metric,
                   aggregator: str, n: int) -> float:
    """Mean over items of the expected score of `aggregator` with `n` of the N answers."""
    total = 0.0
    for answers, label in zip(samples, labels, strict=True):
        correct = [metric(a or "", label) for a in answers]
        if aggregator == "first":
            total += sum(correct) / len(correct)
        elif aggregator == "majority":
            total += expected_majority_at_k(list(answers), correct, n, abstain=None)
        else:
            total += expected_best_of_k(correct, correct, n)
    return total / len(samples)


def aggregate(samples: Sequence[Answer], aggregator: str, n: int, metric: Metric,
              label: str | None = None) -> str:
    """The answer of the first `n` samples ('' where none answers); `label` is needed for
    `oracle`."""
    head = list(samples[:n])
    if aggregator == "first":
        return head[0] or ""
    if aggregator == "majority":
        votes = [a for a in head if a is not None]
        return str(majority_vote(votes)) if votes else ""
    if label is None:
        raise ValueError("the oracle aggregator needs the gold label")
    return max((a or "" for a in head), key=lambda s: metric(s, label))
