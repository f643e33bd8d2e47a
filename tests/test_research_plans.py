"""Research methods as search options of a live task, trained for real on the shipped tiny
zoo model: verifier re-ranking (aggregators `verifier`, `verifier_best`; Liu et al. 2023) and
merged subtask fine-tunes (method kind `merge`; task arithmetic, TIES, DARE, Breadcrumbs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from envs.live.env import LiveEnvironment
from envs.live.tasks.make_data import write_jsonl
from planner.artifact import VerifierArtifact, artifact_of, verifier_of
from planner.cost import CostModel
from planner.draws import arm_of
from planner.errors import SpaceError, SpecError
from planner.export import _research_notes
from planner.methods import TOOLS, Merge
from planner.search.search_cost import SearchCost
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import load_spec
from tests.conftest import write_tiny_task
from tools.evaluate import exact_match, expected_best_of_k
from tools.merge import merge
from tools.train import load_model
from tools.verifier import Verifier, expected_weighted_majority_at_k
from tools.zoo import extraction_examples, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

P_GEN, P_VER = 1e5, 2e5  # catalogue params of the generator and the verifier model
PROMPT, OUTPUT, QUERIES = 10, 5, 1000
RATE = 9.89e14 * 0.4 * 3600  # FLOPs per GPU-hour: the default hardware at its utilisation
VERIFIER = {"model": "v", "method": "full-v", "items": 8, "samples": 2}
STEPS, BATCH = 20, 8  # the verifier's fine-tune
LORA = {"steps": 2, "batch_size": 4, "lr": 0.01, "lora_r": 4, "max_length": 32}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped zoo builds: `small` parses 3-digit word problems right about 3 times in 4
    at temperature 1 (so its samples disagree), `tiny` is the verifier's base."""
    zoo = tmp_path_factory.mktemp("zoo")
    return {"m": tiny_model("small", zoo), "v": tiny_model("tiny", zoo)}


def records(n: int, seed: int) -> list[dict[str, str]]:
    """Word problems in the zoo's pretraining format, with each stage's gold output."""
    out = []
    for ex in extraction_examples(n, seed):
        a, b = ex["completion"].split("+")
        out.append({"problem": ex["prompt"].removesuffix(" sum:"), "parse": ex["completion"],
                    "add": str(int(a) + int(b))})
    return out


def write_task(folder: Path, base: dict[str, Path], *, parse: dict | None = None) -> Path:
    """parse -> add: parse offers the verifier aggregators (two verifiers: a searched
    dimension) and a TIES merge of LoRA fine-tunes on parse's and add's data."""
    write_jsonl(folder / "train.jsonl", records(40, seed=1))
    write_jsonl(folder / "val.jsonl", records(6, seed=3))
    data = {"sources": {"train": "train.jsonl"}, "val": "val.jsonl"}
    stage = {"prompt_tokens": PROMPT, "output_tokens": OUTPUT, "models": ["m"],
             "methods": ["none", "lora-a", "merged"],
             "decoding": {"max_new_tokens": 8, "temperature": 1.0}}
    task = {
        "name": "research-plans", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": QUERIES},
        "models": [{"name": "m", "params": P_GEN, "source": str(base["m"])},
                   {"name": "v", "params": P_VER, "source": str(base["v"])}],
        "methods": [{"name": "none", "kind": "none"},
                    {"name": "full-v", "kind": "full",
                     "options": {"steps": STEPS, "batch_size": BATCH, "lr": 3e-3}},
                    {"name": "lora-a", "kind": "lora", "options": LORA},
                    {"name": "merged", "kind": "merge",
                     "components": [{"method": "lora-a", "subtask": "parse", "weight": 0.7},
                                    {"method": "lora-a", "subtask": "add", "weight": 0.5}],
                     "options": {"method": "ties", "density": 0.5}}],
        "subtasks": [
            {"name": "parse", **stage, "samples": [1, 2, 4],
             "aggregators": ["majority", "verifier", "verifier_best"],
             "verifiers": {"v-full": VERIFIER, "v-few": {**VERIFIER, "items": 4}},
             "data": {**data, "prompt": "{problem} sum:"}, **(parse or {})},
            {"name": "add", "depends_on": ["parse"], **stage, "samples": [1],
             "aggregators": ["first"], "data": {**data, "prompt": "{parse}="}}],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def plan(method: str = "none", n: int = 1, aggregator: str = "majority",
         verifier: str = "v-full") -> Plan:
    return Plan(model="m", method=method, mixture="default", samples=n, aggregator=aggregator,
                verifier=verifier)


def add_plan(method: str = "none") -> Plan:
    return Plan(model="m", method=method, mixture="default", samples=1, aggregator="first")


def alloc(parse: Plan, add: Plan | None = None) -> Allocation:
    return Allocation.of({"parse": parse, "add": add or add_plan()})


# --- verifier re-ranking ---------------------------------------------------------------------

def test_verifier_is_priced_by_its_formula_and_searched_as_a_dimension(
        tmp_path: Path, base: dict[str, Path]) -> None:
    spec = load_spec(write_task(tmp_path, base))
    space, cost = SearchSpace(spec), CostModel(spec)
    assert [d.name for d in space.dimensions("parse")][-1] == "verifier"
    assert space.dimension("parse", "verifier").values == ("v-full", "v-few")
    assert "verifier" not in space.dimension("add", "aggregator").values
    assert [d.name for d in space.dimensions("add")][-1] == "aggregator"  # no verifiers there
    # pruned: a verifier only matters to its aggregators at n > 1
    assert space.canonical("parse", plan(n=4, verifier="v-few")) == plan(n=4)
    assert space.canonical("parse", plan(n=1, aggregator="verifier")) == plan(n=1)
    with pytest.raises(SpaceError, match="is pruned"):
        space.validate(alloc(plan(n=4, aggregator="majority", verifier="v-few")))
    space.validate(alloc(plan(n=4, aggregator="verifier", verifier="v-few")))
    # and said only where it is used
    assert plan(n=4, aggregator="verifier", verifier="v-few").describe() == (
        "m / none / n=4 / verifier / verifier=v-few")
    assert plan(n=4).describe() == "m / none / n=4 / majority"

    weighted = plan(n=4, aggregator="verifier")
    verifier = verifier_of(spec, "parse", weighted)
    assert isinstance(verifier, VerifierArtifact)
    assert (verifier.model, verifier.items, verifier.samples) == ("v", 8, 2)
    assert verifier.generator == artifact_of(spec, "parse", weighted)
    # the same verifier for n = 2 and best-of-n; none for majority or at n = 1
    assert verifier_of(spec, "parse", plan(n=2, aggregator="verifier_best")) == verifier
    assert verifier_of(spec, "parse", plan(n=4)) is None
    assert verifier_of(spec, "parse", plan(n=1, aggregator="verifier")) is None

    # training set: 8 items x (2·P_gen·P + 2 samples x 2·P_gen·O) = 3.2e7 FLOPs; fine-tune:
    # 6·P_ver·D, D = 20 steps x 8 x (P + O) = 2400 -> 2.88e9; per query 4 x 2·P_ver·(P + O)
    sampling = 8 * (2 * P_GEN * PROMPT + 2 * 2 * P_GEN * OUTPUT)
    training = 6 * P_VER * STEPS * BATCH * (PROMPT + OUTPUT)
    assert (sampling, training) == (3.2e7, 2.88e9)
    assert cost.verifier_sampling_flops(verifier) == pytest.approx(sampling)
    assert cost.verifier_train_flops(verifier) == pytest.approx(training)
    generate = 2 * P_GEN * PROMPT + 4 * 2 * P_GEN * OUTPUT  # 6e6
    score = 4 * 2 * P_VER * (PROMPT + OUTPUT)  # 2.4e7
    priced = cost.plan_cost("parse", weighted)
    assert priced.train_gpu_hours == pytest.approx((sampling + training) / RATE)
    assert priced.inference_gpu_hours == pytest.approx((generate + score) * QUERIES / RATE)
    majority = cost.plan_cost("parse", plan(n=4))  # another aggregator: free, as before
    assert (majority.train_gpu_hours, majority.inference_gpu_hours) == (
        0.0, pytest.approx(generate * QUERIES / RATE))
    both = cost.estimate(alloc(weighted))  # add: base, n = 1
    assert both.train_gpu_hours == pytest.approx((sampling + training) / RATE)
    assert both.inference_gpu_hours == pytest.approx(
        (generate + score + 2 * P_GEN * PROMPT + 2 * P_GEN * OUTPUT) * QUERIES / RATE)

    # a search pays a verifier once per (generator, verifier): training + scoring the max-n
    # samples of each of the 6 validation items given here (N = 4) once
    meter = SearchCost(cost, {"parse": 6, "add": 6})
    trains, _ = meter.parts(alloc(weighted))
    scoring = 6 * 4 * 2 * P_VER * (PROMPT + OUTPUT)
    assert trains == {verifier: pytest.approx((sampling + training + scoring) / RATE)}
    first = meter.marginal(alloc(weighted))
    assert meter.add(alloc(weighted)) == pytest.approx(first)
    assert meter.marginal(alloc(plan(n=2, aggregator="verifier_best"))) == 0.0  # n, aggregator
    few = verifier_of(spec, "parse", plan(n=4, aggregator="verifier", verifier="v-few"))
    assert meter.marginal(alloc(plan(n=4, aggregator="verifier", verifier="v-few"))) == (
        pytest.approx((sampling / 2 + training + scoring) / RATE))
    assert few is not None and few != verifier


def test_verifier_trains_once_scores_each_sample_once_and_decides_the_score(
        tmp_path: Path, base: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(write_task(tmp_path, base))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    scored: dict[str, tuple[list[str], list[float]]] = {}
    score = Verifier.score

    def spy(self: object, question: str, solutions: list[str]) -> list[float]:
        values = score(self, question, solutions)
        scored[question] = (list(solutions), values)
        return values

    monkeypatch.setattr(Verifier, "score", spy)
    weighted = plan(n=4, aggregator="verifier")
    first = env.evaluate(alloc(weighted))
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (1, 0)  # the verifier
    (meta_path,) = (env.cache.root / "live" / "artifacts").glob("*/meta.json")
    meta = json.loads(meta_path.read_text())
    assert (meta["verifier_examples"], meta["verifier"]["items"]) == (8 * 2, 8)
    assert 0 < meta["verifier_right"] < 16  # labelled by the metric: some right, some wrong
    assert first.measured["train_tokens"] == meta["tokens_seen"] > 0
    # parse's validation records are the pipeline's items: 6 distinct prompts, 4 samples each
    assert len(scored) == 6 and all(len(s) == len(v) == 4 for s, v in scored.values())

    # the stage's score is the mean expected verifier-weighted majority at n = 4 over the
    # scored samples (clusters: the answers), and best-of-n by score at n = 2
    labels = {env.prompt("parse", "m", r): r["parse"] for r in env.data["parse"].val}
    right = {q: [exact_match(s.strip(), labels[q]) for s in texts]
             for q, (texts, _) in scored.items()}
    assert sum(0 < sum(c) < 4 for c in right.values()) >= 2  # items where the choice matters

    def expected(values: dict[str, list[float]]) -> float:
        return sum(expected_weighted_majority_at_k([s.strip() for s in scored[q][0]],
                                                   values[q], right[q], 4, key=lambda a: a)
                   for q in scored) / 6

    by_scores = expected({q: v for q, (_, v) in scored.items()})
    print(f"verifier-weighted majority@4: {by_scores:.4f}; scores "
          f"{[[round(x, 3) for x in v] for _, v in scored.values()]}; right {right}")
    assert first.subtask_scores["parse"] == pytest.approx(by_scores)
    oracle = expected({q: [float(c) for c in right[q]] for q in scored})  # a perfect verifier
    inverted = expected({q: [1.0 - c for c in right[q]] for q in scored})
    print(f"with equal scores {expected({q: [0.5] * 4 for q in scored}):.4f}, a perfect "
          f"verifier's {oracle:.4f}, an inverted one's {inverted:.4f}")
    assert inverted < oracle  # the figure above depends on the scores it was given

    # another n and best-of-n: the verifier is a cache hit and no sample is scored again
    calls = dict(scored)
    scored.clear()
    best = env.evaluate(alloc(plan(n=2, aggregator="verifier_best")))
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (1, 1)
    assert scored == {}
    assert best.subtask_scores["parse"] == pytest.approx(sum(
        expected_best_of_k(values, right[q], 2) for q, (_, values) in calls.items()) / 6)
    # majority needs no verifier: nothing trained, nothing scored
    env.evaluate(alloc(plan(n=4)))
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits, scored) == (1, 1, {})
    # a study whose budget reads this arm at n <= 2 draws 2 samples of each item, which the
    # same verifier (a cache hit) scores
    two = env.evaluate(alloc(plan(n=2, aggregator="verifier_best")),
                       draws={("parse", "m", "none", "default", None): 2})
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (1, 2)
    assert len(scored) == 6 and all(len(s) == len(v) == 2 for s, v in scored.values())
    assert two.subtask_scores["parse"] == pytest.approx(sum(
        expected_best_of_k(v, [exact_match(x.strip(), labels[q]) for x in texts], 2)
        for q, (texts, v) in scored.items()) / 6)


def test_the_verifiers_scores_pick_the_answers(tmp_path: Path, base: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A verifier that scores every wrong answer 1 and every right one 0: the stage's score
    and the answers passed downstream are the wrong ones wherever the samples hold one."""
    spec = load_spec(write_task(tmp_path, base))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    labels = {env.prompt("parse", "m", r): r["parse"] for r in env.data["parse"].val}
    right: dict[str, list[float]] = {}

    def inverted(self: object, question: str, solutions: list[str]) -> list[float]:
        right[question] = [exact_match(s.strip(), labels[question]) for s in solutions]
        return [1.0 - c for c in right[question]]

    monkeypatch.setattr(Verifier, "score", inverted)
    run = env.run(alloc(plan(n=4, aggregator="verifier")))
    majority = env.evaluate(alloc(plan(n=4)))
    assert len(right) == 6
    assert run.observation.subtask_scores["parse"] == pytest.approx(
        sum(sum(c) == 4 for c in right.values()) / 6)  # right only where every sample is
    print(f"parse: verifier (inverted) {run.observation.subtask_scores['parse']:.4f}, "
          f"majority {majority.subtask_scores['parse']:.4f}")
    assert run.observation.subtask_scores["parse"] < majority.subtask_scores["parse"] - 0.3
    for prompt, output in zip(run.prompts["parse"], run.outputs["parse"], strict=True):
        assert (output == labels[prompt]) == (sum(right[prompt]) == 4)
    best = env.evaluate(alloc(plan(n=2, aggregator="verifier_best")))
    assert best.subtask_scores["parse"] == pytest.approx(sum(
        expected_best_of_k([1.0 - x for x in c], c, 2) for c in right.values()) / 6)


SEQUENTIAL = {"method": "full-v", "items": 8, "samples": 2, "sequential": True}


def test_sequential_verifier_is_the_generator_continued_and_priced_as_one_model(
        tmp_path: Path, base: dict[str, Path]) -> None:
    spec = load_spec(write_task(tmp_path, base, parse={"verifiers": {"seq": SEQUENTIAL}}))
    space, cost = SearchSpace(spec), CostModel(spec)
    assert not space.dimension("parse", "verifier").test_time  # it decides the served model
    seq = plan("lora-a", n=4, aggregator="verifier", verifier="seq")
    generator = artifact_of(spec, "parse", plan("lora-a", n=4, verifier="seq"))
    served = artifact_of(spec, "parse", seq)
    assert served.continues == verifier_of(spec, "parse", seq)
    assert served.continues.sequential and served.continues.generator == generator
    assert (served.model, served.continues.model) == ("m", "m")  # the generator's own model
    assert served.trains == (generator, served) and served.exported == generator
    assert served != artifact_of(spec, "parse", plan("lora-a", n=4, aggregator="verifier_best",
                                                     verifier="seq")).continues.generator

    # training: the generator's LoRA, sampling its training set, one more training of the
    # generator (6·N_gen·D, D = 20 x 8 x (P + O)); per query: one model generates and scores
    lora = 4 * P_GEN * LORA["steps"] * LORA["batch_size"] * (PROMPT + OUTPUT)
    sampling = 8 * (2 * P_GEN * PROMPT + 2 * 2 * P_GEN * OUTPUT)
    further = 6 * P_GEN * STEPS * BATCH * (PROMPT + OUTPUT)
    generate = 2 * P_GEN * PROMPT + 4 * 2 * P_GEN * OUTPUT
    score = 4 * 2 * P_GEN * (PROMPT + OUTPUT)
    priced = cost.plan_cost("parse", seq)
    assert priced.train_gpu_hours == pytest.approx((lora + sampling + further) / RATE)
    assert priced.inference_gpu_hours == pytest.approx((generate + score) * QUERIES / RATE)
    assert cost.estimate(alloc(seq)).train_gpu_hours == pytest.approx(
        (lora + sampling + further) / RATE)
    # a search that sampled the generator still samples its continuation, once
    meter = SearchCost(cost, {"parse": 6, "add": 6})
    meter.add(alloc(plan("lora-a", n=4, verifier="seq")))
    scoring = 6 * 4 * 2 * P_GEN * (PROMPT + OUTPUT)
    assert meter.marginal(alloc(seq)) == pytest.approx(
        (sampling + further + scoring) / RATE
        + meter.parts(alloc(seq))[1][arm_of("parse", seq, served)])
    meter.add(alloc(seq))
    assert meter.marginal(alloc(plan("lora-a", n=2, aggregator="verifier_best",
                                     verifier="seq"))) == 0.0
    # export: the generator's fine-tune, and the continuation said
    (note,) = [x for x in _research_notes(spec, alloc(seq), "trl") if "seq" in x]
    assert "continue it with tools.verifier.continue_verifier" in note


def test_sequential_verifier_samples_and_scores_with_one_trained_model(
        tmp_path: Path, base: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(write_task(tmp_path, base, parse={"verifiers": {"seq": SEQUENTIAL}}))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    judges: list[Path] = []
    init = Verifier.__init__

    def spy(self: object, artifact: Path, **kwargs: object) -> None:
        judges.append(Path(artifact))
        init(self, artifact, **kwargs)

    monkeypatch.setattr(Verifier, "__init__", spy)
    seq = plan("lora-a", n=4, aggregator="verifier", verifier="seq")
    run = env.run(alloc(seq))  # trains the LoRA generator, then continues it (merged)
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (2, 0)
    served = env.model_path(artifact_of(spec, "parse", seq))
    meta = json.loads((served / "meta.json").read_text())
    assert meta["verifier"]["sequential"] and meta["verifier_examples"] == 8 * 2
    assert judges == [served]  # the model that drew the samples scored them
    assert not (served / "adapter_config.json").exists()
    assert all(len(x) for x in run.outputs["parse"])  # it generated the stage's answers
    assert run.observation.measured["train_tokens"] > 0
    # the generator alone (majority): its cached LoRA, other samples; nothing trained
    hits = env.cache.stats.train_hits
    majority = env.evaluate(alloc(plan("lora-a", n=4, verifier="seq")))
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (2, hits + 1)
    assert "parse" in majority.subtask_scores


# --- merged subtask fine-tunes ---------------------------------------------------------------

def test_merge_trains_each_component_once_and_is_tools_merge(tmp_path: Path,
                                                              base: dict[str, Path]) -> None:
    spec = load_spec(write_task(tmp_path, base))
    merged = spec.method("merged")
    assert isinstance(merged, Merge) and not merged.fine_tunes
    artifact = artifact_of(spec, "parse", plan("merged"))
    components = {part: weight for part, weight in artifact.parts}
    alone = {s: artifact_of(spec, s, plan("lora-a") if s == "parse" else add_plan("lora-a"))
             for s in ("parse", "add")}
    assert components == {alone["parse"]: 0.7, alone["add"]: 0.5}
    assert artifact.trains[-1] == artifact and set(artifact.trains[:2]) == set(alone.values())

    # cost: each component 4·N·D (D = 2 steps x 4 x 15 tokens), the merge 0, serving as the base
    lora = 4 * P_GEN * 2 * 4 * (PROMPT + OUTPUT)
    cost = CostModel(spec)
    assert cost.train_flops(artifact) == 0.0
    assert cost.plan_cost("parse", plan("merged")).train_gpu_hours == pytest.approx(
        2 * lora / RATE)
    assert cost.plan_cost("parse", plan("merged")).inference_gpu_hours == pytest.approx(
        cost.plan_cost("parse", plan()).inference_gpu_hours)
    shared = alloc(plan("merged"), add_plan("lora-a"))  # add serves one component alone
    assert cost.estimate(shared).train_gpu_hours == pytest.approx(2 * lora / RATE)
    meter = SearchCost(cost, {"parse": 6, "add": 6})
    meter.add(alloc(plan("lora-a")))
    trains, arms = meter.parts(shared)
    assert trains == {alone["parse"]: pytest.approx(lora / RATE),
                      alone["add"]: pytest.approx(lora / RATE)}
    assert meter.marginal(shared) == pytest.approx(  # the parse component is paid
        lora / RATE + arms[("parse", "m", "merged", "default", None)]
        + arms[("add", "m", "lora-a", "default", None)])

    # live: a plan trains the parse component alone; the merge reuses it (a cache hit),
    # trains the add component, merges; add's plan serves that component from the same run
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    env.evaluate(alloc(plan("lora-a")))
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (1, 0)
    observation = env.evaluate(shared)
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (3, 1)
    assert observation.measured["examples:parse/train"] == 2 * 4  # each component's draws
    assert observation.measured["examples:add/train"] == 2 * 4
    env.evaluate(alloc(plan("merged")))  # everything cached
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (3, 4)

    # the merged weights are tools.merge's: TIES at density 0.5 with the weights above
    folder = env.model_path(artifact)
    paths = [env.model_path(part) for part, _ in artifact.parts]
    expected = merge(env.base_path("m"), {f"c{i:02d}": p for i, p in enumerate(paths)},
                     {f"c{i:02d}": w for i, (_, w) in enumerate(artifact.parts)}, "ties",
                     tmp_path / "by-hand", density=0.5)
    ours, _ = load_model(folder)
    theirs, _ = load_model(expected)
    before, _ = load_model(env.base_path("m"))
    mine, by_hand, start = (dict(m.named_parameters()) for m in (ours, theirs, before))
    assert mine.keys() == by_hand.keys()
    for name in mine:
        assert torch.equal(mine[name], by_hand[name]), name
    moved = max(float((mine[n] - start[n]).detach().abs().max()) for n in mine)
    assert moved > 1e-3  # the merge did change the base


def test_merge_tool_config_points_to_mergekit(tmp_path: Path, base: dict[str, Path]) -> None:
    merged = load_spec(write_task(tmp_path, base)).method("merged")
    for tool in TOOLS:
        config = merged.tool_config(tool)
        assert config.keys == {}
        (note,) = config.unexpressed
        assert note.startswith(f"kind merge: {tool} cannot merge") and "mergekit" in note
        assert "merge_method: ties" in note
    # an export says what it cannot hold: the merge (served as the base) and the verifier
    spec = load_spec(tmp_path / "task.yaml")
    notes = _research_notes(spec, alloc(plan("merged", n=4, aggregator="verifier")), "trl")
    assert notes == [
        "parse: method merged: this export serves the base model m, not the merge; "
        + merged.tool_config("trl").unexpressed[0],
        "parse: aggregator verifier re-ranks the n samples by verifier v-full, which planner "
        "trained and this export does not hold; train one (tools.verifier.train_verifier) to "
        "score the samples"]
    assert _research_notes(spec, alloc(plan(n=4)), "planner") == []


# --- bad options: one line naming the field --------------------------------------------------



def _merged(**changes: object) -> dict:
    entry = {"name": "merged", "kind": "merge",
             "components": [{"method": "lora-a", "subtask": "parse"},
                            {"method": "lora-a", "subtask": "add"}]}
    return {**entry, **changes}


@pytest.mark.parametrize(("edit", "expected"), [
    ({"merged": _merged(components=[{"method": "lora-a", "subtask": "parse", "wieght": 1}])},
     r"methods\[3\] \(merged\)\.components\[0\]\.wieght: a merge component takes no key "
     r"'wieght'; valid keys: method, mixture, subtask, weight$"),
    ({"merged": _merged(options={"density": 0.5})},
     r"methods\[3\] \(merged\): options\.density: merge method task_arithmetic does not use "
     r"it \(only ties, dare_linear, dare_ties do\)"),
    ({"merged": _merged(options={"dens": 0.5})},
     r"methods\[3\] \(merged\)\.options\.dens: kind merge takes no option 'dens'; valid "
     r"options: beta, density, gamma, majority_sign, method, seed$"),
    ({"merged": _merged(options={"method": "ties"}, components=[
        {"method": "lora-a", "subtask": "parse"}])},
     r"methods\[3\] \(merged\): components: merge method ties elects signs"),
    ({"merged": _merged(options={"method": "breadcrumbs", "beta": 0.6, "gamma": 0.5})},
     r"methods\[3\] \(merged\): options\.beta \+ options\.gamma must be < 1"),
    ({"merged": _merged(components=[{"method": "full-v", "subtask": "parse"}])},
     r"methods\[3\] \(merged\)\.components\[0\]\.method: 'full-v' is kind full; a merge adds "
     r"LoRA fine-tunes"),
    ({"merged": _merged(components=[{"method": "lora-a", "subtask": "solve"}])},
     r"methods\[3\] \(merged\)\.components\[0\]\.subtask: unknown subtask 'solve'"),
    ({"merged": _merged(components=[{"method": "lora-a", "subtask": "add", "mixture": "x"}])},
     r"methods\[3\] \(merged\)\.components\[0\]\.mixture: subtask 'add' has no mixture 'x'"),
    ({"parse": {"verifiers": {}}},
     r"subtasks\[0\]\.verifiers: aggregators \['verifier', 'verifier_best'\] need a verifier"),
    ({"parse": {"aggregators": ["majority"]}},
     r"subtasks\[0\]\.verifiers: no aggregator uses them"),
    ({"parse": {"verifiers": {"v1": {**VERIFIER, "model": "huge"}}}},
     r"subtasks\[0\]\.verifiers\.v1\.model: unknown model 'huge'"),
    ({"parse": {"verifiers": {"v1": {**VERIFIER, "method": "none"}}}},
     r"subtasks\[0\]\.verifiers\.v1\.method: 'none' is kind none; a verifier is fine-tuned"),
    ({"parse": {"verifiers": {"v1": {**VERIFIER, "item": 3}}}},
     r"subtasks\.0\.verifiers\.v1\.item: unknown key"),
    ({"parse": {"verifiers": {"v1": {**VERIFIER, "samples": 0}}}},
     r"subtasks\.0\.verifiers\.v1\.samples: Input should be greater than 0"),
    ({"parse": {"verifiers": {"v1": {**VERIFIER, "sequential": True}}}},
     r"subtasks\[0\]\.verifiers\.v1\.model: a sequential verifier is the generator itself, "
     r"trained further; remove model 'v'"),
    ({"parse": {"verifiers": {"v1": {"method": "full-v"}}}},
     r"subtasks\[0\]\.verifiers\.v1\.model: required: the catalogue model the verifier is "
     r"trained from \(or `sequential: true`"),
])
def test_bad_options_are_one_line_naming_the_field(tmp_path: Path, base: dict[str, Path],
                                                   edit: dict, expected: str) -> None:
    path = write_task(tmp_path, base, parse=edit.get("parse"))
    if "merged" in edit:
        data = yaml.safe_load(path.read_text())
        data["methods"][3] = edit["merged"]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match=expected) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_too_many_verifier_items_is_named(tmp_path: Path, base: dict[str, Path]) -> None:
    path = write_task(tmp_path, base, parse={"verifiers": {"v1": {**VERIFIER, "items": 50}}})
    with pytest.raises(SpecError, match=r"subtasks\.parse\.verifiers\.v1\.items: 50 training "
                       r"items, but the subtask's sources hold 40 records; lower items$"):
        LiveEnvironment(load_spec(path), cache_dir=tmp_path / "cache", progress=False)


def test_replay_refuses_the_verifier_aggregators(tmp_path: Path) -> None:
    path = write_tiny_task(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["subtasks"][0]["aggregators"] = ["oracle", "verifier"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match=r"subtasks\[0\]\.aggregators: \['verifier'\] re-rank "
                       r"each sample by a trained verifier's score, and a replay table holds "
                       r"no per-sample scores") as info:
        load_spec(path)
    assert "\n" not in str(info.value)
    data["subtasks"][0]["verifiers"] = {"v": {"model": "small", "method": "ckpt-a"}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(SpecError, match=r"subtasks\[0\]\.verifiers: the replay environment "
                       r"ignores `verifiers`"):
        load_spec(path)
