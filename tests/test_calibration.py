"""Training that uses the hardware, and what it measures: the loop's precision, gradient
accumulation and checkpointing; measured cost in a live trial; the utilisation it implies
fed back to the cost model; `planner show`'s estimated-vs-measured lines.

Real training steps on tiny GPT-2s (one thread on a CPU). The GPU rules (bf16, fp16, TF32)
are tested as functions of a `Device` given as data, so they are checked without a GPU; on a
machine with one, the device-dependent expectations switch to what a GPU run gives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

from envs.live.env import LiveEnvironment, train_config
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.artifact import artifact_of
from planner.cli import main
from planner.cost import CostModel
from planner.errors import SpecError
from planner.methods import Full, Lora
from planner.space import Allocation, Plan
from planner.spec import load_spec
from planner.store import Store, TrialStatus
from planner.study import optimize
from tests.test_live import MEASURED_COST
from tools.device import Device, choose_precision, current_device, use_tf32
from tools.train import TrainConfig, loop_arguments, param_count, train
from tools.zoo import N_POSITIONS, SIZES, addition_examples, char_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

H100 = Device("cuda", "NVIDIA H100 80GB HBM3", (9, 0), bf16=True)
T4 = Device("cuda", "Tesla T4", (7, 5), bf16=False)
CPU = Device("cpu")
HERE = current_device()
ON_CPU = HERE.kind == "cpu"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 at random init without dropout, so two loops that feed the same examples
    per step compute the same update."""
    folder = tmp_path_factory.mktemp("base") / "m1"
    tokenizer = char_tokenizer()
    config = GPT2Config(**SIZES["tiny"], vocab_size=len(tokenizer), n_positions=N_POSITIONS,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


DATA = {"add": addition_examples(40, seed=1)}


# --- the loop's options -----------------------------------------------------------------------

def test_precision_and_tf32_follow_the_device() -> None:
    assert [choose_precision("auto", d) for d in (H100, T4, CPU)] == ["bf16", "fp16", "fp32"]
    assert choose_precision("fp32", H100) == "fp32" and choose_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA GPU"):
        choose_precision("fp16", CPU)
    with pytest.raises(ValueError, match="Tesla T4 has no bf16"):
        choose_precision("bf16", T4)
    assert [use_tf32(d) for d in (H100, T4, CPU)] == [True, False, False]

    config = TrainConfig(steps=3, batch_size=16, grad_accum=4, gradient_checkpointing=True)
    on_h100 = loop_arguments(config, choose_precision("auto", H100), use_tf32(H100))
    assert on_h100 | {"learning_rate": None} == {
        "max_steps": 3, "learning_rate": None, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4, "gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False}, "bf16": True,
        "fp16": False, "tf32": True, "torch_compile": False}
    on_t4 = loop_arguments(TrainConfig(), choose_precision("auto", T4), use_tf32(T4))
    assert (on_t4["bf16"], on_t4["fp16"], on_t4["tf32"]) == (False, True, None)
    assert on_t4["gradient_checkpointing_kwargs"] is None


def test_loop_options_validate_and_reach_the_tools(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="grad_accum 4 must divide batch_size 10"):
        TrainConfig(batch_size=10, grad_accum=4)
    with pytest.raises(ValueError, match="precision 'fp8'"):
        TrainConfig(precision="fp8")
    from tests.conftest import write_tiny_task

    for options, message in (
            ({"batch_size": 10, "grad_accum": 4},
             r"methods\[2\] \(f\)\.options\.grad_accum: batch_size 10 is not a multiple of "
             r"grad_accum 4: batch_size is examples per optimizer step"),
            ({"precision": "fp8"}, r"methods\[2\] \(f\)\.options\.precision: Input should be "
                                   r"'auto', 'bf16', 'fp16' or 'fp32'")):
        path = write_tiny_task(tmp_path)
        task = yaml.safe_load(path.read_text())
        task["methods"].append({"name": "f", "kind": "full", "options": options})
        path.write_text(yaml.safe_dump(task))
        with pytest.raises(SpecError, match=message) as info:
            load_spec(path)
        assert "\n" not in str(info.value)

    # defaults stay out of the settings (artifact identities and study hashes keep), the
    # rest is a different artifact
    assert "grad_accum" not in Full(name="f").settings()
    accumulated = Full(name="f", options={"batch_size": 16, "grad_accum": 4, "precision": "fp32",
                                          "gradient_checkpointing": True, "torch_compile": True})
    assert accumulated.settings() != Full(name="f").settings()
    lf, axolotl, trl = (accumulated.tool_config(t) for t in ("llamafactory", "axolotl", "trl"))
    assert (lf.keys["per_device_train_batch_size"], lf.keys["gradient_accumulation_steps"],
            lf.keys["disable_gradient_checkpointing"], lf.keys["bf16"], lf.keys["fp16"]) == (
        4, 4, False, False, False)
    assert any(line.startswith("precision fp32: LLaMA-Factory") for line in lf.unexpressed)
    assert (axolotl.keys["micro_batch_size"], axolotl.keys["gradient_accumulation_steps"],
            axolotl.keys["gradient_checkpointing"], axolotl.keys["bf16"]) == (4, 4, True, False)
    assert lf.keys["torch_compile"] is axolotl.keys["torch_compile"] is trl.keys["torch_compile"]
    assert "torch_compile" not in Full(name="f").tool_config("trl").keys  # off: not said
    assert Full(name="a").tool_config("axolotl").keys["bf16"] == "auto"
    half = Lora(name="h", options={"precision": "fp16"}).tool_config("trl").keys
    assert (half["fp16"], half["bf16"], half["gradient_checkpointing"]) == (True, False, False)

    from trl import SFTConfig  # TRL's own fields, and its loop reads them as planner's does

    assert set(trl.keys) - {"use_peft"} <= set(SFTConfig.__dataclass_fields__)
    sft = SFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True,
                    **{k: v for k, v in trl.keys.items() if k != "use_peft"})
    assert (sft.per_device_train_batch_size * sft.gradient_accumulation_steps,
            sft.gradient_checkpointing, sft.bf16, sft.fp16, sft.torch_compile) == (
        16, True, False, False, True)
    # the flag reaches the loop, through the live environment's own mapping, as Trainer's own
    # (compiling costs ~30 s here, so the real compiled run is experiments/gpu_check.py's)
    compiled = train_config(accumulated.options)
    assert loop_arguments(compiled, "fp32", False)["torch_compile"] is True


def test_grad_accum_feeds_the_same_examples_per_step_and_makes_the_same_update(
        base: Path, tmp_path: Path) -> None:
    results, weights = {}, {}
    for accum in (1, 2):  # fp32: the same update, to rounding
        config = TrainConfig(steps=2, batch_size=8, lr=0.01, grad_accum=accum, precision="fp32")
        results[accum] = train(base, DATA, {"add": 1.0}, tmp_path / f"a{accum}", config)
        weights[accum] = GPT2LMHeadModel.from_pretrained(tmp_path / f"a{accum}").state_dict()
    one, two = results[1], results[2]
    assert (one.micro_batch_size, one.grad_accum, two.micro_batch_size, two.grad_accum) == (
        8, 1, 4, 2)
    assert one.examples_per_step == two.examples_per_step == 8  # counted as collated
    assert one.examples == two.examples and one.tokens_seen == two.tokens_seen
    assert two.losses == pytest.approx(one.losses, rel=1e-4 if ON_CPU else 1e-3)
    # Adam moves a weight by about lr (1e-2) a step whatever its gradient's scale, so the
    # rounding of a micro-batched gradient can show: 1.2e-5 on one weight with transformers
    # 5.19 (1e-4 is 1% of a step; the same loop on other examples differs by 3e-2).
    # A GPU's kernels (and TF32) round differently again.
    atol = 1e-4 if ON_CPU else 1e-3
    assert all(torch.allclose(weights[1][k], weights[2][k], atol=atol) for k in weights[1])
    moved = GPT2LMHeadModel.from_pretrained(base).state_dict()
    assert not torch.allclose(moved["transformer.h.0.mlp.c_fc.weight"],
                              weights[2]["transformer.h.0.mlp.c_fc.weight"])
    assert (one.precision, one.tf32, one.device) == ("fp32", use_tf32(HERE), HERE.describe())
    assert one.params == param_count(base) > 0
    assert 0 < one.loop_seconds <= one.wall_seconds and one.tokens_per_second > 0


class _Checkpointing(TrainerCallback):
    """Records whether the model recomputes activations at each step."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001
        self.seen.append(bool(model.is_gradient_checkpointing))


def test_gradient_checkpointing_trains_full_and_lora(base: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch_size=4, lr=0.01)
    plain = train(base, DATA, {"add": 1.0}, tmp_path / "plain", config)
    assert plain.precision == ("fp32" if ON_CPU else choose_precision("auto", HERE))  # auto
    watch = _Checkpointing()
    checkpointed = train(base, DATA, {"add": 1.0}, tmp_path / "ckpt",
                         TrainConfig(steps=2, batch_size=4, lr=0.01,
                                     gradient_checkpointing=True), callbacks=[watch])
    assert watch.seen == [True, True]
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-5 if ON_CPU else 1e-2)

    watch = _Checkpointing()  # LoRA: a frozen base under the adapter still gets gradients
    lora = train(base, DATA, {"add": 1.0}, tmp_path / "lora",
                 TrainConfig(steps=2, batch_size=4, lr=0.05, gradient_checkpointing=True),
                 LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"]),
                 callbacks=[watch])
    assert watch.seen == [True, True]
    from safetensors.torch import load_file

    adapter = load_file(lora.artifact / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it trained


# --- measured cost, calibration, `planner show` -----------------------------------------------

def write_task(folder: Path, base: Path, methods: list[str]) -> Path:
    """parse -> add on wordsum data, with one base and the given methods."""
    write_jsonl(folder / "train.jsonl", wordsum_records(12, seed=1))
    write_jsonl(folder / "val.jsonl", wordsum_records(3, seed=2))
    data = {"sources": {"train": "train.jsonl"}, "val": "val.jsonl"}
    stage = {"prompt_tokens": 10, "output_tokens": 5, "models": ["m1"], "methods": methods,
             "samples": [1], "aggregators": ["first"], "decoding": {"max_new_tokens": 3}}
    task = {"name": "live-cal", "environment": "live", "budget": "1gpu-h",
            "workload": {"queries": 1000},
            "models": [{"name": "m1", "params": 1e5, "source": str(base)}],
            "methods": [{"name": "none", "kind": "none"},
                        {"name": "full", "kind": "full",
                         "options": {"steps": 2, "batch_size": 4, "lr": 0.01, "grad_accum": 2}}],
            "subtasks": [{"name": "parse", **stage, "data": {**data, "prompt": "{problem} sum:"}},
                         {"name": "add", "depends_on": ["parse"], **stage,
                          "data": {**data, "prompt": "{parse}="}}]}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def test_a_live_trial_stores_what_it_measured_and_show_reports_it(
        base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    spec = load_spec(write_task(tmp_path, base, ["full"]))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    db = f"sqlite:///{tmp_path / 'study.db'}"
    result = optimize(spec, env, store=Store(db), budget="1gpu-h", strategy="random",
                      n_trials=1, seed=0, study="cal")
    [trial] = Store(db).trials("cal")  # as stored
    assert trial.status is TrialStatus.OK, trial.error
    m = trial.measured
    assert set(m) >= MEASURED_COST
    assert m["train_seconds"] > 0 and m["train_tokens"] > 0 and m["peak_memory_bytes"] > 0
    assert 0 < m["train_flops"] < m["train_capacity_flops"]  # a fraction of the CPU's peak
    assert 0 < m["sample_flops"] < m["sample_capacity_flops"] and m["sample_tokens"] > 0
    assert m["cpu_seconds"] == pytest.approx(m["train_seconds"] + m["sample_seconds"]
                                             if ON_CPU else 0.0)
    assert m["cached_trainings"] == m["cached_train_seconds"] == 0  # trained by this trial
    assert m["spent_seconds"] >= m["train_seconds"] + m["sample_seconds"]

    # the same allocation again: everything comes from the cache, reports what it measured
    # then, and is flagged, so a search adding up spent_seconds counts it once
    again = env.evaluate(result.trials[0].allocation).measured
    assert again["train_seconds"] == m["train_seconds"]
    assert again["cached_trainings"] == 2  # one private fine-tune per stage
    assert again["cached_train_seconds"] == m["train_seconds"]
    assert again["cached_sample_seconds"] == pytest.approx(again["sample_seconds"])
    assert again["spent_seconds"] == 0

    monkeypatch.setattr(sys, "argv", ["planner", "show", "cal", "--db", db])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    shown = capsys.readouterr().out
    assert "estimated vs measured" in shown and "device time the search spent" in shown
    if ON_CPU:  # the ratio's peak is named, and is not the task's GPU's
        assert "peak: this CPU's measured fp32 matmul rate" in shown
        assert "not H100-SXM's, whose peak is 9.89e+14 FLOP/s" in shown
    else:
        assert "peak: H100-SXM's 9.89e+14 FLOP/s (the task's hardware.peak_flops)" in shown


def test_measured_utilisation_reprices_training_and_sampling(base: Path, tmp_path: Path) -> None:
    spec = load_spec(write_task(tmp_path, base, ["none", "full"]))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False,
                          calibrate_on_cpu=True)
    tuned = Plan(model="m1", method="full", mixture="default", samples=1, aggregator="first")
    allocation = Allocation.of({"parse": tuned, "add": tuned})
    assumed = CostModel(spec).estimate(allocation)
    empty = env.calibration()
    assert (empty.utilization.train, empty.utilization.sample) == (None, None)
    assert CostModel(spec, empty).estimate(allocation) == assumed

    env.model_path(artifact_of(spec, "parse", tuned))  # one training, nothing sampled
    cal = env.calibration()
    u = cal.utilization
    assert (u.trainings, u.samplings, u.sample) == (1, 0, None)
    assert 0 < u.train < spec.hardware.utilization  # a tiny model on one thread: far below
    assert u.peaks[0].startswith("this CPU's measured fp32 matmul rate" if ON_CPU
                                 else "H100-SXM's peak, 9.89e+14 FLOP/s")
    calibrated = CostModel(spec, cal).estimate(allocation)
    # measured below the assumed 0.4: training is dearer, by exactly that ratio
    assert calibrated.train_gpu_hours == pytest.approx(
        assumed.train_gpu_hours * spec.hardware.utilization / u.train)
    assert calibrated.train_gpu_hours > assumed.train_gpu_hours
    assert calibrated.inference_gpu_hours == assumed.inference_gpu_hours

    # a drawing measured on a GPU divides by the task hardware's peak, not by a CPU's
    env.cache.record_sampling("k", {"device": "cuda:NVIDIA H100", "peak_flops": None,
                                    "seconds": 2.0, "flops": 0.1 * 2.0 * 9.89e14})
    u = env.calibration().utilization
    assert u.sample == pytest.approx(0.1) and u.samplings == 1
    assert any(p.startswith("H100-SXM's peak, 9.89e+14 FLOP/s") for p in u.peaks)
    repriced = CostModel(spec, env.calibration()).estimate(allocation)
    assert repriced.inference_gpu_hours == pytest.approx(assumed.inference_gpu_hours * 4)


@pytest.mark.skipif(not ON_CPU, reason="a GPU's work calibrates by default")
def test_cpu_work_is_reported_but_reprices_nothing_by_default(base: Path,
                                                              tmp_path: Path) -> None:
    spec = load_spec(write_task(tmp_path, base, ["none", "full"]))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    tuned = Plan(model="m1", method="full", mixture="default", samples=1, aggregator="first")
    env.model_path(artifact_of(spec, "parse", tuned))
    u = env.calibration().utilization
    assert (u.train, u.trainings) == (None, 0)
    assert u.left_out.startswith("1 measured runs on a CPU (utilisation ")
    allocation = Allocation.of({"parse": tuned, "add": tuned})
    assert CostModel(spec, env.calibration()).estimate(allocation) == CostModel(
        spec).estimate(allocation)
