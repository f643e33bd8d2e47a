"""tools.merge: each method's merged weights against its formula, computed here by hand from
the adapters' own merged weights (tiny GPT-2, LoRA on c_attn: 2 layers of 64 x 192)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file, save_file

from tools.merge import merge
from tools.train import TrainConfig, load_model, train
from tools.zoo import addition_examples

pytestmark = pytest.mark.usefixtures("one_thread")

Params = dict[str, torch.Tensor]


def _const_task(answer: str) -> dict[str, list[dict[str, str]]]:
    examples = addition_examples(32, 1)
    return {"d": [{"prompt": ex["prompt"], "completion": answer} for ex in examples]}


@pytest.fixture(scope="module")
def artifacts(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters trained on different tasks, a copy of the first with twice its delta
    (B scaled by 2: the same signs and magnitude order), and a full-weights fine-tune."""
    root = tmp_path_factory.mktemp("merge")
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8)
    out = {}
    for name, answer, seed in (("a", "777", 0), ("b", "333", 1)):
        config = TrainConfig(steps=12, batch_size=8, lr=3e-2, seed=seed)
        out[name] = train(tiny_base, _const_task(answer), {"d": 1.0}, root / name, config,
                          lora).artifact
    out["a2"] = root / "a2"
    shutil.copytree(out["a"], out["a2"])
    weights = load_file(out["a2"] / "adapter_model.safetensors")
    save_file({k: v * 2 if "lora_B" in k else v for k, v in weights.items()},
              out["a2"] / "adapter_model.safetensors")
    out["full"] = train(tiny_base, _const_task("555"), {"d": 1.0}, root / "full",
                        TrainConfig(steps=3, batch_size=8, lr=3e-3)).artifact
    return out


def _params(artifact: Path) -> Params:
    model, _ = load_model(artifact)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _deltas(artifact: Path, base: Path) -> Params:
    tuned, theta = _params(artifact), _params(base)
    return {name: tuned[name] - theta[name] for name in theta}


ADAPTED = [f"transformer.h.{i}.attn.c_attn.weight" for i in range(2)]


@pytest.mark.parametrize("save_adapter", [False, True])
def test_task_arithmetic_equals_base_plus_weighted_deltas(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path, save_adapter: bool
) -> None:
    weights = {"a": 0.7, "b": -0.4}
    out = merge(tiny_base, {k: artifacts[k] for k in weights}, weights, "task_arithmetic",
                tmp_path / "m", save_adapter=save_adapter)
    assert (out / "adapter_config.json").exists() == save_adapter
    merged, theta = _params(out), _params(tiny_base)
    tau = {k: _deltas(artifacts[k], tiny_base) for k in weights}
    for name in theta:
        expected = theta[name] + sum(w * tau[k][name] for k, w in weights.items())
        torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    change = max(float((merged[n] - theta[n]).abs().max()) for n in ADAPTED)
    assert change > 1e-2  # the adapters did move the weights the formula is checked on


def test_ties_at_full_density_is_the_disjoint_mean_of_agreeing_signs(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    weights = {"a": 1.0, "b": 0.5}
    out = merge(tiny_base, {k: artifacts[k] for k in weights}, weights, "ties", tmp_path / "m",
                density=1.0)
    merged, theta = _params(out), _params(tiny_base)
    ta, tb = _deltas(artifacts["a"], tiny_base), _deltas(artifacts["b"], tiny_base)
    for name in ADAPTED:
        stack = torch.stack([ta[name], tb[name]])
        elected = torch.where(stack.sum(0) >= 0, 1.0, -1.0)
        agree = stack.sign() == elected
        w = torch.tensor([1.0, 0.5]).view(2, 1, 1)
        expected = (w * stack * agree).sum(0) / agree.sum(0).clamp(min=1)
        both = agree.all(0)
        assert 0.2 < float(both.float().mean()) < 0.95  # both regions are exercised
        # where the signs agree: the plain mean of the weighted deltas
        torch.testing.assert_close((merged[name] - theta[name])[both],
                                   ((ta[name] + 0.5 * tb[name]) / 2)[both], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(merged[name] - theta[name], expected, rtol=1e-4, atol=1e-6)
    # as an adapter: SVD factors of rank 64 (min(64, 192)) zero-padded to the rank asked
    adapter = merge(tiny_base, {k: artifacts[k] for k in weights}, weights, "ties",
                    tmp_path / "adapter", save_adapter=True, svd_rank=80)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 80
    from_adapter = _params(adapter)
    for name in theta:
        torch.testing.assert_close(from_adapter[name], merged[name], rtol=1e-5, atol=1e-6)


def test_ties_keeps_the_largest_density_fraction_of_each_delta(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    # a and a2 = 2a agree everywhere: the merge is (tau + 2 tau) / 2 on a's top 30%, else 0.
    out = merge(tiny_base, {"a": artifacts["a"], "a2": artifacts["a2"]}, {"a": 1.0, "a2": 1.0},
                "ties", tmp_path / "m", density=0.3)
    merged, theta = _params(out), _params(tiny_base)
    tau = _deltas(artifacts["a"], tiny_base)
    for name in ADAPTED:
        flat = tau[name].flatten()
        keep = torch.zeros_like(flat)
        keep[flat.abs().topk(int(0.3 * flat.numel())).indices] = 1
        expected = 1.5 * tau[name] * keep.view_as(tau[name])
        torch.testing.assert_close(merged[name] - theta[name], expected, rtol=1e-4, atol=1e-6)


def _ratios(merged: Params, theta: Params, tau: Params) -> torch.Tensor:
    """merged delta / tau on the adapted entries whose |tau| is not tiny (SVD float error)."""
    out = []
    for name in ADAPTED:
        big = tau[name].abs() > 0.01 * tau[name].abs().max()
        out.append(((merged[name] - theta[name]) / tau[name])[big])
    return torch.cat(out)


def test_dare_linear_keeps_about_density_rescaled_by_its_inverse(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    density, weights, pair = 0.3, {"a": 1.0, "b": 0.0}, {"a": artifacts["a"], "b": artifacts["b"]}
    theta, tau = _params(tiny_base), _deltas(artifacts["a"], tiny_base)
    merged = _params(merge(tiny_base, pair, weights, "dare_linear", tmp_path / "s0",
                           density=density, seed=0))
    ratios = _ratios(merged, theta, tau)
    kept = (ratios - 1 / density).abs() < 1e-3
    dropped = ratios.abs() < 1e-3
    assert bool((kept | dropped).all())  # every entry is dropped or rescaled by 1/density
    assert abs(float(kept.float().mean()) - density) < 0.03  # ~23,000 entries: sd 0.003
    again = _params(merge(tiny_base, pair, weights, "dare_linear", tmp_path / "s0b",
                          density=density, seed=0))
    other = _params(merge(tiny_base, pair, weights, "dare_linear", tmp_path / "s1",
                          density=density, seed=1))
    assert all(torch.equal(merged[n], again[n]) for n in ADAPTED)
    assert not torch.allclose(merged[ADAPTED[0]], other[ADAPTED[0]])


def test_dare_ties_averages_the_survivors(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    # tau and 2 tau, each kept with prob. p and scaled by 1/p, signs always agree: an entry is
    # 0, tau/p, 2tau/p or their mean 1.5tau/p, with prob. (1-p)^2, p(1-p), p(1-p), p^2.
    p = 0.5
    out = merge(tiny_base, {"a": artifacts["a"], "a2": artifacts["a2"]}, {"a": 1.0, "a2": 1.0},
                "dare_ties", tmp_path / "m", density=p, seed=3)
    ratios = _ratios(_params(out), _params(tiny_base), _deltas(artifacts["a"], tiny_base)) * p
    for value, prob in ((0.0, (1 - p) ** 2), (1.0, p * (1 - p)), (2.0, p * (1 - p)), (1.5, p * p)):
        share = float(((ratios - value).abs() < 1e-3).float().mean())
        assert abs(share - prob) < 0.03, (value, share, prob)


def test_breadcrumbs_masks_outliers_and_small_entries_then_sums(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    beta, gamma = 0.05, 0.6
    theta = _params(tiny_base)
    masked = {}
    for name in ("a", "full"):  # a LoRA adapter and a full-weights fine-tune
        out = merge(tiny_base, {name: artifacts[name]}, {name: 1.0}, "breadcrumbs",
                    tmp_path / name, beta=beta, gamma=gamma)
        merged, tau = _params(out), _deltas(artifacts[name], tiny_base)
        masked[name] = {n: merged[n] - theta[n] for n in theta}
        changed = [n for n in theta if tau[n].any()]
        assert set(ADAPTED) <= set(changed)
        for n in changed:
            size = tau[n].numel()
            top, bottom = math.floor(beta * size), math.floor(gamma * size)
            band = torch.tensor([0.0] * bottom + [1.0] * (size - top - bottom) + [0.0] * top)
            order = tau[n].abs().flatten().argsort(stable=True)  # by |tau|
            torch.testing.assert_close(masked[name][n].flatten()[order],
                                       tau[n].flatten()[order] * band, rtol=1e-5, atol=1e-7)
            if n in ADAPTED:  # dense LoRA deltas: exactly the middle 35% survive
                assert int((masked[name][n] != 0).sum()) == size - top - bottom
        for n in set(theta) - set(changed):
            assert not masked[name][n].any()
    out = merge(tiny_base, {"a": artifacts["a"], "full": artifacts["full"]},
                {"a": 0.8, "full": 1.3}, "breadcrumbs", tmp_path / "both", beta=beta, gamma=gamma)
    merged = _params(out)
    for n in theta:
        expected = theta[n] + 0.8 * masked["a"][n] + 1.3 * masked["full"][n]
        torch.testing.assert_close(merged[n], expected, rtol=1e-5, atol=1e-6)


def test_factorwise_linear_mixes_the_factors(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    # peft's rank-r "linear": (sum_t sqrt(w_t s_t) B_t)(sum_t sqrt(w_t s_t) A_t), cross terms in.
    weights = {"a": 0.7, "b": 0.4}
    out = merge(tiny_base, {k: artifacts[k] for k in weights}, weights, "task_arithmetic",
                tmp_path / "m", factorwise=True, save_adapter=True)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    merged, theta = _params(out), _params(tiny_base)
    factors = {k: load_file(artifacts[k] / "adapter_model.safetensors") for k in weights}
    scale = 8 / 4  # lora_alpha / r
    for i, name in enumerate(ADAPTED):
        key = f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{{}}.weight"
        a = sum(math.sqrt(w * scale) * factors[k][key.format("A")] for k, w in weights.items())
        b = sum(math.sqrt(w * scale) * factors[k][key.format("B")] for k, w in weights.items())
        # Conv1D stores (in, out): the delta is (B A) transposed
        torch.testing.assert_close(merged[name] - theta[name], (b @ a).T, rtol=1e-5, atol=1e-6)
        exact = sum(w * scale * (factors[k][key.format("B")] @ factors[k][key.format("A")]).T
                    for k, w in weights.items())
        assert not torch.allclose(merged[name] - theta[name], exact, atol=1e-4)


def test_merge_refuses_what_it_cannot_do(
    artifacts: dict[str, Path], tiny_base: Path, tmp_path: Path
) -> None:
    pair = {"a": artifacts["a"], "b": artifacts["b"]}
    with pytest.raises(ValueError, match="one weight per adapter"):
        merge(tiny_base, pair, {"a": 1.0}, "ties", tmp_path / "m")
    with pytest.raises(ValueError, match="two or more"):
        merge(tiny_base, {"a": artifacts["a"]}, {"a": 1.0}, "ties", tmp_path / "m")
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        merge(tiny_base, {"a": artifacts["a"], "f": artifacts["full"]}, {"a": 1.0, "f": 1.0},
              "ties", tmp_path / "m")
    with pytest.raises(ValueError, match="cannot be an adapter"):
        merge(tiny_base, pair, {"a": 1.0, "b": 1.0}, "breadcrumbs", tmp_path / "m",
              save_adapter=True)
    with pytest.raises(ValueError, match="was trained on"):
        merge(artifacts["full"], pair, {"a": 1.0, "b": 1.0}, "task_arithmetic", tmp_path / "m")
    with pytest.raises(ValueError, match="beta and gamma"):
        merge(tiny_base, pair, {"a": 1.0, "b": 1.0}, "breadcrumbs", tmp_path / "m",
              beta=0.5, gamma=0.5)
