"""Cascades run live (Yue et al. 2024; FrugalGPT): a majority plan whose n samples agree too
little escalates the item to a stronger plan. On the shipped tiny zoo models: `tiny` is the
cheap plan, `small` (which parses about 3 times in 4) the strong one."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import yaml

import envs.live.env as live_env
from envs.live.env import LiveEnvironment
from envs.live.tasks.make_data import write_jsonl
from planner.artifact import artifact_of
from planner.cascade import cascade_of, escalates, min_agreeing
from planner.cost import CostModel
from planner.errors import SpaceError, SpecError
from planner.export import _research_notes
from planner.sampling import check_backends
from planner.search.search_cost import SearchCost
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import load_spec
from planner.store import StudyRecord, TrialRecord, TrialStatus
from planner.views import measured_vs_estimated
from tests.conftest import write_tiny_task
from tools.evaluate import exact_match
from tools.zoo import extraction_examples, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

P_TINY, P_SMALL = 1e5, 4e5  # catalogue params
PROMPT, OUTPUT, QUERIES = 10, 5, 1000
RATE = 9.89e14 * 0.4 * 3600  # FLOPs per GPU-hour: the default hardware at its utilisation
THRESHOLDS = [0, 0.5, 0.75, 1.0, 1.5]
FULL = {"steps": 2, "batch_size": 4, "lr": 0.01}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("zoo")
    return {"tiny": tiny_model("tiny", folder), "small": tiny_model("small", folder)}


def write_task(folder: Path, zoo: dict[str, Path], **cascades: dict) -> Path:
    """One stage, parse, on tiny and small at n in {1, 2, 4}, answering the first digit of
    the sum it writes (tiny's samples agree on it at times, small's are mostly right);
    cascade `big` escalates to small's majority of 4, `tuned` to a full fine-tune of small
    (priced, not run here)."""
    records = [{"problem": e["prompt"].removesuffix(" sum:"), "parse": e["completion"]}
               for e in extraction_examples(20, seed=1)]
    write_jsonl(folder / "train.jsonl", records[:12])
    write_jsonl(folder / "val.jsonl", records[12:])
    task = {
        "name": "cascades", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": QUERIES},
        "models": [{"name": "tiny", "params": P_TINY, "source": str(zoo["tiny"])},
                   {"name": "small", "params": P_SMALL, "source": str(zoo["small"])}],
        "methods": [{"name": "none", "kind": "none"},
                    {"name": "full", "kind": "full", "options": FULL}],
        "subtasks": [{
            "name": "parse", "prompt_tokens": PROMPT, "output_tokens": OUTPUT,
            "models": ["tiny", "small"], "methods": ["none"], "samples": [1, 2, 4],
            "aggregators": ["majority", "first"],
            "decoding": {"max_new_tokens": 8, "temperature": 1.0},
            "answer": {"regex": r"^(\d)"},  # the first digit: tiny's samples agree at times
            "data": {"sources": {"train": "train.jsonl"}, "val": "val.jsonl",
                     "prompt": "{problem} sum:"},
            "cascades": cascades or {
                "big": {"model": "small", "samples": 4, "thresholds": THRESHOLDS},
                "tuned": {"model": "small", "method": "full", "thresholds": [0.75]}}}],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def plan(model: str = "tiny", n: int = 4, aggregator: str = "majority",
         cascade: str = "none") -> Plan:
    return Plan(model=model, method="none", mixture="default", samples=n,
                aggregator=aggregator, cascade=cascade)


def alloc(p: Plan) -> Allocation:
    return Allocation.of({"parse": p})


def test_cascade_is_a_pruned_dimension_priced_by_its_assumed_share(
        tmp_path: Path, zoo: dict[str, Path]) -> None:
    spec = load_spec(write_task(tmp_path, zoo))
    space, cost = SearchSpace(spec), CostModel(spec)
    dim = space.dimension("parse", "cascade")
    assert dim.test_time
    assert dim.values == ("none", "big@0", "big@0.5", "big@0.75", "big@1", "big@1.5",
                          "tuned@0.75")
    # only a majority vote at n >= 2 has an agreement to read
    assert space.canonical("parse", plan(n=1, cascade="big@0.5")) == plan(
        n=1, aggregator="first")
    assert space.canonical("parse", plan(aggregator="first", cascade="big@0.5")) == plan(
        n=1, aggregator="first")
    with pytest.raises(SpaceError, match="is pruned"):
        space.validate(alloc(plan(n=1, aggregator="first", cascade="big@1")))
    space.validate(alloc(plan(n=2, cascade="big@1")))
    assert "cascade=big@1" in plan(n=2, cascade="big@1").describe()

    cascade = cascade_of(spec, "parse", plan(cascade="big@0.75"))
    assert cascade is not None and (cascade.name, cascade.threshold) == ("big", 0.75)
    assert cascade.strong == Plan(model="small", method="none", mixture="default", samples=4,
                                  aggregator="majority")
    assert cascade_of(spec, "parse", plan()) is None

    # per query: the cheap plan, plus the strong plan's inference times the assumed share
    # (the threshold, clipped to 1): 2·N·P + n·2·N·O each
    cheap = 2 * P_TINY * PROMPT + 4 * 2 * P_TINY * OUTPUT
    strong = 2 * P_SMALL * PROMPT + 4 * 2 * P_SMALL * OUTPUT
    priced = [cost.estimate(alloc(plan(cascade=f"big@{t:g}"))) for t in THRESHOLDS]
    for t, c in zip(THRESHOLDS, priced, strict=True):
        assert c.inference_gpu_hours == pytest.approx(
            (cheap + min(t, 1) * strong) * QUERIES / RATE)
        assert c.train_gpu_hours == 0.0
    assert [c.inference_gpu_hours for c in priced] == sorted(c.inference_gpu_hours
                                                             for c in priced)
    assert priced[0].inference_gpu_hours == pytest.approx(
        cost.estimate(alloc(plan())).inference_gpu_hours)  # threshold 0: never escalates

    # a fine-tuned strong plan is trained once (6·N·D, D = 2 steps x 4 x (P + O)) and, in a
    # search, sampled max-n on each validation item once, like any arm
    tuned = plan(cascade="tuned@0.75")
    train = 6 * P_SMALL * FULL["steps"] * FULL["batch_size"] * (PROMPT + OUTPUT)
    assert cost.plan_cost("parse", tuned).train_gpu_hours == pytest.approx(train / RATE)
    assert cost.estimate(alloc(tuned)).train_gpu_hours == pytest.approx(train / RATE)
    meter = SearchCost(cost, {"parse": 8})
    trains, arms = meter.parts(alloc(tuned))
    strong_tuned = artifact_of(spec, "parse", cascade_of(spec, "parse", tuned).strong)
    assert trains == {strong_tuned: pytest.approx(train / RATE)}
    assert set(arms) == {("parse", "tiny", "none", "default", None),
                         ("parse", "small", "full", "default", None)}
    meter.add(alloc(tuned))
    assert meter.marginal(alloc(plan(n=2, cascade="tuned@0.75"))) == 0.0  # n: free
    _, big = meter.parts(alloc(plan(cascade="big@0.5")))  # the tiny arm is paid
    assert meter.marginal(alloc(plan(cascade="big@0.5"))) == pytest.approx(
        big[("parse", "small", "none", "default", None)])

    # an export serves the cheap plan and says what it leaves out
    (note,) = _research_notes(spec, alloc(tuned), "trl")
    assert note.startswith("parse: cascade tuned@0.75 (Yue et al. 2024): planner answered")
    assert "fewer than 0.75 of the n samples agree" in note and "model small" in note
    assert "its fine-tune is not among the trainings here" in note
    assert _research_notes(spec, alloc(plan()), "trl") == []


def test_live_cascade_escalates_the_items_that_agree_too_little(
        tmp_path: Path, zoo: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(write_task(tmp_path, zoo))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    seen: list[tuple[list, str, float]] = []  # per validation item: cheap answers, label, strong
    estimate = live_env.expected_cascade

    def spy(answers: list, label: str, metric: object, n: int, need: int,
            escalated: float) -> tuple[float, float]:
        seen.append((list(answers), label, escalated))
        return estimate(answers, label, metric, n, need, escalated)

    monkeypatch.setattr(live_env, "expected_cascade", spy)
    cheap, strong = env.run(alloc(plan())), env.run(alloc(plan(model="small")))
    sampled = env.cache.stats.sample_misses
    print(f"parse: tiny majority@4 {cheap.observation.score:.4f}, small majority@4 "
          f"{strong.observation.score:.4f}")
    assert strong.observation.score > cheap.observation.score  # escalating can help

    runs = {}
    for t in THRESHOLDS:
        seen.clear()
        runs[t] = env.run(alloc(plan(cascade=f"big@{t:g}")))
        items = list(seen)
    assert env.cache.stats.sample_misses == sampled  # the strong plan's samples: cached
    # a full evaluation also scored on a screen's items scores there what the screen does
    screen = env.evaluate(alloc(plan(cascade="big@0.75")), 0.5)
    on_items = env.evaluate(alloc(plan(cascade="big@0.75")), screen=0.5).on_screen_items
    assert (on_items.fidelity, on_items.score, on_items.subtask_scores) == (
        0.5, screen.score, screen.subtask_scores)
    assert env.cache.stats.sample_misses == sampled

    # threshold 0 never escalates: the cheap plan's score, outputs and measured sampling
    never, always = runs[0].observation, runs[1.5].observation
    assert never.measured["escalated:parse"] == 0.0
    assert never.score == pytest.approx(cheap.observation.score)
    assert runs[0].outputs == cheap.outputs
    assert never.measured["completion_tokens"] == cheap.observation.measured[
        "completion_tokens"]
    # above 1 always escalates: the strong plan's score and outputs, both plans' sampling
    assert always.measured["escalated:parse"] == 1.0
    assert always.score == pytest.approx(strong.observation.score)
    assert always.subtask_scores["parse"] == pytest.approx(
        strong.observation.subtask_scores["parse"])
    assert runs[1.5].outputs == strong.outputs
    assert always.measured["completion_tokens"] == pytest.approx(
        cheap.observation.measured["completion_tokens"]
        + strong.observation.measured["completion_tokens"])
    assert "escalated:parse" not in cheap.observation.measured

    # n = N: the share is that of the items whose 4 samples agree under the threshold
    assert len(items) == 8
    for t in (0.5, 0.75, 1.0):
        agreement = [max(Counter(a for a in answers if a is not None).values(), default=0) / 4
                     for answers, _, _ in items]
        share = sum(a < t for a in agreement) / 8
        print(f"threshold {t}: escalated {share:.3f}, score "
              f"{runs[t].observation.score:.4f}, agreement {agreement}")
        assert runs[t].observation.measured["escalated:parse"] == pytest.approx(share)
    shares = [runs[t].observation.measured["escalated:parse"] for t in THRESHOLDS]
    assert shares == sorted(shares) and 0 < shares[2] < 1  # some items escalate, not all
    # measured sampling grows with the share escalated on the pipeline's items
    tokens = [runs[t].observation.measured["completion_tokens"] for t in THRESHOLDS]
    assert tokens == sorted(tokens) and tokens[0] < tokens[-1]
    for prompt, out in zip(runs[0.75].prompts["parse"], runs[0.75].outputs["parse"],
                           strict=True):
        i = cheap.prompts["parse"].index(prompt)
        assert out in (cheap.outputs["parse"][i], strong.outputs["parse"][i])

    # `planner show` sets the measured share beside the share the cost model assumed
    record = StudyRecord("s", spec.name, "", spec.model_dump(mode="json"), "1gpu-h", 1.0,
                         "random", 0, 0.0)
    trial = TrialRecord(0, alloc(plan(cascade="big@0.75")), TrialStatus.OK,
                        runs[0.75].observation.score, runs[0.75].observation.subtask_scores,
                        CostModel(spec).estimate(alloc(plan(cascade="big@0.75"))),
                        measured=runs[0.75].observation.measured)
    (row,) = measured_vs_estimated(record, [trial])["rows"]
    assert row["escalated"] == {"parse": {"assumed": 0.75, "measured": shares[2]}}

    # n = 2 of N = 4: share and score are exact expectations over the 2-subsets
    seen.clear()
    two = env.evaluate(alloc(plan(n=2, cascade="big@1")))
    need = min_agreeing(1.0, 2)
    assert need == 2
    share = score = 0.0
    for answers, label, escalated in seen:
        pairs = list(itertools.combinations(answers, 2))
        for pair in pairs:
            if escalates(list(pair), 1.0):
                share, score = share + 1 / len(pairs), score + escalated / len(pairs)
            else:  # both agree: their common answer
                score += exact_match(pair[0] or "", label) / len(pairs)
    assert two.measured["escalated:parse"] == pytest.approx(share / len(seen))
    assert two.subtask_scores["parse"] == pytest.approx(score / len(seen))

    # a study whose budget reads tiny at n <= 2 draws 2 samples of it (one 2-subset per
    # item), and the strong plan's 4 as before (cached)
    seen.clear()
    sampled = env.cache.stats.sample_misses
    drawn = env.evaluate(alloc(plan(n=2, cascade="big@1")), draws={
        ("parse", "tiny", "none", "default", None): 2,
        ("parse", "small", "none", "default", None): 4})
    assert len(seen) == 8 and all(len(answers) == 2 for answers, _, _ in seen)
    assert drawn.measured["escalated:parse"] == pytest.approx(
        sum(escalates(answers, 1.0) for answers, _, _ in seen) / 8)
    assert env.cache.stats.sample_misses - sampled == len(set(runs[1].prompts["parse"]) | {
        env.prompt("parse", "tiny", r) for r in env.data["parse"].val})  # tiny's alone


def test_agreement_rule() -> None:
    assert [min_agreeing(t, 10) for t in (0, 0.05, 0.7, 1.0, 1.5)] == [0, 1, 7, 10, 15]
    assert not escalates(["a", "a", "b", None], 0.5)
    assert escalates(["a", "a", "b", None], 0.75)
    assert escalates([None, None], 0.5) and not escalates([None, None], 0)


@pytest.mark.parametrize(("cascade", "expected"), [
    ({"model": "huge", "thresholds": [0.5]},
     r"subtasks\[0\]\.cascades\.c\.model: unknown model 'huge'; known: \['small', 'tiny'\]"),
    ({"model": "small", "method": "merged", "thresholds": [0.5]},
     r"subtasks\[0\]\.cascades\.c\.method: unknown method 'merged'"),
    ({"model": "small", "mixture": "other", "thresholds": [0.5]},
     r"subtasks\[0\]\.cascades\.c\.mixture: no mixture 'other' here"),
    ({"model": "small", "samples": 8, "thresholds": [0.5]},
     r"subtasks\[0\]\.cascades\.c\.samples: 8 samples, above the subtask's largest n \(4\)"),
    ({"model": "small", "thresholds": [0.5, 0.50000001]},
     r"subtasks\[0\]\.cascades\.c\.thresholds: thresholds \[0\.5, 0\.50000001\] write "
     r"'c@0\.5' twice"),
    ({"model": "small", "thresholds": [-0.5]},
     r"subtasks\.0\.cascades\.c\.thresholds\.0: Input should be greater than or equal to 0"),
    ({"model": "small", "thresholds": [0.5], "aggregator": "oracle"},
     r"subtasks\.0\.cascades\.c\.aggregator: Input should be 'first' or 'majority'"),
    ({"model": "small"}, r"subtasks\.0\.cascades\.c\.thresholds: required field is missing"),
])
def test_bad_cascade_is_one_line_naming_the_field(tmp_path: Path, zoo: dict[str, Path],
                                                   cascade: dict, expected: str) -> None:
    with pytest.raises(SpecError, match=expected) as info:
        load_spec(write_task(tmp_path, zoo, c=cascade))
    assert "\n" not in str(info.value)


def test_cascades_need_a_majority_vote_and_a_live_task(tmp_path: Path,
                                                       zoo: dict[str, Path]) -> None:
    path = write_task(tmp_path, zoo)
    data = yaml.safe_load(path.read_text())
    data["subtasks"][0]["aggregators"] = ["first"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"subtasks\[0\]\.cascades: a cascade escalates by "
                       r"the agreement of a majority vote"):
        load_spec(path)
    data["subtasks"][0]["aggregators"] = ["majority"]
    data["subtasks"][0]["cascades"] = {"none": {"model": "small", "thresholds": [1]}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"subtasks\[0\]\.cascades\.none: 'none' is the value"):
        load_spec(path)
    replay = tmp_path / "replay"
    replay.mkdir()
    tiny = write_tiny_task(replay)
    data = yaml.safe_load(tiny.read_text())
    data["subtasks"][0]["cascades"] = {"c": {"model": "large", "thresholds": [1]}}
    tiny.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"subtasks\[0\]\.cascades: the replay environment "
                       r"ignores `cascades`"):
        load_spec(tiny)


def test_a_server_must_serve_the_strong_plan(tmp_path: Path, zoo: dict[str, Path]) -> None:
    path = write_task(tmp_path, zoo)
    data = yaml.safe_load(path.read_text())
    data["sampling"] = {"backend": "openai", "base_url": "http://127.0.0.1:1/v1",
                        "served": ["tiny", "small"]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"subtasks\.parse\.cascades\.tuned: backend openai "
                       r"does not know the name the server serves model 'small' \(method "
                       r"'full'\) under; add \{model: small, method: full, mixture: default"):
        check_backends(load_spec(path), str(path))
    del data["subtasks"][0]["cascades"]["tuned"]
    path.write_text(yaml.safe_dump(data))
    check_backends(load_spec(path), str(path))  # small's base is served
