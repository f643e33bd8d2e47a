"""tools.verifier: a tiny verifier trained on a seeded toy, then its re-ranking against majority
vote on held-out items; and the aggregators and estimators on hand-made cases."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel

from tools.evaluate import (
    best_of_n,
    expected_best_of_k,
    expected_majority_at_k,
    numeric_match,
)
from tools.infer import TransformersSampler
from tools.train import TrainConfig, load_model, tokenize_example, train
from tools.verifier import (
    NO,
    YES,
    Verifier,
    continue_verifier,
    expected_weighted_majority_at_k,
    final_answer,
    roc_auc,
    train_verifier,
    verifier_examples,
    weighted_majority,
)

pytestmark = pytest.mark.usefixtures("one_thread")

Item = tuple[str, list[str], str]  # question, sampled solutions, reference answer


def _no_carry(a: int, b: int) -> int:
    """a + b with every carry dropped, digit by digit."""
    return int("".join(str((int(x) + int(y)) % 10) for x, y in zip(f"{a:03}", f"{b:03}",
                                                                      strict=True)))


def toy_items(count: int, n: int, seed: int) -> list[Item]:
    """Additions "a+b?" with n sampled solutions each, from a generator whose wrong answers are
    often the mode but recognisably wrong, as a working verifier would find them:

    - right, with its work shown, " a+b=c" (probability 0.2-0.5 per item);
    - the generator's shortcut, " c'", no work and the carries dropped: one answer per item,
      so it is often the majority (0.3-0.6), and wrong (every item's sum has a carry);
    - a slip with the work shown, " a+b=c+e", e random (the rest): wrong, but looks like a
      right one to a verifier that cannot add, and scattered over many answers.
    """
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        while _no_carry(a, b) == a + b:  # sums with a carry: the shortcut is always wrong
            a, b = rng.randint(10, 999), rng.randint(10, 999)
        right, shortcut = rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.6)
        samples = []
        for _ in range(n):
            r = rng.random()
            if r < right:
                samples.append(f" {a}+{b}={a + b}")
            elif r < right + shortcut:
                samples.append(f" {_no_carry(a, b)}")
            else:
                samples.append(f" {a}+{b}={a + b + rng.choice([-1, 1]) * rng.randint(1, 30)}")
        items.append((f"{a}+{b}?", samples, str(a + b)))
    return items


def _correct(items: list[Item]) -> list[list[float]]:
    return [[numeric_match(s, ref) for s in samples] for _, samples, ref in items]


@pytest.fixture(scope="module")
def verifier(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Verifier:
    """A full fine-tune of the tiny model on 200 toy items x 8 labelled samples (~5 s)."""
    items = toy_items(200, 8, seed=1)
    examples = verifier_examples([q for q, _, _ in items], [s for _, s, _ in items],
                                 [ref for _, _, ref in items], numeric_match)
    out = tmp_path_factory.mktemp("verifier")
    train_verifier(tiny_base, examples, out, TrainConfig(steps=150, batch_size=16, lr=3e-3))
    return Verifier(out, batch_size=64)


@pytest.fixture(scope="module")
def held_out(verifier: Verifier) -> tuple[list[Item], list[list[float]], list[list[float]]]:
    """100 items the verifier never saw, their verifier scores and correctness."""
    items = toy_items(100, 8, seed=2)
    return items, [verifier.score(q, s) for q, s, _ in items], _correct(items)


def test_verifier_ranks_right_answers_above_wrong_ones(held_out) -> None:
    items, scores, correct = held_out
    auc = roc_auc([s for row in scores for s in row], [c for row in correct for c in row])
    # A verifier that sees only whether work is shown reaches 0.88 here (slips look right);
    # trained: 0.90. The untrained base also ranks by form by accident (0.82), but its scores
    # barely separate (0.21 right, 0.16 shortcut): the levels are what training sets.
    assert auc > 0.8, f"held-out AUC {auc:.3f} (measured 0.90)"
    by_kind: dict[str, list[float]] = {"right": [], "shortcut": []}
    for (_, samples, _), row, right in zip(items, scores, correct, strict=True):
        for sample, score, ok in zip(samples, row, right, strict=True):
            if ok or "+" not in sample:
                by_kind["right" if ok else "shortcut"].append(score)
    right, shortcut = np.mean(by_kind["right"]), np.mean(by_kind["shortcut"])
    assert right > 0.4 and shortcut < 0.1, f"mean score: right {right:.3f}, shortcut {shortcut:.3f}"


def test_weighted_majority_beats_majority_vote_at_equal_n(held_out) -> None:
    items, scores, correct = held_out
    for k in (4, 8):
        majority = np.mean([expected_majority_at_k([x.strip() for x in samples], c, k)
                            for (_, samples, _), c in zip(items, correct, strict=True)])
        weighted = np.mean([expected_weighted_majority_at_k(samples, s, c, k)
                            for (_, samples, _), s, c in zip(items, scores, correct, strict=True)])
        # The shortcut is the mode; the verifier's weight moves the choice to the shown work
        # (measured: n=4 0.69 against 0.38, n=8 0.88 against 0.35; untrained base 0.46, 0.45).
        assert weighted > majority + 0.2, f"n={k}: weighted {weighted:.3f}, vote {majority:.3f}"
    # The paper's finding: clusters and verifier together beat the verifier alone, here because
    # slips look right to it but scatter over many answers (best of 8 measured 0.55).
    best = np.mean([expected_best_of_k(s, c, 8) for s, c in zip(scores, correct, strict=True)])
    assert weighted > best + 0.1, f"n=8: weighted {weighted:.3f}, verifier best-of-n {best:.3f}"


def test_verifier_best_of_n_beats_one_sample(held_out) -> None:
    items, scores, correct = held_out
    single = np.mean([np.mean(c) for c in correct])
    best = np.mean([expected_best_of_k(s, c, 4) for s, c in zip(scores, correct, strict=True)])
    assert best > single + 0.1, f"best of 4 {best:.3f}, one sample {single:.3f}"  # 0.62, 0.37


def test_scorer_works_with_best_of_n_and_batches_do_not_change_scores(
    verifier: Verifier, held_out
) -> None:
    items, scores, _ = held_out
    for (question, samples, _), batched in zip(items[:3], scores[:3], strict=True):
        one_by_one = [verifier.scorer(question)(s) for s in samples]
        np.testing.assert_allclose(one_by_one, batched, rtol=1e-4, atol=1e-6)
        assert best_of_n(samples, verifier.scorer(question)) == samples[int(np.argmax(batched))]
    assert all(0 < s < 1 for row in scores for s in row)


def test_verifier_needs_labels_that_differ_in_a_token(tiny_base: Path) -> None:
    with pytest.raises(ValueError, match="differ in a token"):
        Verifier(tiny_base, yes=" no", no=" no!")


def test_verifier_examples_label_by_metric() -> None:
    examples = verifier_examples(["1+2?"], [[" 1+2=3", " 4"]], ["3"], numeric_match)
    assert examples == [{"prompt": "1+2? 1+2=3 Correct?", "completion": YES},
                        {"prompt": "1+2? 4 Correct?", "completion": NO}]


def test_weighted_majority_sums_scores_per_final_answer() -> None:
    answers = ["x=5", "5", "so 7", "7.0", "7.", "nine"]
    scores = [0.9, 0.8, 0.1, 0.2, 0.3, 0.95]
    assert [final_answer(a) for a in answers] == ["5.0", "5.0", "7.0", "7.0", "7.0", "nine"]
    assert weighted_majority(answers, scores) == "x=5"  # 1.7 beats 0.6 and 0.95; its top member
    assert weighted_majority(answers, [0.1] * 6) == "so 7"  # equal scores: majority, first member
    # only the top_k largest clusters compete (the paper's K): "9" is out at K = 2
    assert weighted_majority(["9", "5", "5", "7", "7"], [2.0, 0.5, 0.5, 0.1, 0.1], top_k=2) == "5"
    assert weighted_majority(["9", "5", "5", "7", "7"], [2.0, 0.5, 0.5, 0.1, 0.1]) == "9"
    assert weighted_majority(["a", "b"], [0.5, 0.5]) == "a"  # ties: first cluster


def test_expected_weighted_majority_averages_over_subsets() -> None:
    answers, scores = ["1", "2", "2", "3", "1"], [0.9, 0.3, 0.3, 0.2, 0.1]
    correct = [1.0, 0.0, 0.0, 0.0, 1.0]
    # every k-subset by hand (equal answers are equally correct, so the first copy will do)
    for k in range(1, 6):
        values = []
        for subset in itertools.combinations(range(5), k):
            sub = [answers[i] for i in subset]
            chosen = weighted_majority(sub, [scores[i] for i in subset])
            values.append(correct[subset[sub.index(chosen)]])
        assert expected_weighted_majority_at_k(answers, scores, correct, k) == pytest.approx(
            np.mean(values))
    assert expected_weighted_majority_at_k(answers, scores, correct, 1) == pytest.approx(0.4)
    sampled = expected_weighted_majority_at_k(answers, scores, correct, 3, max_subsets=5, seed=1)
    assert sampled in {i / 5 for i in range(6)}  # a Monte Carlo mean of 5 subsets
    with pytest.raises(ValueError, match="1 <= k"):
        expected_weighted_majority_at_k(answers, scores, correct, 6)


def test_roc_auc_is_the_share_of_correctly_ordered_pairs() -> None:
    rng = random.Random(0)
    scores = [rng.choice([0.1, 0.2, 0.5, 0.7]) for _ in range(40)]  # many ties
    labels = [float(rng.random() < 0.4) for _ in range(40)]
    pairs = [(p, q) for p, lp in zip(scores, labels, strict=True) if lp
             for q, lq in zip(scores, labels, strict=True) if not lq]
    by_hand = np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in pairs])
    assert roc_auc(scores, labels) == pytest.approx(by_hand)
    assert roc_auc([0.9, 0.1], [1, 0]) == 1.0 and roc_auc([0.1, 0.9], [1, 0]) == 0.0
    with pytest.raises(ValueError, match="both"):
        roc_auc([0.5], [1])


def _solutions(items: list[Item]) -> list[dict[str, str]]:
    """Generation examples: each question answered with its work shown, " a+b=c"."""
    return [{"prompt": q, "completion": f" {q[:-1]}={ref}"} for q, _, ref in items]


def _generation_loss(artifact: Path, examples: list[dict[str, str]]) -> float:
    """Mean loss per completion token of `examples` under the model: how well it generates."""
    model, tokenizer = load_model(artifact)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            f = tokenize_example(tokenizer, ex, None)
            labels = torch.tensor([f["labels"]])
            total += model(input_ids=torch.tensor([f["input_ids"]]), labels=labels).loss.item() \
                * (labels != -100).sum().item()
            tokens += (labels != -100).sum().item()
    return total / tokens


@pytest.fixture(scope="module")
def sequential(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Liu et al.'s sequential multi-task fine-tuning on the toy: a generator (full fine-tune
    on 200 worked solutions), then that model trained further on the verifier's examples
    (with generation examples replayed, `continue_verifier`), and, for contrast, without (~50 s)."""
    root = tmp_path_factory.mktemp("sequential")
    generation = _solutions(toy_items(200, 1, seed=3))
    generator = train(tiny_base, {"gen": generation}, {"gen": 1.0}, root / "generator",
                      TrainConfig(steps=150, batch_size=16, lr=3e-3)).artifact
    items = toy_items(200, 8, seed=1)
    examples = verifier_examples([q for q, _, _ in items], [s for _, s, _ in items],
                                 [ref for _, _, ref in items], numeric_match)
    config = TrainConfig(steps=150, batch_size=16, lr=3e-3)
    continue_verifier(generator, examples, root / "sequential", config, generation=generation)
    continue_verifier(generator, examples, root / "forgetful", config)
    return {"base": tiny_base, "generator": generator, "sequential": root / "sequential",
            "forgetful": root / "forgetful"}


def test_sequential_model_generates_and_ranks_its_answers(sequential: dict[str, Path]) -> None:
    model = sequential["sequential"]
    assert (model / "model.safetensors").is_file()  # one model: full weights, no adapter
    assert not (model / "adapter_config.json").exists()
    # It ranks right above wrong on held-out items as the separate verifier does (0.90).
    held = toy_items(100, 8, seed=2)
    verifier = Verifier(model, batch_size=64)
    scores = [verifier.score(q, s) for q, s, _ in held]
    auc = roc_auc([s for row in scores for s in row], [c for row in _correct(held) for c in row])
    assert auc > 0.75, f"held-out AUC {auc:.3f} (measured 0.87)"
    # It still generates: its loss on held-out worked solutions stays at the generator's,
    # far below the base's, while verification data alone makes it forget (measured: base
    # 3.26, generator 1.55, sequential 1.07, without the replayed generation examples 6.33).
    held_gen = _solutions(toy_items(50, 1, seed=4))
    loss = {name: _generation_loss(path, held_gen) for name, path in sequential.items()}
    assert loss["sequential"] < loss["generator"] + 0.2 < loss["base"] - 0.5, loss
    assert loss["forgetful"] > loss["sequential"] + 1.0, loss
    # ... and greedy decoding writes solutions (" a+b=c"), not verdicts (" yes" / " no").
    prompts = [q for q, _, _ in held[:20]]
    texts = TransformersSampler(model).sample(prompts, 1, max_new_tokens=16, temperature=0).texts
    solved = [bool(re.match(r" \d+\+\d+=\d+", t[0])) for t in texts]
    assert sum(solved) >= 18, texts


def test_adapters_are_merged_into_one_continued_model(tiny_base: Path, tmp_path: Path) -> None:
    """A LoRA generator is merged before it trains further, and a LoRA trained on it after:
    the result is one plain model folder, which differs from the generator."""
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8)
    generator = train(tiny_base, {"gen": _solutions(toy_items(8, 1, seed=5))}, {"gen": 1.0},
                      tmp_path / "generator", TrainConfig(steps=2, batch_size=4, lr=3e-2),
                      lora).artifact
    examples = [{"prompt": "1+1? 2 Correct?", "completion": YES},
                {"prompt": "1+1? 3 Correct?", "completion": NO}]
    result = continue_verifier(generator, examples, tmp_path / "out",
                               TrainConfig(steps=2, batch_size=2, lr=3e-2), lora)
    assert result.artifact == tmp_path / "out" and len(result.losses) == 2
    assert sorted(p.name for p in result.artifact.iterdir() if p.is_dir()) == []
    assert not (result.artifact / "adapter_config.json").exists()
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        continued, _ = load_model(result.artifact)
        before, _ = load_model(generator)
        assert not isinstance(continued, PeftModel)
        assert not torch.allclose(continued(input_ids=ids).logits, before(input_ids=ids).logits)


def test_a_soft_prompt_generator_cannot_be_continued(tiny_base: Path, tmp_path: Path) -> None:
    from peft import PromptTuningConfig

    soft = train(tiny_base, {"gen": _solutions(toy_items(8, 1, seed=5))}, {"gen": 1.0},
                 tmp_path / "soft", TrainConfig(steps=1, batch_size=2),
                 PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)).artifact
    with pytest.raises(ValueError, match="soft prompt"):
        continue_verifier(soft, [{"prompt": "1+1? 2 Correct?", "completion": YES}],
                          tmp_path / "out")
