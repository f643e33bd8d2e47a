from __future__ import annotations

import pytest

from planner.budget import Budget, parse_budget
from planner.cost import CostModel
from planner.errors import BudgetError
from planner.space import Allocation, Plan
from planner.spec import TaskSpec


@pytest.mark.parametrize(("text", "amount", "unit"), [
    ("8gpu-h", 8.0, "gpu_hours"),
    ("90gpu-min", 1.5, "gpu_hours"),
    ("36gpu-s", 0.01, "gpu_hours"),
    ("3.5e18flop", 3.5e18, "flops"),
    ("1e20 FLOPs", 1e20, "flops"),
    (" 0.5GPU-H ", 0.5, "gpu_hours"),
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


def test_cost_model_hand_computed(tiny_spec: TaskSpec) -> None:
    cm = CostModel(tiny_spec)
    gpu_hour = 1e15 * 0.5 * 3600  # FLOPs per GPU-hour on the tiny task's hardware
    large_b = Plan("large", "ckpt-b", samples=4, aggregator="oracle")
    # pretrain: 6 * 1e9 params * 1e10 tokens = 6e19 FLOPs
    assert cm.train_flops(large_b) == pytest.approx(6e19)
    # inference per query: 2*1e9*100 prompt + 4 samples * 2*1e9*100 output = 1e12
    assert cm.inference_flops_per_query("solve", large_b) == pytest.approx(1e12)
    c = cm.plan_cost("solve", large_b)
    assert c.train_gpu_hours == pytest.approx(6e19 / gpu_hour)
    assert c.inference_gpu_hours == pytest.approx(1e12 * 1e6 / gpu_hour)


def test_shared_pretrained_checkpoint_paid_once(tiny_spec: TaskSpec) -> None:
    cm = CostModel(tiny_spec)
    plan = Plan("small", "ckpt-a", samples=1, aggregator="oracle")
    both = cm.estimate(Allocation.of({"extract": plan, "solve": plan}))
    one = cm.plan_cost("solve", plan)
    assert both.train_gpu_hours == pytest.approx(one.train_gpu_hours)
    assert both.inference_gpu_hours == pytest.approx(2 * one.inference_gpu_hours)


def test_lora_and_prompt_cost_two_thirds_of_full() -> None:
    spec = TaskSpec.model_validate({
        "name": "t", "workload": {"queries": 1},
        "models": [{"name": "m", "params": 1e9}],
        "methods": [{"name": k, "kind": k, "train_tokens": 1e6}
                    for k in ("none", "full", "lora", "prompt")],
        "subtasks": [{"name": "s", "prompt_tokens": 1, "output_tokens": 1, "models": ["m"],
                      "methods": ["none", "full", "lora", "prompt"]}],
    })
    cm = CostModel(spec)
    flops = {k: cm.train_flops(Plan("m", k)) for k in ("none", "full", "lora", "prompt")}
    assert flops == pytest.approx({"none": 0.0, "full": 6e15, "lora": 4e15, "prompt": 4e15})


def test_calibration_replaces_formula(tiny_spec: TaskSpec) -> None:
    cm = CostModel(tiny_spec, {("solve", "small", "ckpt-a"): 5e9})
    plan = Plan("small", "ckpt-a", samples=8, aggregator="oracle")
    assert cm.inference_flops_per_query("solve", plan) == pytest.approx(4e10)
