"""Method kinds from the research, trained for real on the shipped tiny zoo models:
half fine-tuning (`hft`) and ProMoT (`promot`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from envs.live.env import LiveEnvironment, train_config
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.artifact import artifact_of
from planner.cost import CostModel
from planner.errors import SpecError
from planner.methods import TOOLS, Full, Hft, Promot, Training
from planner.space import Allocation, Plan
from planner.spec import load_spec
from tests.conftest import with_methods
from tools.train import (
    HFT_SCHEDULE,
    SOFT_PROMPT,
    Example,
    HalfFineTuning,
    TrainConfig,
    load_model,
    parameter_groups,
    tokenize_example,
    train,
)
from tools.zoo import addition_examples, extraction_examples, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the shipped zoo models are copied (no training)."""
    return tmp_path_factory.mktemp("zoo")


# --- HFT: each round freezes a fresh half of every layer, bit for bit ------------------------

class _Watch(TrainerCallback):
    """The weights at the start and after every `every` steps; before each optimizer step,
    the parameters that hold no gradient."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.weights: list[dict[str, torch.Tensor]] = []
        self.gradless: list[set[str]] = []

    def _keep(self, model: torch.nn.Module) -> None:
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: object) -> None:
        self._keep(kwargs["model"])

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: object) -> None:
        model = kwargs["model"]
        self.gradless.append({n for n, p in model.named_parameters() if p.grad is None})

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: object) -> None:
        if state.global_step % self.every == 0:
            self._keep(kwargs["model"])


def test_hft_freezes_a_fresh_half_of_each_layer_bit_identical_through_its_round(
        zoo: Path, tmp_path: Path) -> None:
    base, rounds, steps = tiny_model("tiny", zoo), 3, 3  # round 2: AdamW has moments
    data = {"sums": addition_examples(64, seed=1)}
    watch = _Watch(every=steps)
    train(base, data, {"sums": 1.0}, tmp_path, TrainConfig(steps=rounds * steps, batch_size=8,
                                                           lr=3e-3, max_length=32),
          HalfFineTuning(round_steps=steps), callbacks=[watch])
    schedule = json.loads((tmp_path / HFT_SCHEDULE).read_text())
    frozen = [set(names) for names in schedule["frozen"]]
    assert schedule["round_steps"] == steps and len(frozen) == rounds

    groups = parameter_groups(AutoModelForCausalLM.from_pretrained(base))
    assert len(groups["transformer.h.0"]) == 6  # ln_1, attn.c_attn, attn.c_proj, ln_2, mlp x2
    for names in frozen:  # whole groups, half of each layer (an odd count: either side)
        for layer_groups in groups.values():
            held = [g for g in layer_groups if set(g) <= names]
            assert all(not set(g) & names for g in layer_groups if g not in held)
            assert len(held) in {len(layer_groups) // 2, (len(layer_groups) + 1) // 2}
    assert frozen[0] != frozen[1] != frozen[2]

    for r, names in enumerate(frozen):
        before, after = watch.weights[r], watch.weights[r + 1]
        for name in before:
            if name in names:
                assert torch.equal(before[name], after[name]), (r, name)
            else:
                assert not torch.equal(before[name], after[name]), (r, name)
        assert all(g == names for g in watch.gradless[r * steps:(r + 1) * steps])  # no grads
    # frozen now, trained just before: AdamW holds moments for them, and did not step them
    assert frozen[1] - frozen[0] and frozen[2] - frozen[1]

    saved = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(saved[n], w) for n, w in watch.weights[-1].items() if n in saved)


# --- ProMoT: the prompt takes the new format, so the weights keep an old one ----------------

def _parity(examples: list[Example]) -> list[Example]:
    """'12+345=' -> 'odd': a new answer format on prompts the model knows."""
    return [{"prompt": e["prompt"], "completion": "odd" if int(e["completion"]) % 2 else "even"}
            for e in examples]


def _nll_and_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      examples: list[Example]) -> tuple[float, float]:
    """Mean loss per completion token (teacher-forced) and greedy exact match."""
    loss = tokens = correct = 0.0
    with torch.no_grad():
        for ex in examples:
            f = tokenize_example(tokenizer, ex, 128)
            labels = torch.tensor([f["labels"]])
            n = int((labels != -100).sum())
            loss += model(input_ids=torch.tensor([f["input_ids"]]), labels=labels).loss.item() * n
            tokens += n
            prompt = tokenizer(ex["prompt"], return_tensors="pt")
            out = model.generate(**prompt, max_new_tokens=len(ex["completion"]) + 1,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:],
                                    skip_special_tokens=True)
            correct += text == ex["completion"]
    return loss / tokens, correct / len(examples)


def test_promot_keeps_a_format_it_never_trained_on_that_full_fine_tuning_loses(
        zoo: Path, tmp_path: Path) -> None:
    """The small zoo model was taught two formats: sums ('12+345=' -> '357') and extraction
    ('kim got 12 pens, then 345. sum:' -> '12+345'). Fine-tuning on sums answered as parity
    ('odd'/'even') with every weight makes it answer that way everywhere and lose extraction;
    ProMoT's weights, trained behind a soft prompt that took up the new format, keep it."""
    base = tiny_model("small", zoo)
    data = {"parity": _parity(addition_examples(400, seed=11))}
    parity, extraction = _parity(addition_examples(24, seed=12)), extraction_examples(24, seed=99)
    method = Promot(name="promot", options={"steps": 30, "batch_size": 16, "lr": 5e-4,
                                            "prompt_steps": 30, "prompt_lr": 1e-2,
                                            "keep_prompt": True})
    config = train_config(method.options)
    full = train(base, data, {"parity": 1.0}, tmp_path / "full", config)
    promot = train(base, data, {"parity": 1.0}, tmp_path / "promot", config, method.adapter())
    assert len(promot.losses) == 60 and promot.examples == {"parity": 60 * 16}

    before, tokenizer = load_model(base)
    tuned, _ = load_model(full.artifact)
    with_prompt, _ = load_model(promot.artifact)
    assert isinstance(with_prompt, PeftModel) and (promot.artifact / SOFT_PROMPT).is_dir()
    served = AutoModelForCausalLM.from_pretrained(promot.artifact).eval()  # the weights alone

    base_kept = _nll_and_accuracy(before, tokenizer, extraction)
    full_kept = _nll_and_accuracy(tuned, tokenizer, extraction)
    promot_kept = _nll_and_accuracy(served, tokenizer, extraction)
    print(f"extraction (loss/token, exact match): base {base_kept}, full {full_kept}, "
          f"ProMoT {promot_kept}")
    assert base_kept[1] >= 0.6  # the base knows the format
    assert promot_kept[0] < full_kept[0] / 3 and promot_kept[1] >= full_kept[1] + 0.4
    assert promot_kept[1] >= base_kept[1] - 0.15  # ProMoT keeps about all of it

    # ... while both learned the new task (ProMoT with its prompt, as the paper evaluates it)
    learned = {name: _nll_and_accuracy(model, tokenizer, parity)[0] for name, model in
               (("base", before), ("full", tuned), ("promot", with_prompt))}
    print(f"parity loss/token: {learned}")
    assert max(learned["full"], learned["promot"]) < min(0.5, learned["base"] / 5)


# --- task.yaml: options, FLOPs, tool configs --------------------------------------------------

@pytest.mark.parametrize(("method", "expected"), [
    ({"name": "h", "kind": "hft", "options": {"rounds": 4}},
     r"methods\[2\] \(h\)\.options\.rounds: kind hft takes no option 'rounds'; valid options: "
     r"batch_size, focal_gamma, grad_accum, gradient_checkpointing, loss_balance, lr, "
     r"max_length, precision, round_steps, seed, steps, torch_compile$"),
    ({"name": "p", "kind": "promot", "options": {"lora_r": 4}},
     r"methods\[2\] \(p\)\.options\.lora_r: kind promot takes no option 'lora_r'; valid "
     r"options: batch_size, focal_gamma, grad_accum, gradient_checkpointing, keep_prompt, "
     r"loss_balance, lr, max_length, num_virtual_tokens, precision, prompt_lr, prompt_steps, "
     r"seed, steps, torch_compile$"),
    ({"name": "p", "kind": "promot", "options": {"prompt_steps": 0}},
     r"methods\[2\] \(p\)\.options\.prompt_steps: Input should be greater than 0"),
])
def test_bad_option_names_the_valid_ones(tmp_path: Path, method: dict, expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        load_spec(with_methods(tmp_path, [method]))


def test_kinds_validate_price_and_export(tmp_path: Path) -> None:
    spec = load_spec(with_methods(tmp_path, [
        {"name": "h", "kind": "hft", "options": {"steps": 10, "batch_size": 4}},
        {"name": "p", "kind": "promot", "options": {"steps": 30, "prompt_steps": 10,
                                                    "batch_size": 4, "keep_prompt": True}}]))
    hft, promot = spec.method("h"), spec.method("p")
    assert isinstance(hft, Hft) and isinstance(promot, Promot)
    assert hft.adapter().round_steps == 3  # four rounds: ceil(10 / 4)
    assert Hft(name="h", options={"round_steps": 7}).adapter().round_steps == 7
    recipe = promot.adapter()
    assert (recipe.prompt.num_virtual_tokens, recipe.prompt_steps, recipe.keep_prompt) == (
        8, 10, True)
    assert promot.settings() != Promot(name="p", options={
        "steps": 30, "prompt_steps": 10, "batch_size": 4}).settings()  # keep_prompt counts

    # FLOPs: HFT 5ND; ProMoT 4·N·D1 + 6·N·D2 (D1: 10 steps, D2: 30 steps, 4 x 25 tokens each)
    assert hft.train_flops(params=1e6, tokens_per_example=25.0) == pytest.approx(5 * 1e6 * 1000)
    assert promot.tokens(25.0) == 4000
    assert promot.train_flops(1e6, 25.0) == pytest.approx(4 * 1e6 * 1000 + 6 * 1e6 * 3000)
    assert Promot(name="q", train_tokens=400, options={"steps": 3, "prompt_steps": 1}
                  ).train_flops(1e6, 25.0) == pytest.approx(4 * 1e6 * 100 + 6 * 1e6 * 300)

    # another tool trains every weight (kind full's keys, stage 2's loop) and is told so
    for tool in TOOLS:
        for method in (hft, promot):
            loop = Training(**method.options.model_dump(include=set(Training.model_fields)))
            config = method.tool_config(tool)
            assert config.keys == Full(name="f", options=loop).tool_config(tool).keys
            assert len(config.unexpressed) == 1
            assert config.unexpressed[0].startswith(f"kind {method.kind}: {tool} ")
    assert promot.serves_soft_prompt and not hft.serves_soft_prompt
    assert not Promot(name="p").serves_soft_prompt


# --- live: both kinds train through the environment, cached by their settings ----------------

def test_both_kinds_train_live_and_are_cached(zoo: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", wordsum_records(20, seed=1))
    write_jsonl(tmp_path / "val.jsonl", wordsum_records(3, seed=2))
    loop = {"steps": 2, "batch_size": 4, "lr": 0.01, "max_length": 48}
    methods = {"hft": {"kind": "hft", "options": {**loop, "round_steps": 1}},
               "promot": {"kind": "promot", "options": {**loop, "prompt_steps": 3,
                                                        "num_virtual_tokens": 2}},
               "promot-kept": {"kind": "promot", "options": {**loop, "prompt_steps": 3,
                                                             "num_virtual_tokens": 2,
                                                             "keep_prompt": True}}}
    task = {"name": "live-research", "environment": "live", "budget": "1gpu-h",
            "workload": {"queries": 1000},
            "models": [{"name": "m", "params": 1e5, "source": str(tiny_model("tiny", zoo))}],
            "methods": [{"name": n, **m} for n, m in methods.items()],
            "subtasks": [{"name": "parse", "prompt_tokens": 10, "output_tokens": 5,
                          "models": ["m"], "methods": list(methods), "samples": [1],
                          "aggregators": ["first"], "decoding": {"max_new_tokens": 4},
                          "data": {"sources": {"train": "train.jsonl"}, "val": "val.jsonl",
                                   "prompt": "{problem} sum:"}}]}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    spec = load_spec(tmp_path / "task.yaml")
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    cost = CostModel(spec)
    # FLOPs with N = 1e5 and 10 + 5 tokens per example: HFT 5·N·D, ProMoT 4·N·D1 + 6·N·D2
    flops = {"hft": 5e5 * 2 * 4 * 15, "promot": 4e5 * 3 * 4 * 15 + 6e5 * 2 * 4 * 15}
    flops["promot-kept"] = flops["promot"]
    for name, draws in (("hft", 2 * 4), ("promot", 5 * 4), ("promot-kept", 5 * 4)):
        plan = Plan(model="m", method=name, mixture="default", samples=1, aggregator="first")
        observation = env.evaluate(Allocation.of({"parse": plan}))
        assert observation.measured["examples:parse/train"] == draws
        assert 0.0 <= observation.score <= 1.0
        artifact = artifact_of(spec, "parse", plan)
        folder = env.model_path(artifact)
        assert (folder / "model.safetensors").exists()  # every weight, no adapter
        assert not (folder / "adapter_config.json").exists()
        assert (folder / HFT_SCHEDULE).exists() == (name == "hft")
        assert (folder / SOFT_PROMPT).exists() == (name == "promot-kept")
        assert cost.train_flops(artifact) == pytest.approx(flops[name])
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (3, 3)
