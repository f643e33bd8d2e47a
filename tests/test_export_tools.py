"""A live task's export, checked by TRL's own parser and trained with TRL for real; the
Axolotl mixture file holds the very examples planner's training drew."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from envs import resolve_for_export
from envs.live.env import LiveEnvironment
from planner.cost import Cost
from planner.export import export_files, write_export
from planner.space import Allocation, Plan
from planner.spec import load_spec
from planner.store import StudyRecord, TrialRecord, TrialStatus
from tests.test_live import write_mixture_task
from tools.train import special_text, tokenize_example
from tools.zoo import build_tiny_model, char_tokenizer, synthetic_corpus

ALLOCATION = Allocation.of({
    "parse": Plan(model="m1", method="lora", mixture="even", samples=1, aggregator="first"),
    "add": Plan(model="m1", method="full", mixture="multi", samples=1, aggregator="first")})


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    base = build_tiny_model("tiny", synthetic_corpus(40, seed=0), tmp_path / "m1", steps=1,
                            batch_size=4)
    return write_mixture_task(tmp_path, {"m1": base})


def export(task: Path, fmt: str, out: Path) -> list[str]:
    spec = load_spec(task)
    study = StudyRecord("mix", spec.name, str(task), {}, "1gpu-h", 1.0, "random", 0, 0.0)
    trial = TrialRecord(0, ALLOCATION, TrialStatus.OK, 0.25, {"parse": 0.5, "add": 0.5},
                        Cost(1e-9, 1e-9))
    files, unexpressed = export_files(spec, study, trial, fmt, resolve_for_export(spec, ALLOCATION))
    write_export(files, out)
    return unexpressed


def test_trl_configs_pass_trls_strict_parser_and_train(task: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser
    from trl.scripts.sft import main as trl_sft
    from trl.scripts.utils import DatasetMixtureConfig

    out = tmp_path / "trl-export"
    assert export(task, "trl", out) == []
    monkeypatch.chdir(out)  # the README: run from the export folder
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
    parsed = {}
    for name in ("parse", "add"):
        # bf16 stays as a GPU user wants it; on this CPU, TRL itself asks for --use_cpu
        parsed[name] = parser.parse_args_and_config(
            args=["--config", f"trl/{name}.yaml", "--use_cpu", "true"],
            fail_with_unknown_args=True)
        assert parsed[name][1].bf16 is True
    _, sft, model, mixture = parsed["parse"][:4]
    assert model.use_peft and model.lora_r == 4 and sft.max_steps == 2
    assert [(d.data_files, d.fraction) for d in mixture.datasets] == [
        ("data/m1.parse.easy.jsonl", 0.5), ("data/m1.parse.hard.jsonl", 0.5)]
    first = json.loads(Path("data/m1.parse.easy.jsonl").read_text().splitlines()[0])
    assert first["prompt"].endswith(" sum:") and "+" in first["completion"]

    sft.bf16 = False  # this CPU has no bf16; everything else as exported
    trl_sft(*parsed["parse"][:4])
    adapter = json.loads(Path("outputs/parse/adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["target_modules"] == r"(.*\.)?c_attn"  # GPT-2's
    base = yaml.safe_load(Path("trl/parse.yaml").read_text())["model_name_or_path"]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "outputs/parse")
    assert sum("lora_A" in n for n, _ in tuned.named_parameters()) == 2  # one per layer


def test_axolotl_mixture_file_holds_the_examples_planner_trained_on(task: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "axolotl-export"
    unexpressed = export(task, "axolotl", out)
    assert any(line.startswith("parse: mixture weights") for line in unexpressed)
    config = yaml.safe_load((out / "axolotl" / "add.yml").read_text())
    assert config["adapter"] is None and config["datasets"][0]["path"] == "data/add.mixture.jsonl"
    drawn = [json.loads(line) for line in (out / "data" / "add.mixture.jsonl").open()]
    easy = {line for line in (out / "data" / "m1.parse.easy.jsonl").read_text().splitlines()}
    from_easy = sum(json.dumps(r) in easy for r in drawn)

    env = LiveEnvironment(load_spec(task), cache_dir=tmp_path / "cache", progress=False)
    measured = env.evaluate(ALLOCATION).measured
    # the add model's draw: parse's LoRA draws from parse/easy too, so subtract its share
    assert len(drawn) == 2 * 50
    parse_draw = [json.loads(line) for line in (out / "data" / "parse.mixture.jsonl").open()]
    parse_easy = sum(json.dumps(r) in easy for r in parse_draw)
    assert from_easy == measured["examples:parse/easy"] - parse_easy
    assert len(drawn) - from_easy == measured["examples:add/train"]


def test_planner_export_copies_the_task_so_it_loads_anywhere(task: Path, tmp_path: Path) -> None:
    out = tmp_path / "planner-export"
    export(task, "planner", out)
    copy = load_spec(out / "task" / "task.yaml")
    original = load_spec(task)
    for a, b in zip(copy.subtasks, original.subtasks, strict=True):
        assert a.data is not None and b.data is not None
        assert copy.path(a.data.val).read_text() == original.path(b.data.val).read_text()
        assert copy.path(a.data.val).is_relative_to(out)
    assert Path(copy.model("m1").source).is_absolute()
    assert "planner train ." in (out / "README.md").read_text()


def test_llamafactory_data_carries_the_special_tokens_its_empty_template_omits(
        task: Path, tmp_path: Path) -> None:
    out = tmp_path / "lf-export"
    export(task, "llamafactory", out)
    config = yaml.safe_load((out / "llamafactory" / "parse.yaml").read_text())
    info = json.loads((out / "data" / "dataset_info.json").read_text())
    assert config["template"] == "empty" and config["dataset"] == "m1.parse.easy,m1.parse.hard"
    assert set(config["dataset"].split(",")) <= set(info)
    tokenizer = AutoTokenizer.from_pretrained(config["model_name_or_path"])
    raw = [json.loads(line) for line in (out / "data" / "m1.parse.easy.jsonl").open()]
    rendered = LiveEnvironment(load_spec(task), cache_dir=tmp_path / "cache",
                               progress=False).examples("parse/easy")
    for lf, ours in zip(raw, rendered, strict=True):
        # LLaMA-Factory's `empty` template: prompt and completion as text, no special tokens
        ids = (tokenizer(lf["prompt"], add_special_tokens=False)["input_ids"]
               + tokenizer(lf["completion"], add_special_tokens=False)["input_ids"])
        assert ids == tokenize_example(tokenizer, ours, 10_000)["input_ids"]


def test_special_text_names_the_bos_a_tokenizer_adds(tmp_path: Path) -> None:
    from tokenizers import processors

    plain = char_tokenizer()
    plain.save_pretrained(tmp_path / "plain")
    assert special_text(tmp_path / "plain") == ("", "<eos>")
    with_bos = char_tokenizer()  # a Llama-style tokenizer: BOS before every encoded text
    with_bos.bos_token = "<unk>"
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<unk> $A", special_tokens=[("<unk>", with_bos.convert_tokens_to_ids("<unk>"))])
    with_bos.save_pretrained(tmp_path / "bos")
    bos, eos = special_text(tmp_path / "bos")
    assert (bos, eos) == ("<unk>", "<eos>")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "bos")
    example = {"prompt": "1+2=", "completion": "3"}
    as_text = (reloaded(bos + example["prompt"], add_special_tokens=False)["input_ids"]
               + reloaded(example["completion"] + eos, add_special_tokens=False)["input_ids"])
    assert as_text == tokenize_example(reloaded, example, 100)["input_ids"]
