"""Merge fine-tunes of one base into one model: task arithmetic, TIES, DARE, Model Breadcrumbs.

Each method turns the fine-tunes' task vectors (tau_t = theta_t - theta_base, per weight
tensor) into one update added to the base:

- **Task arithmetic** (Ilharco et al. 2023): theta = theta_base + sum_t w_t tau_t.
- **TIES** (Yadav et al. 2023): trim each tau_t to its `density` fraction of largest
  magnitudes, elect a sign per entry (the sign of sum_t tau_t, peft's "total"; or of the
  count of signs, "frequency"), and take the disjoint mean of the entries that agree with it:
  theta = theta_base + sum_{t agrees} w_t tau_t / #{t agrees} (the paper's lambda is w_t).
- **DARE** (Yu et al. 2024): drop each entry of tau_t with probability 1 - `density` and
  rescale the survivors by 1 / density; then sum (`dare_linear`) or TIES' sign election and
  disjoint mean (`dare_ties`).
- **Model Breadcrumbs** (Davari & Belilovsky 2023): per layer (weight tensor), sort |tau_t|
  and mask out the largest `beta` fraction (outliers) and the smallest `gamma` fraction
  (negligible perturbations); theta = theta_base + sum_t w_t (m_t * tau_t) (the paper's
  scale alpha is w_t; its code keeps the middle per row, this module per tensor as the paper
  says).

How the code maps to it. The first four go through peft's
`LoraModel.add_weighted_adapter`, which merges LoRA adapters loaded side by side on the
base. By default each method runs on the full delta B_t A_t s_t of every adapted layer, as
the papers define it: task arithmetic is peft's `cat` (the adapters stacked, rank sum_t r_t,
exact), TIES and DARE its `*_svd` variants (the method on the full deltas, then an SVD back
to factors at full rank, exact up to float error). `factorwise=True` uses peft's cheaper
variants instead (`linear`, `ties`, `dare_*`), which apply the method to the A and B factors
separately with weights sqrt(w_t s_t): the merged adapter keeps rank r, but its delta is
(sum_t sqrt(w_t s_t) B_t)(sum_t sqrt(w_t s_t) A_t), cross terms included, not the paper's.
Breadcrumbs is not in peft: it is computed here on the task vectors of the merged weights
(`merge_and_unload` of each adapter, or a full-weights fine-tune, minus the base).

The result is a full-weights folder (or, for the peft methods, a LoRA adapter folder) that
`tools.train.load_model` loads.

Example:
    >>> merge("models/tiny", {"parse": "out/parse", "add": "out/add"},
    ...       {"parse": 1.0, "add": 1.0}, "ties", "out/merged", density=0.5)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftConfig, PeftModel
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from tools.train import load_model

Method = Literal["task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs"]
METHODS: tuple[str, ...] = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs")

# method -> peft combination type: on the full deltas (default) or on the LoRA factors.
_FULL_DELTA = {"task_arithmetic": "cat", "ties": "ties_svd", "dare_linear": "dare_linear_svd",
               "dare_ties": "dare_ties_svd"}
_FACTORWISE = {"task_arithmetic": "linear", "ties": "ties", "dare_linear": "dare_linear",
               "dare_ties": "dare_ties"}


def merge(
    base: str | Path,
    adapters: Mapping[str, str | Path],
    weights: Mapping[str, float],
    method: Method,
    out: str | Path,
    *,
    density: float = 1.0,
    majority_sign: Literal["total", "frequency"] = "total",
    beta: float = 0.0,
    gamma: float = 0.0,
    seed: int = 0,
    factorwise: bool = False,
    save_adapter: bool = False,
    svd_rank: int | None = None,
) -> Path:
    """Merge `adapters` (name -> `tools.train` artifact on `base`) with `weights` (name ->
    w_t) by `method` and write the result to `out`; returns `out`.

    Args:
        density: fraction of each task vector kept by TIES (largest magnitudes) and DARE
            (at random, survivors scaled by 1 / density); 1.0 keeps all.
        majority_sign: TIES' sign election, "total" (sign of the sum) or "frequency".
        beta, gamma: Breadcrumbs' fractions of each tensor's largest and smallest |tau| masked.
        seed: DARE's random drop (the global torch RNG is left as it was).
        factorwise: TIES/DARE/task arithmetic on the LoRA factors (peft's rank-r variants)
            instead of on the full deltas.
        save_adapter: write a LoRA adapter instead of full weights (peft methods only).
        svd_rank: truncate the `*_svd` results to this rank (default: full rank, exact).

    Adapters must be plain LoRA adapters for the peft methods; Breadcrumbs takes any adapter
    peft can merge into the base, and full-weights fine-tunes. Every adapter must record
    `base` as its base model.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown merge method {method!r}; use one of {', '.join(METHODS)}.")
    if not adapters or set(adapters) != set(weights):
        raise ValueError(f"Give one weight per adapter: adapters {sorted(adapters)}, "
                         f"weights {sorted(weights)}.")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}.")
    if beta < 0 or gamma < 0 or beta + gamma >= 1:
        raise ValueError(f"beta and gamma must be >= 0 with beta + gamma < 1, got {beta}, {gamma}.")
    names = sorted(adapters)
    for name in names:
        _check_base(Path(adapters[name]), Path(base))
    out = Path(out)
    if method == "breadcrumbs":
        if save_adapter:
            raise ValueError("Breadcrumbs merges sparse full deltas: it cannot be an adapter.")
        model, tokenizer = load_model(base)
        merged = breadcrumbs(model, [task_vector(model, adapters[n]) for n in names],
                             [weights[n] for n in names], beta=beta, gamma=gamma)
        merged.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    if method != "task_arithmetic" and len(names) < 2:
        raise ValueError(f"{method} merges two or more adapters (peft makes one adapter linear).")
    combination = (_FACTORWISE if factorwise else _FULL_DELTA)[method]
    peft_model, tokenizer = _load_side_by_side(base, [adapters[n] for n in names])
    rank = svd_rank or _full_rank(peft_model)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The density .* no pruning")  # density 1: ok
        torch.manual_seed(seed)
        peft_model.add_weighted_adapter(
            [f"t{i}" for i in range(len(names))], [float(weights[n]) for n in names], "default",
            combination_type=combination, svd_rank=rank, svd_full_matrices=False,
            density=density, majority_sign_method=majority_sign)
    if save_adapter:
        _pad_to_configured_rank(peft_model, "default")
        peft_model.peft_config["default"].base_model_name_or_path = str(base)
        peft_model.save_pretrained(out, selected_adapters=["default"])
    else:
        peft_model.merge_and_unload(adapter_names=["default"]).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def breadcrumbs(
    model: PreTrainedModel,
    task_vectors: list[dict[str, torch.Tensor]],
    weights: list[float],
    *,
    beta: float,
    gamma: float,
) -> PreTrainedModel:
    """Add sum_t w_t (m_t * tau_t) to `model`'s parameters in place and return it, where m_t
    masks, per tensor, the `beta` fraction of largest |tau_t| and the `gamma` fraction of
    smallest (floor of fraction * size entries each). Task vectors (`task_vector`, taken
    before any is added) hold only the tensors they change."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for tau, weight in zip(task_vectors, weights, strict=True):
            for name, delta in tau.items():
                params[name] += weight * breadcrumbs_mask(delta, beta, gamma) * delta
    return model


def breadcrumbs_mask(delta: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs' mask of one tensor: 1 on the entries whose |delta| ranks above the smallest
    floor(gamma * size) and below the largest floor(beta * size); ties ranked by position."""
    size = delta.numel()
    top, bottom = math.floor(beta * size), math.floor(gamma * size)
    order = torch.argsort(delta.abs().flatten(), stable=True)
    mask = torch.zeros(size, dtype=delta.dtype, device=delta.device)
    mask[order[bottom : size - top]] = 1
    return mask.view_as(delta)


def task_vector(base: PreTrainedModel, artifact: str | Path) -> dict[str, torch.Tensor]:
    """tau = theta_fine-tuned - theta_base for each parameter of `base` that `artifact` (a
    LoRA adapter, merged into its base, or a full-weights folder) changes."""
    tuned, _ = load_model(artifact)
    if isinstance(tuned, PeftModel):
        tuned = tuned.merge_and_unload()
    tuned_params = dict(tuned.named_parameters())
    tau = {}
    for name, param in base.named_parameters():
        if name not in tuned_params or tuned_params[name].shape != param.shape:
            raise ValueError(f"{artifact} has no parameter {name} of shape {tuple(param.shape)}.")
        delta = (tuned_params[name] - param).detach()
        if delta.any():
            tau[name] = delta
    return tau


def _check_base(artifact: Path, base: Path) -> None:
    if not (artifact / "adapter_config.json").exists():
        return  # a full-weights fine-tune: its shapes are checked when its task vector is taken
    config = PeftConfig.from_pretrained(artifact)
    if Path(config.base_model_name_or_path).resolve() != base.resolve():
        raise ValueError(f"{artifact} was trained on {config.base_model_name_or_path}, not {base}.")


def _load_side_by_side(base: str | Path, adapters: list[str | Path]):
    """The base with every adapter loaded as t0, t1, ... (a PeftModel) and the base tokenizer."""
    model, tokenizer = load_model(base)
    for path in adapters:
        if not (Path(path) / "adapter_config.json").exists():
            raise ValueError(f"{path} is not a LoRA adapter; only Breadcrumbs merges full weights.")
        config = PeftConfig.from_pretrained(path)
        if not isinstance(config, LoraConfig) or config.use_dora or config.use_rslora:
            raise ValueError(f"{path}: peft merges plain LoRA adapters only (not DoRA, rsLoRA "
                             f"or {config.peft_type}); Breadcrumbs takes any that merges.")
    peft_model = PeftModel.from_pretrained(model, adapters[0], adapter_name="t0")
    for i, path in enumerate(adapters[1:], start=1):
        peft_model.load_adapter(path, adapter_name=f"t{i}")
    return peft_model, tokenizer


def _full_rank(model: PeftModel) -> int:
    """The largest rank any adapted layer's delta can have (its smaller dimension)."""
    return max(min(module.weight.shape[:2]) for module in model.modules()
               if isinstance(module, LoraLayer))


def _pad_to_configured_rank(model: PeftModel, adapter: str) -> None:
    """An SVD merge leaves factors of rank min(out, in) where the config says r; pad them with
    zeros to r so the saved adapter loads."""
    rank = model.peft_config[adapter].r
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter in module.lora_A:
            a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        elif adapter in module.lora_embedding_A:
            a, b = module.lora_embedding_A[adapter], module.lora_embedding_B[adapter]
        else:
            continue
        if a.shape[0] < rank:
            a.data = torch.cat([a.data, a.data.new_zeros(rank - a.shape[0], a.shape[1])])
            b.data = torch.cat([b.data, b.data.new_zeros(b.shape[0], rank - b.shape[1])], 1)
