from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from planner.budget import Budget, parse_budget
from planner.cli import app
from planner.cost import CostModel
from planner.errors import BudgetError, SpecError
from planner.space import Allocation, Plan
from planner.spec import TaskSpec, load_spec


def plan(model: str, method: str, n: int = 1, mixture: str = "default") -> Plan:
    return Plan(model=model, method=method, mixture=mixture, samples=n, aggregator="oracle")


@pytest.mark.parametrize(("text", "amount", "unit"), [
    ("8gpu-h", 8.0, "gpu_hours"),
    ("90gpu-min", 1.5, "gpu_hours"),
    ("36gpu-s", 0.01, "gpu_hours"),
    ("3.5e18flop", 3.5e18, "flops"),
    ("1e20 FLOPs", 1e20, "flops"),
    (" 0.5GPU-H ", 0.5, "gpu_hours"),
    ("50usd", 50.0, "usd"),
    ("2.5 USD", 2.5, "usd"),
])
def test_parse_budget(text: str, amount: float, unit: str) -> None:
    b = parse_budget(text)
    assert b.unit == unit
    assert b.amount == pytest.approx(amount)


@pytest.mark.parametrize("text", ["", "8", "gpu-h", "-1gpu-h", "0gpu-h", "8 hours", "8gpu-hh"])
def test_bad_budget_names_the_forms(text: str) -> None:
    with pytest.raises(BudgetError, match="e.g. 8gpu-h"):
        parse_budget(text)


def test_flop_budget_in_gpu_hours() -> None:
    # 3.6e18 FLOP at 1e15 FLOP/s * 0.5 = 7200 s = 2 GPU-h
    assert Budget(3.6e18, "flops").gpu_hours(1e15, 0.5) == pytest.approx(2.0)


def test_usd_budget_in_gpu_hours_at_the_hardware_price() -> None:
    assert Budget(50.0, "usd").gpu_hours(1e15, 0.5, usd_per_gpu_hour=2.5) == 20.0
    assert str(parse_budget("50usd")) == "50usd"
    with pytest.raises(BudgetError, match="needs the price of a GPU-hour; give "
                                          "hardware.usd_per_gpu_hour"):
        Budget(50.0, "usd").gpu_hours(1e15, 0.5)


def test_usd_budget_of_a_task(tiny_task_path, tmp_path) -> None:
    """A task's own budget in USD converts at its hardware's price, and without a price it
    is refused where the task is read, naming the field."""
    data = yaml.safe_load(tiny_task_path.read_text())
    data["budget"] = "30usd"
    data["hardware"] = {**data.get("hardware", {}), "usd_per_gpu_hour": 3.0}
    priced = tmp_path / "priced.yaml"
    priced.write_text(yaml.safe_dump(data))
    spec = load_spec(priced)
    assert spec.hardware.gpu_hours(spec.budget) == 10.0
    del data["hardware"]["usd_per_gpu_hour"]
    unpriced = tmp_path / "unpriced.yaml"
    unpriced.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"budget: 30usd: a budget in USD needs the price"):
        load_spec(unpriced)


def test_cost_model_hand_computed(tiny_spec: TaskSpec) -> None:
    cm = CostModel(tiny_spec)
    gpu_hour = 1e15 * 0.5 * 3600  # FLOPs per GPU-hour on the tiny task's hardware
    large_b = plan("large", "ckpt-b", 4)
    # pretrain: 6 * 1e9 params * 1e10 tokens = 6e19 FLOPs
    assert cm.train_flops(cm.artifact("solve", large_b)) == pytest.approx(6e19)
    # inference per query: 2*1e9*100 prompt + 4 samples * 2*1e9*100 output = 1e12
    assert cm.inference_flops_per_query("solve", large_b) == pytest.approx(1e12)
    c = cm.plan_cost("solve", large_b)
    assert c.train_gpu_hours == pytest.approx(6e19 / gpu_hour)
    assert c.inference_gpu_hours == pytest.approx(1e12 * 1e6 / gpu_hour)


def test_shared_pretrained_checkpoint_paid_once(tiny_spec: TaskSpec) -> None:
    cm = CostModel(tiny_spec)
    small = plan("small", "ckpt-a")
    both = cm.estimate(Allocation.of({"extract": small, "solve": small}))
    one = cm.plan_cost("solve", small)
    assert both.train_gpu_hours == pytest.approx(one.train_gpu_hours)
    assert both.inference_gpu_hours == pytest.approx(2 * one.inference_gpu_hours)


def test_lora_and_prompt_cost_two_thirds_of_full() -> None:
    spec = TaskSpec.model_validate({
        "name": "t", "workload": {"queries": 1},
        "models": [{"name": "m", "params": 1e9}],
        "methods": [{"name": "none", "kind": "none"},
                    *({"name": k, "kind": k, "train_tokens": 1e6} for k in ("full", "lora",
                                                                           "prompt"))],
        "subtasks": [{"name": "s", "prompt_tokens": 1, "output_tokens": 1, "models": ["m"],
                      "methods": ["none", "full", "lora", "prompt"]}],
    })
    cm = CostModel(spec)
    flops = {k: cm.train_flops(cm.artifact("s", plan("m", k)))
             for k in ("none", "full", "lora", "prompt")}
    assert flops == pytest.approx({"none": 0.0, "full": 6e15, "lora": 4e15, "prompt": 4e15})


def test_calibration_replaces_formula(tiny_spec: TaskSpec) -> None:
    cm = CostModel(tiny_spec, {("solve", "small", "ckpt-a", "default"): 5e9})
    assert cm.inference_flops_per_query("solve", plan("small", "ckpt-a", 8)) == pytest.approx(4e10)


def _two_stage(methods: list[dict], mixtures: dict[str, dict]) -> TaskSpec:
    """Two subtasks (prompt + output tokens 10 and 30) offering `methods` and `mixtures`."""
    return TaskSpec.model_validate({
        "name": "t", "workload": {"queries": 1},
        "models": [{"name": "m", "params": 1e9}], "methods": methods,
        "subtasks": [{"name": name, "prompt_tokens": p, "output_tokens": o, "models": ["m"],
                      "methods": [x["name"] for x in methods], "mixtures": mixtures[name]}
                     for name, p, o in (("a", 6, 4), ("b", 20, 10))]})


def test_train_tokens_come_from_steps_batch_and_the_mixture() -> None:
    spec = _two_stage(
        [{"name": "lora", "kind": "lora", "options": {"steps": 10, "batch_size": 4}},
         {"name": "fixed", "kind": "full", "train_tokens": 123.0}],
        {"a": {"own": {}, "both": {"x": 1, "b/x": 3}}, "b": {"own": {}}})
    cm = CostModel(spec)
    own = cm.artifact("a", plan("m", "lora", mixture="own"))
    assert cm.train_tokens(own) == 10 * 4 * (6 + 4)
    both = cm.artifact("a", plan("m", "lora", mixture="both"))
    assert both.sources == {"a/x": 0.25, "b/x": 0.75}
    assert cm.train_tokens(both) == pytest.approx(10 * 4 * (0.25 * 10 + 0.75 * 30))
    assert cm.train_flops(both) == pytest.approx(4 * 1e9 * cm.train_tokens(both))
    assert cm.train_tokens(cm.artifact("a", plan("m", "fixed", mixture="own"))) == 123.0


def test_a_multi_task_fine_tune_is_paid_once_and_private_ones_twice() -> None:
    lora = {"name": "lora", "kind": "lora", "options": {"steps": 10, "batch_size": 4}}
    same = {"name": "lora-again", "kind": "lora", "options": {"steps": 10, "batch_size": 4}}
    spec = _two_stage([lora, same], {"a": {"own": {}, "mt": {"x": 1, "b/y": 1}},
                                     "b": {"own": {}, "mt": {"y": 1, "a/x": 1}}})
    cm = CostModel(spec)
    shared = Allocation.of({"a": plan("m", "lora", mixture="mt"),
                            "b": plan("m", "lora-again", mixture="mt")})
    assert cm.artifact("a", shared["a"]) == cm.artifact("b", shared["b"])
    one = cm.plan_cost("a", shared["a"]).train_gpu_hours
    assert cm.estimate(shared).train_gpu_hours == pytest.approx(one)
    private = Allocation.of({"a": plan("m", "lora", mixture="own"),
                             "b": plan("m", "lora", mixture="own")})
    assert cm.artifact("a", private["a"]) != cm.artifact("b", private["b"])
    assert cm.estimate(private).train_gpu_hours == pytest.approx(
        sum(cm.plan_cost(s, p).train_gpu_hours for s, p in private.items()))


def test_a_study_budgeted_in_usd_shows_its_cost_in_usd(tiny_task_path, tmp_path) -> None:
    data = yaml.safe_load(tiny_task_path.read_text())
    data["hardware"] = {**data.get("hardware", {}), "usd_per_gpu_hour": 3.0}
    task = tiny_task_path.parent / "priced.yaml"
    task.write_text(yaml.safe_dump(data))
    db = f"sqlite:///{tmp_path / 'p.db'}"
    runner = CliRunner()
    done = runner.invoke(app, ["optimize", str(task), "--budget", "105usd", "--trials", "3",
                               "--strategy", "random", "--db", db])
    assert done.exit_code == 0, done.output
    shown = runner.invoke(app, ["show", "tiny-random", "--db", db]).stdout
    assert "budget=105usd (35 GPU-h)" in shown
    found = re.search(r"cost ([\d.e+-]+) GPU-h .*\(\$([\d,.]+) at \$3 a GPU-hour\)", shown)
    assert found, shown
    gpu_hours, usd = float(found.group(1)), float(found.group(2).replace(",", ""))
    assert usd == pytest.approx(3.0 * gpu_hours, rel=1e-3, abs=0.01)  # GPU-h shown to 4 digits
