"""The method registry: typed options, derived training FLOPs, peft adapters, tool keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import LoraConfig, PromptTuningConfig

from planner.errors import SpecError
from planner.methods import TOOLS, Full, Lora, NoneMethod, Pretrain, PromptTuning
from planner.spec import load_spec
from tests.conftest import with_methods


@pytest.mark.parametrize(("method", "expected"), [
    ({"name": "l8", "kind": "lora", "options": {"lora_rr": 8}},
     r"methods\[2\] \(l8\)\.options\.lora_rr: kind lora takes no option 'lora_rr'; valid "
     r"options: batch_size, focal_gamma, grad_accum, gradient_checkpointing, lora_alpha, "
     r"lora_dropout, lora_r, lora_targets, loss_balance, lr, max_length, precision, seed, "
     r"steps, torch_compile$"),
    ({"name": "f", "kind": "full", "rank": 8},
     r"methods\[2\] \(f\)\.rank: kind full takes no key 'rank'; valid keys: kind, name, "
     r"options, train_tokens$"),
    ({"name": "q", "kind": "qlora"}, r"methods\[2\] \(q\)\.kind: 'qlora' is not a method kind; "
     r"use one of \['full', 'hft', 'lora', 'merge', 'none', 'pretrain', 'promot', 'prompt'\]"),
    ({"name": "p", "kind": "pretrain"}, r"methods\[2\] \(p\)\.train_tokens: required field"),
    ({"name": "n", "kind": "none", "train_tokens": 5}, r"kind none takes no key 'train_tokens'"),
    ({"name": "l", "kind": "lora", "options": {"steps": 0}},
     r"methods\[2\] \(l\)\.options\.steps: Input should be greater than 0"),
    ({"name": "b", "kind": "full", "options": {"loss_balance": "task"}},
     r"methods\[2\] \(b\)\.options\.loss_balance: Input should be 'none', 'data' or 'focal'"),
    ({"name": "g", "kind": "full", "options": {"loss_balance": "data", "focal_gamma": 1.0}},
     r"methods\[2\] \(g\)\.options\.focal_gamma: focal_gamma is read by loss_balance focal "
     r"only \(it is data\); remove focal_gamma or set loss_balance: focal$"),
])
def test_bad_method_is_one_line_naming_it_and_the_valid_keys(tmp_path: Path, method: dict,
                                                            expected: str) -> None:
    with pytest.raises(SpecError, match=expected) as info:
        load_spec(with_methods(tmp_path, [method]))
    assert "\n" not in str(info.value)


def test_methods_validate_into_their_kind(tmp_path: Path) -> None:
    spec = load_spec(with_methods(tmp_path, [
        {"name": "none", "kind": "none"},
        {"name": "lora", "kind": "lora", "options": {"lora_r": 4, "lora_targets": ["c_attn"]}},
        {"name": "soft", "kind": "prompt", "options": {"num_virtual_tokens": 4}},
        {"name": "full", "kind": "full"}]))
    kinds = {m.name: type(m) for m in spec.methods}
    assert kinds == {"ckpt-a": Pretrain, "ckpt-b": Pretrain, "none": NoneMethod, "lora": Lora,
                     "soft": PromptTuning, "full": Full}
    lora = spec.method("lora")
    assert lora.options.lora_r == 4 and lora.options.steps == 100  # default kept


def test_training_tokens_and_flops() -> None:
    lora = Lora(name="l", options={"steps": 10, "batch_size": 4})
    assert lora.tokens(tokens_per_example=25.0) == 1000
    assert lora.train_flops(params=1e6, tokens_per_example=25.0) == pytest.approx(4e9)
    full = Full(name="f", train_tokens=500)  # an explicit D wins over steps x batch
    assert full.train_flops(params=1e6, tokens_per_example=25.0) == pytest.approx(3e9)
    assert Pretrain(name="p", train_tokens=1e9).train_flops(1e6, 0.0) == pytest.approx(6e15)
    assert NoneMethod(name="n").train_flops(1e6, 25.0) == 0.0
    assert not NoneMethod(name="n").fine_tunes and not Pretrain.fine_tunes and Lora.fine_tunes


def test_settings_ignore_the_name() -> None:
    a = Lora(name="a", options={"lora_r": 4})
    assert a.settings() == Lora(name="b", options={"lora_r": 4}).settings()
    assert a.settings() != Lora(name="a", options={"lora_r": 8}).settings()
    assert a.settings() != Full(name="a").settings()


def test_adapters_are_peft_configs() -> None:
    lora = Lora(name="l", options={"lora_r": 4, "lora_alpha": 8, "lora_targets": ["c_attn"]})
    config = lora.adapter()
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 8, {"c_attn"})
    soft = PromptTuning(name="p", options={"num_virtual_tokens": 5}).adapter()
    assert isinstance(soft, PromptTuningConfig) and soft.num_virtual_tokens == 5
    assert Full(name="f").adapter() is None


def test_tool_configs_use_each_tools_keys() -> None:
    lora = Lora(name="l", options={"lora_r": 4, "steps": 50, "lr": 2e-4, "max_length": 128,
                                   "lora_targets": ["q_proj", "v_proj"]})
    lf = lora.tool_config("llamafactory")
    assert lf.keys == {"finetuning_type": "lora", "lora_rank": 4, "lora_alpha": 16,
                       "lora_dropout": 0.0, "lora_target": "q_proj,v_proj", "max_steps": 50,
                       "per_device_train_batch_size": 16, "learning_rate": 2e-4, "seed": 0,
                       "cutoff_len": 128, "gradient_accumulation_steps": 1,
                       "disable_gradient_checkpointing": True, "bf16": True}
    assert lf.unexpressed == []
    axolotl = lora.tool_config("axolotl").keys
    assert axolotl["adapter"] == "lora" and axolotl["lora_target_modules"] == ["q_proj", "v_proj"]
    assert axolotl["micro_batch_size"] == 16 and axolotl["sequence_len"] == 128
    trl = lora.tool_config("trl").keys
    assert trl["use_peft"] is True and trl["lora_r"] == 4 and trl["max_length"] == 128
    assert Full(name="f").tool_config("axolotl").keys["adapter"] is None
    assert Full(name="f").tool_config("trl").keys["use_peft"] is False
    # what a tool cannot express is said, never dropped
    default = Lora(name="d")  # peft's default modules: each tool's "all linear", and said so
    assert "lora_targets" in default.tool_config("trl").unexpressed[0]
    assert default.tool_config("trl").keys["lora_target_modules"] == "all-linear"
    assert default.tool_config("llamafactory").keys["lora_target"] == "all"
    assert default.tool_config("axolotl").keys["lora_target_linear"] is True
    assert Lora(name="one", options={"lora_targets": ["c_attn"]}).tool_config(
        "trl").keys["lora_target_modules"] == r"(.*\.)?c_attn"  # TRL makes [x] the regex x
    for tool in TOOLS:
        assert "no prompt tuning" in PromptTuning(name="p").tool_config(tool).unexpressed[0]


def test_loss_balance_is_a_loop_option_of_every_fine_tune() -> None:
    plain, data = Full(name="f"), Full(name="f", options={"loss_balance": "data"})
    assert "loss_balance" not in plain.settings()  # the default leaves old hashes alone
    assert plain.settings() != data.settings()
    focal = Lora(name="l", options={"loss_balance": "focal", "focal_gamma": 1.0})
    assert (focal.options.loss_balance, focal.options.focal_gamma) == ("focal", 1.0)
    # the same passes, reweighted: no FLOPs of its own
    assert data.train_flops(1e6, 25.0) == plain.train_flops(1e6, 25.0)
    for tool in TOOLS:  # no tool balances the loss per source: said, never dropped
        assert plain.tool_config(tool).unexpressed == []
        said = data.tool_config(tool).unexpressed
        assert len(said) == 1 and said[0].startswith("loss_balance data")
        assert data.tool_config(tool).keys == plain.tool_config(tool).keys
