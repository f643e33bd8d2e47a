"""Verifier re-ranking of n sampled solutions (Liu et al. 2023, "Improving Large Language Model
Fine-tuning for Solving Math Problems").

The paper fine-tunes an LLM as a solution evaluator on sampled solutions labelled by whether
their final answer is right, then uses it at test time on N candidates per problem. Plain
re-ranking takes the best-scored candidate; *solution-cluster re-ranking* groups the
candidates by final answer (the clusters majority voting counts), keeps the K largest and
picks the cluster with the highest total evaluator score. Majority voting and re-ranking each
help, and together (the cluster recipe) more than either.

How the code maps to it:
- `verifier_examples`: (question, sampled solution) pairs labelled by a metric against the
  reference, as prompt = question + solution + " Correct?" and completion " yes" / " no";
  `train_verifier` fine-tunes a causal LM on them with `tools.train` (every weight or any
  peft adapter; the loss on the completion is the classification objective).
- `continue_verifier`: the paper's sequential multi-task fine-tuning: the generator itself
  fine-tuned further on those examples, one model that both generates solutions and scores
  them (its verifier prompt ends in `SUFFIX`, which a generation prompt does not). Half of
  each batch replays generation examples: on verification data alone a small model forgets
  to generate (measured on the toy of tests/tools/test_verifier.py: it answers " no" to
  every question).
- `Verifier`: P(yes) / (P(yes) + P(no)) from the next-token logits where " yes" and " no"
  first differ (after their common prefix, e.g. the space of a character tokenizer).
  `Verifier.scorer(question)` is a per-answer function for `tools.evaluate.best_of_n`, which
  is verifier best-of-n (the paper's plain re-ranking); `expected_best_of_k` gives its
  expected score over n-subsets.
- `weighted_majority`: the cluster recipe: sum of scores per final-answer cluster, optionally
  among the `top_k` largest clusters only (the paper's K; None lets every cluster compete,
  i.e. verifier-weighted majority voting); `expected_weighted_majority_at_k` its expected
  correctness over random k-subsets of N samples, as `expected_majority_at_k` is for votes.
- `roc_auc`: how well scores rank right answers above wrong ones.

Example:
    >>> train_verifier("models/tiny", verifier_examples(qs, samples, golds, exact_match), "v")
    >>> verifier = Verifier("v")
    >>> weighted_majority(samples[0], verifier.score(qs[0], samples[0]))
"""

from __future__ import annotations

import itertools
import math
import random
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tools.evaluate import Metric

if TYPE_CHECKING:  # torch, peft and the training loop load where a verifier trains or scores
    from peft import PeftConfig

    from tools.train import Example, TrainConfig, TrainResult

SUFFIX, YES, NO = " Correct?", " yes", " no"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def verifier_prompt(question: str, solution: str, suffix: str = SUFFIX) -> str:
    """The text the verifier reads: question, solution, then the question it answers."""
    return question + solution + suffix


def verifier_examples(
    questions: Sequence[str],
    solutions: Sequence[Sequence[str]],
    references: Sequence[str],
    metric: Metric,
    *,
    suffix: str = SUFFIX,
    yes: str = YES,
    no: str = NO,
) -> list[Example]:
    """One training example per sampled solution: completion `yes` where `metric(solution,
    reference)` >= 0.5, else `no`."""
    return [
        {"prompt": verifier_prompt(q, s, suffix),
         "completion": yes if metric(s, ref) >= 0.5 else no}
        for q, samples, ref in zip(questions, solutions, references, strict=True)
        for s in samples
    ]


def train_verifier(
    base_model: str | Path,
    examples: list[Example],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    adapter: PeftConfig | None = None,
) -> TrainResult:
    """Fine-tune `base_model` on `verifier_examples` with `tools.train` (loss on the label;
    `config` defaults to `TrainConfig()`, `adapter` None trains every weight)."""
    from tools.train import TrainConfig, train

    return train(base_model, {"verify": examples}, {"verify": 1.0}, out_dir,
                 config or TrainConfig(), adapter)


def continue_verifier(
    generator: str | Path,
    examples: list[Example],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    adapter: PeftConfig | None = None,
    generation: list[Example] | None = None,
) -> TrainResult:
    """Sequential multi-task fine-tuning: the `generator` artifact (a model folder, or a LoRA
    adapter on one, merged into it first) fine-tuned further on `verifier_examples` and, as
    often, on `generation` examples (its own task's, so it keeps generating; None: none),
    saved in `out_dir` as one full-weights model that generates as any model does and scores
    with `Verifier(out_dir)`; an `adapter` trained here is merged into it too. A generator
    with a soft prompt is refused (ValueError): its prompt is not weights to train further."""
    from peft import PeftConfig

    from tools.train import SOFT_PROMPT, TrainConfig, train

    data = {"verify": examples, **({"generate": generation} if generation else {})}
    mixture = dict.fromkeys(data, 1.0)
    out, start = Path(out_dir), Path(generator)
    out.mkdir(parents=True, exist_ok=True)
    config = config or TrainConfig()
    soft = start / "adapter_config.json" if (start / "adapter_config.json").exists() \
        else start / SOFT_PROMPT / "adapter_config.json"
    if soft.exists() and PeftConfig.from_pretrained(soft.parent).is_prompt_learning:
        raise ValueError(f"{generator} answers with a soft prompt, which is not weights to "
                         "train further; continue a generator without one")
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        if (start / "adapter_config.json").exists():
            start = _merged(start, Path(tmp) / "generator")
        if adapter is None:
            return train(start, data, mixture, out, config)
        result = train(start, data, mixture, Path(tmp) / "adapter", config, adapter)
        _merged(result.artifact, out)
    return replace(result, artifact=out)


def _merged(adapter: Path, out: Path) -> Path:
    """A peft adapter merged into its base's weights, saved with its tokenizer in `out`."""
    from tools.train import load_model

    model, tokenizer = load_model(adapter)
    model.merge_and_unload().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


class Verifier:
    """Scores solutions with a verifier artifact (anything `tools.train.load_model` loads).

    Args:
        artifact: the trained verifier.
        suffix, yes, no: as it was trained (`verifier_examples`).
        batch_size: prompts per forward pass (memory: batch x length x vocabulary logits).
    """

    def __init__(self, artifact: str | Path, *, suffix: str = SUFFIX, yes: str = YES,
                 no: str = NO, batch_size: int = 16):
        import torch

        from tools.train import load_model

        self.model, self.tokenizer = load_model(artifact)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.suffix, self.batch_size = suffix, batch_size
        yes_ids = self.tokenizer(yes, add_special_tokens=False)["input_ids"]
        no_ids = self.tokenizer(no, add_special_tokens=False)["input_ids"]
        common = 0
        while common < min(len(yes_ids), len(no_ids)) and yes_ids[common] == no_ids[common]:
            common += 1
        if common == min(len(yes_ids), len(no_ids)):
            raise ValueError(f"{yes!r} and {no!r} must differ in a token, not only in length.")
        self._prefix = yes_ids[:common]  # fed after the prompt, as in training
        self._yes, self._no = yes_ids[common], no_ids[common]

    def score_prompts(self, prompts: Sequence[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) after each full verifier prompt."""
        import torch

        scores: list[float] = []
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                ids = [self.tokenizer(p)["input_ids"] + self._prefix
                       for p in prompts[start : start + self.batch_size]]
                width = max(len(row) for row in ids)
                # Right padding: under causal attention, pads after a row cannot change its logits.
                input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
                mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
                logits = self.model(input_ids=input_ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits
                last = logits[torch.arange(len(ids)), torch.tensor([len(row) - 1 for row in ids])]
                scores += torch.sigmoid(last[:, self._yes] - last[:, self._no]).float().tolist()
        return scores

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        """The verifier's score of each solution to `question`."""
        return self.score_prompts([verifier_prompt(question, s, self.suffix) for s in solutions])

    def scorer(self, question: str) -> Callable[[str], float]:
        """A one-solution scorer for `tools.evaluate.best_of_n(answers, scorer)`."""
        return lambda solution: self.score(question, [solution])[0]


def final_answer(text: str) -> str:
    """The key solutions are clustered by: the value of the last number in `text` ("7", "7.0"
    and "7." alike; thousands separators dropped), else the stripped text."""
    numbers = _NUMBER.findall(text.replace(",", ""))
    return str(float(numbers[-1])) if numbers else text.strip()


def weighted_majority(
    answers: Sequence[str],
    scores: Sequence[float],
    *,
    key: Callable[[str], Hashable] = final_answer,
    top_k: int | None = None,
) -> str:
    """Verifier-weighted majority: among the clusters of answers with equal `key` (the `top_k`
    largest by count, all if None), the one with the largest sum of scores; returns its
    best-scored answer. Ties go to the cluster, then the answer, seen first."""
    return answers[_weighted_choice([key(a) for a in answers], scores, top_k)]


def expected_weighted_majority_at_k(
    answers: Sequence[str],
    scores: Sequence[float],
    correct: Sequence[float],
    k: int,
    *,
    key: Callable[[str], Hashable] = final_answer,
    top_k: int | None = None,
    max_subsets: int = 2000,
    seed: int = 0,
) -> float:
    """Mean correctness of `weighted_majority` over the k-subsets of the N answers (each in
    its original order): all of them if there are at most `max_subsets`, else that many drawn
    uniformly with `seed` (a Monte Carlo estimate)."""
    n = len(answers)
    if not 1 <= k <= n or len(scores) != n or len(correct) != n:
        raise ValueError(f"need 1 <= k <= {n} and one score and correctness per answer.")
    keys = [key(a) for a in answers]
    if math.comb(n, k) <= max_subsets:
        subsets: Sequence[Sequence[int]] = list(itertools.combinations(range(n), k))
    else:
        rng = random.Random(seed)
        subsets = [sorted(rng.sample(range(n), k)) for _ in range(max_subsets)]
    total = 0.0
    for subset in subsets:
        chosen = _weighted_choice([keys[i] for i in subset], [scores[i] for i in subset], top_k)
        total += correct[subset[chosen]]
    return total / len(subsets)


def roc_auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Probability that a random positive (label >= 0.5) scores above a random negative, ties
    counting half (the Mann-Whitney form of the area under the ROC curve)."""
    values, positive = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float) >= 0.5
    pos, neg = values[positive], np.sort(values[~positive])
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs both positive and negative labels.")
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(pos) * len(neg)))


def _weighted_choice(keys: Sequence[Hashable], scores: Sequence[float],
                     top_k: int | None) -> int:
    """Index of the answer `weighted_majority` returns."""
    if len(keys) != len(scores) or not keys:
        raise ValueError(f"{len(keys)} answers but {len(scores)} scores (need >= 1 of each).")
    members: dict[Hashable, list[int]] = defaultdict(list)  # insertion order: first seen first
    for i, k in enumerate(keys):
        members[k].append(i)
    clusters = list(members.values())
    if top_k is not None:
        clusters = sorted(clusters, key=len, reverse=True)[:top_k]  # stable: first seen wins
        clusters.sort(key=lambda c: c[0])
    best = max(clusters, key=lambda c: sum(scores[i] for i in c))  # first of equal sums
    return max(best, key=lambda i: scores[i])
