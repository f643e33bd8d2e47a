"""From N samples per item to a plan's score (expected, any n <= N) and to the concrete
answer passed downstream (the first n samples, aggregated; deterministic).

Aggregators:
- `first`: the first sample, whatever n (score: mean single-sample accuracy);
- `majority`: majority vote over stripped texts, ties to the earliest (score: expected
  majority@n over random n-subsets, `tools.evaluate.expected_majority_at_k`);
- `oracle`: best of n with a perfect verifier (score: unbiased pass@n); its concrete answer
  is the best-scoring of the n (the earliest on ties), so it needs the stage's gold output.
"""

from __future__ import annotations

from collections.abc import Sequence

from tools.evaluate import Metric, majority_vote, score_curve

AGGREGATORS = ("first", "majority", "oracle")


def expected_score(samples: Sequence[Sequence[str]], labels: Sequence[str], metric: Metric,
                   aggregator: str, n: int) -> float:
    """Mean over items of the expected score of `aggregator` with `n` of the N samples."""
    if aggregator == "first":
        return score_curve(samples, labels, metric, "majority", ks=[1])[1]
    kind = "pass" if aggregator == "oracle" else "majority"
    return score_curve(samples, labels, metric, kind, ks=[n])[n]


def aggregate(samples: Sequence[str], aggregator: str, n: int, metric: Metric,
              label: str | None = None) -> str:
    """The answer of the first `n` samples (stripped); `label` is needed for `oracle`."""
    head = [s.strip() for s in samples[:n]]
    if aggregator == "first":
        return head[0]
    if aggregator == "majority":
        return str(majority_vote(head))
    if label is None:
        raise ValueError("the oracle aggregator needs the gold label")
    return max(head, key=lambda s: metric(s, label))
