"""Real models behave like real models: answer extractors (voting and scoring compare the
answers, not the chatter), chat templates (sampling and training alike), and a training
length derived from the data, with what it cuts reported. Tiny GPT-2s, a few items."""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

import tools.train
from envs import resolve_for_export
from envs.live.env import LiveEnvironment, prompt_seed
from envs.live.scoring import aggregate, expected_score, label_answer
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.artifact import artifact_of
from planner.cost import Cost
from planner.errors import SpecError
from planner.export import export_files, write_export
from planner.space import Allocation, Plan
from planner.spec import load_spec
from planner.store import StudyRecord, TrialRecord, TrialStatus
from tests.conftest import write_tiny_task
from tools.evaluate import (
    exact_match,
    expected_majority_at_k,
    last_number,
    load_extractor,
    regex_extractor,
)
from tools.infer import TransformersSampler
from tools.train import (
    MAX_LENGTH_CAP,
    TrainConfig,
    derived_max_length,
    load_tokenizer,
    sample_mixture,
    tokenize_example,
    train,
)
from tools.zoo import build_tiny_model, synthetic_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

CHAT = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


# --- extractors and the vote, without a model ------------------------------------------------

def test_extractors_find_the_answer_in_chatty_text(tmp_path: Path) -> None:
    assert last_number("Let me think: 5 + 7 = 12. So the answer is 1,234.") == "1234"
    assert last_number("It costs $3.50.") == "3.5"
    assert last_number("42.0") == last_number("the answer: 42") == "42"
    assert last_number("x = -7, y = 2") == "2" and last_number("-7") == "-7"
    assert last_number("7, 11") == "11"  # a comma and a space: two numbers, not 711
    assert last_number("no digits here") is None
    hashes = regex_extractor(r"#### (.*)")
    assert hashes("Natalia sold 48 clips.\n#### 72 ") == "72"
    assert hashes("72") is None
    assert regex_extractor(r"\d+")("a 12 b 34") == "12"  # no group: the first whole match
    (tmp_path / "my_answers.py").write_text(
        "def shout(text):\n    return text.strip().upper() or None\n"
        "def count(text):\n    return len(text)\n")
    assert load_extractor("my_answers:shout", tmp_path)(" yes ") == "YES"
    with pytest.raises(TypeError, match="returned int; return a string, or None"):
        load_extractor("my_answers:count", tmp_path)("abc")
    assert load_extractor(None)("  raw  ") == "raw"  # the default: today's stripped text


def _brute_majority(answers: list, correct: list[float], k: int) -> float:
    """Mean over k-subsets of the winner's score: the majority among answers that are not
    None (ties shared equally); a subset with no answer scores its abstentions' value."""
    total = 0.0
    for subset in itertools.combinations(range(len(answers)), k):
        votes = Counter(answers[i] for i in subset if answers[i] is not None)
        if not votes:
            total += correct[subset[0]]
            continue
        top = max(votes.values())
        winners = [a for a, c in votes.items() if c == top]
        score = {answers[i]: correct[i] for i in subset}
        total += sum(score[w] for w in winners) / len(winners)
    return total / math.comb(len(answers), k)


@pytest.mark.parametrize("answers", [
    ["12", None, None, "13", "12", None],
    [None, None, "7", None],
    ["a", "b", None, "a", "b", "c", None, None],
    [None, None, None],
])
def test_samples_without_an_answer_never_win_the_vote(answers: list) -> None:
    correct = [float(a in ("12", "a", "7")) for a in answers]
    for k in range(1, len(answers) + 1):
        assert expected_majority_at_k(answers, correct, k, abstain=None) == pytest.approx(
            _brute_majority(answers, correct, k)), k


def test_chatty_completions_vote_on_their_extracted_answers() -> None:
    texts = ["Let me see, 5+7 is 12. The answer is 12.", "I think it is 12",
             "Hmm, maybe 13?", "It's twelve, I am sure.", "12, final answer"]
    extract = load_extractor("last_number")
    labels = [label_answer("5 + 7 = 12\n#### 12", extract)]
    assert labels == ["12"]
    answers = [[extract(t) for t in texts]]
    assert answers == [["12", "12", "13", None, "12"]]
    # raw strings: five distinct answers, none equal to the label; extracted: 12 wins
    assert expected_score([texts], ["12"], exact_match, "majority", 5) == 0.0
    assert expected_score(answers, labels, exact_match, "majority", 5) == 1.0
    assert expected_score(answers, labels, exact_match, "first", 5) == pytest.approx(3 / 5)
    assert aggregate(answers[0], "majority", 5, exact_match) == "12"
    assert aggregate([None, None], "majority", 2, exact_match) == ""
    assert aggregate(answers[0], "oracle", 3, exact_match, "12") == "12"
    hashes = regex_extractor(r"#### (.*)")
    assert label_answer("18", hashes) == "18"  # a bare label is its own answer


# --- task.yaml --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2 without a chat template and a copy with one."""
    folder = tmp_path_factory.mktemp("bases")
    plain = build_tiny_model("tiny", synthetic_corpus(40, seed=0), folder / "plain", steps=1,
                             batch_size=4, seed=0)
    chat = folder / "chat"
    shutil.copytree(plain, chat)
    tokenizer = load_tokenizer(chat)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(chat)
    return {"plain": plain, "chat": chat}


def write_task(folder: Path, bases: dict[str, Path], parse: dict | None = None,
               add: dict | None = None, methods: list[dict] | None = None) -> Path:
    """parse -> add on wordsum data, methods `none` (and `methods`); stage options merged."""
    write_jsonl(folder / "train.jsonl", wordsum_records(12, seed=1))
    write_jsonl(folder / "val.jsonl", wordsum_records(4, seed=2))
    data = {"sources": {"train": "train.jsonl"}, "val": "val.jsonl"}
    methods = methods or []
    stage = {"prompt_tokens": 10, "output_tokens": 5, "models": list(bases),
             "methods": ["none", *(m["name"] for m in methods)], "samples": [1, 3],
             "aggregators": ["first", "majority"], "decoding": {"max_new_tokens": 4}}
    task = {
        "name": "answers", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": 1000},
        "models": [{"name": n, "params": 1e5, "source": str(p)} for n, p in bases.items()],
        "methods": [{"name": "none", "kind": "none"}, *methods],
        "subtasks": [
            {"name": "parse", **stage, "data": {**data, "prompt": "{problem} sum:"},
             **(parse or {})},
            {"name": "add", "depends_on": ["parse"], **stage,
             "data": {**data, "prompt": "{parse}="}, **(add or {})}],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def plan(model: str, method: str = "none", n: int = 3) -> Plan:
    """n = 1 answers alike with every aggregator: its canonical one is `first`."""
    return Plan(model=model, method=method, mixture="default", samples=n,
                aggregator="majority" if n > 1 else "first")


def test_answer_and_chat_template_in_task_yaml(tmp_path: Path, bases: dict[str, Path]) -> None:
    for answer in ("last_number", {"regex": "#### (.*)"}, "my_answers:pick"):
        spec = load_spec(write_task(tmp_path, bases, parse={"answer": answer}))
        assert spec.subtask("parse").answer == answer
    dumped = load_spec(write_task(tmp_path, bases)).model_dump(mode="json")["subtasks"][0]
    assert "answer" not in dumped and "chat_template" not in dumped  # unset: hash unchanged
    for answer, expected in (
            ("biggest_number", "'biggest_number' is not an answer extractor; write "
                               "last_number, {regex: PATTERN}"),
            ({"regex": "#### ([0-9"}, "regex '#### ([0-9' does not compile"),
            ({"pattern": "x"}, "a regex extractor is one key, `regex: PATTERN`")):
        path = write_task(tmp_path, bases, parse={"answer": answer})
        with pytest.raises(SpecError) as e:
            load_spec(path)
        assert str(e.value).startswith(f"{path}: subtasks.0.answer: ")
        assert expected in str(e.value) and "\n" not in str(e.value)
    path = write_task(tmp_path, bases, parse={"answer": "nowhere:pick"})
    with pytest.raises(SpecError, match=r"subtasks\.parse\.answer: cannot load 'nowhere:pick' "
                                        r"\(ModuleNotFoundError.*put the module beside"):
        LiveEnvironment(load_spec(path), cache_dir=tmp_path / "cache", progress=False)


@pytest.mark.parametrize(("field", "value"), [("answer", "last_number"),
                                              ("chat_template", True)])
def test_a_replay_task_refuses_live_only_fields(tmp_path: Path, field: str,
                                                value: object) -> None:
    path = write_tiny_task(tmp_path)
    task = yaml.safe_load(path.read_text())
    task["subtasks"][1][field] = value
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert str(e.value).startswith(f"{path}: subtasks[1].{field}: the replay environment "
                                   f"ignores `{field}`")
    assert "remove it" in str(e.value)


def test_a_bad_answer_is_one_line_and_exit_2(tmp_path: Path, bases: dict[str, Path]) -> None:
    path = write_task(tmp_path, bases, add={"answer": {"regex": "(unclosed"}})
    r = subprocess.run([sys.executable, "-m", "planner.cli", "check", str(path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"Error: {path}: subtasks.1.answer: Value error, regex "
                                "'(unclosed' does not compile (missing ), unterminated "
                                "subpattern at position 0); fix the pattern")


# --- the live environment ---------------------------------------------------------------------

def test_live_scores_votes_and_passes_on_extracted_answers(tmp_path: Path,
                                                           bases: dict[str, Path]) -> None:
    """parse's answer is the first two characters of a completion (None if it is blank):
    its score, its vote and what add reads are computed on those, from the same samples."""
    (tmp_path / "heads.py").write_text(
        "def head(text):\n    return text.strip()[:2] or None\n")
    spec = load_spec(write_task(tmp_path, bases, parse={"answer": "heads:head"}))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    run = env.run(Allocation.of({"parse": plan("plain"), "add": plan("plain", n=1)}))
    head = load_extractor("heads:head", tmp_path)
    sampler = TransformersSampler(bases["plain"])
    decoding = spec.subtask("parse").decoding

    def answers(prompt: str) -> list[str | None]:
        texts = sampler.sample([prompt], 3, max_new_tokens=decoding.max_new_tokens,
                               temperature=decoding.temperature, top_p=decoding.top_p,
                               seed=prompt_seed(decoding.seed, prompt)).texts[0]
        return [head(t) for t in texts]

    val = env.data["parse"].val
    own = [answers(env.data["parse"].prompt(r)) for r in val]
    labels = [label_answer(r["parse"], head) for r in val]
    assert labels == [r["parse"][:2] for r in val]
    assert run.observation.subtask_scores["parse"] == pytest.approx(
        expected_score(own, labels, exact_match, "majority", 3))
    piped = [aggregate(answers(p), "majority", 3, exact_match) for p in run.prompts["parse"]]
    assert run.outputs["parse"] == piped
    assert all(len(out) <= 2 for out in run.outputs["parse"])  # answers, not completions
    assert run.prompts["add"] == [f"{out}=" for out in piped]


def test_chat_template_renders_sampling_and_training_alike(
        tmp_path: Path, bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    full = {"name": "full", "kind": "full", "options": {"steps": 1, "batch_size": 2}}
    path = write_task(tmp_path, {"chat": bases["chat"]}, parse={"chat_template": True},
                      methods=[full])
    env = LiveEnvironment(load_spec(path), cache_dir=tmp_path / "cache", progress=False)
    trained_on: list[dict] = []
    real_train = tools.train.train

    def spy(base, data, *args, **kwargs):  # the real training, its data noted
        trained_on.append(data)
        return real_train(base, data, *args, **kwargs)

    monkeypatch.setattr(tools.train, "train", spy)  # the live environment calls it
    run = env.run(Allocation.of({"parse": plan("chat", "full", n=1),
                                 "add": plan("chat", "full", n=1)}))
    raw = [env.data["parse"].prompt(r) for r in env.items]
    assert run.prompts["parse"] == [f"<|user|>{p}<|assistant|>" for p in raw]
    assert run.prompts["add"] == [f"{out}=" for out in run.outputs["parse"]]  # no template
    data = {q: examples for d in trained_on for q, examples in d.items()}
    assert [e["prompt"] for e in data["parse/train"]] == [
        f"<|user|>{env.data['parse'].prompt(r)}<|assistant|>"
        for r in env.data["parse"].sources["train"]]
    assert data["add/train"] == env.examples("add/train")  # raw: add sets no template
    assert env.examples("parse/train")[0]["prompt"].endswith(" sum:")  # raw, for export

    path = write_task(tmp_path, bases, parse={"chat_template": True})
    with pytest.raises(SpecError) as e:
        LiveEnvironment(load_spec(path), cache_dir=tmp_path / "cache", progress=False)
    assert str(e.value).startswith(f"{path}: subtasks.parse.chat_template: model 'plain' (")
    assert "has no chat template in its tokenizer; use a chat model" in str(e.value)


def test_an_export_trains_and_serves_in_the_chat_template(
        tmp_path: Path, bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The data files hold each chat-template source as its base trains on it, and the
    subtask's request goes to the chat endpoint, so nothing is left to redo by hand."""
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    full = {"name": "full", "kind": "full", "options": {"steps": 1, "batch_size": 2}}
    spec = load_spec(write_task(tmp_path, {"chat": bases["chat"]},
                                parse={"chat_template": True}, methods=[full]))
    allocation = Allocation.of({"parse": plan("chat", "full", n=1),
                                "add": plan("chat", "full", n=1)})
    study = StudyRecord("s", spec.name, "", {}, "1gpu-h", 1.0, "agent", 0, 0.0)
    trial = TrialRecord(0, allocation, TrialStatus.OK, 0.5, {"parse": 0.5, "add": 0.5},
                        Cost(0.1, 0.2))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    raw = [env.data["parse"].prompt(r) for r in env.data["parse"].sources["train"]]
    for fmt in ("trl", "axolotl", "planner"):
        files, unexpressed = export_files(spec, study, trial, fmt,
                                          resolve_for_export(spec, allocation))
        assert not [line for line in unexpressed if "chat" in line]
        serving = yaml.safe_load(files["serving.yaml"])["subtasks"]
        assert serving["parse"]["endpoint"] == "/v1/chat/completions"
        assert serving["add"]["endpoint"] == "/v1/completions"
        if fmt == "planner":  # `planner train` renders the task's own copy
            continue
        parse = [json.loads(line) for line in files["data/chat.parse.train.jsonl"].splitlines()]
        assert [e["prompt"] for e in parse] == [f"<|user|>{p}<|assistant|>" for p in raw]
        add = [json.loads(line) for line in files["data/chat.add.train.jsonl"].splitlines()]
        assert [e["prompt"] for e in add] == [e["prompt"] for e in env.examples("add/train")]


def test_a_planner_export_carries_the_modules_its_task_imports(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    """`planner train DIR` loads the exported task: the answer extractor and metric named
    module:function beside the task file travel with it (smolmath's smolmath_answers.py)."""
    task_dir, out = tmp_path / "task", tmp_path / "export"
    (task_dir / "exported_metrics").mkdir(parents=True)
    (task_dir / "exported_answers.py").write_text(
        "def pick(text):\n    return text.strip()[:2] or None\n")
    (task_dir / "exported_metrics" / "__init__.py").write_text("")
    (task_dir / "exported_metrics" / "match.py").write_text(
        "def score(prediction, label):\n    return float(prediction == label)\n")
    spec = load_spec(write_task(task_dir, {"plain": bases["plain"]},
                                parse={"answer": "exported_answers:pick"},
                                add={"metric": "exported_metrics.match:score"}))
    allocation = Allocation.of({"parse": plan("plain"), "add": plan("plain")})
    study = StudyRecord("s", spec.name, "", {}, "1gpu-h", 1.0, "agent", 0, 0.0)
    trial = TrialRecord(0, allocation, TrialStatus.OK, 0.5, {"parse": 0.5, "add": 0.5},
                        Cost(0.1, 0.2))
    files, _ = export_files(spec, study, trial, "planner", resolve_for_export(spec, allocation))
    assert {"task/exported_answers.py", "task/exported_metrics/__init__.py",
            "task/exported_metrics/match.py"} <= set(files)
    write_export(files, out)
    shutil.rmtree(task_dir)  # the export stands alone
    for name in ("exported_answers", "exported_metrics", "exported_metrics.match"):
        sys.modules.pop(name, None)
    env = LiveEnvironment(load_spec(out / "task" / "task.yaml"),
                          cache_dir=tmp_path / "cache", progress=False)
    assert env.answers["parse"]("12 pens") == "12"
    assert env.metrics["add"]("7", "7") == 1.0


# --- training length from the data -------------------------------------------------------------

def test_the_training_length_follows_the_data_and_cuts_are_counted(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    assert derived_max_length([5, 9, 3], None) == 9
    assert derived_max_length([5, 900], 128) == 128
    assert derived_max_length([10**6], None) == MAX_LENGTH_CAP
    examples = [{"prompt": r["problem"] + " sum:", "completion": r["parse"] * (1 + i % 3)}
                for i, r in enumerate(wordsum_records(12, seed=1))]  # of varied lengths
    tokenizer = load_tokenizer(bases["plain"])
    lengths = [len(tokenize_example(tokenizer, e, None)["input_ids"]) for e in examples]
    derived = train(bases["plain"], {"s": examples}, {"s": 1.0}, tmp_path / "a",
                    TrainConfig(steps=1, batch_size=8))
    assert derived.max_length == max(lengths) >= derived.longest  # all sources, not the draw
    assert derived.truncated == 0
    cut = sorted(lengths)[len(lengths) // 2]
    explicit = train(bases["plain"], {"s": examples}, {"s": 1.0}, tmp_path / "b",
                     TrainConfig(steps=1, batch_size=8, max_length=cut))
    drawn = sample_mixture({"s": examples}, {"s": 1.0}, 8, 0)
    long = [len(tokenize_example(tokenizer, e, None)["input_ids"]) > cut for _, e in drawn]
    assert explicit.max_length == cut and explicit.truncated == sum(long) > 0
    assert explicit.tokens_seen < derived.tokens_seen  # the same draw, cut


def test_the_live_environment_reports_examples_cut_to_the_models_context(
        tmp_path: Path, bases: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """parse's gold output is five copies of the problem: with the prompt, more than the
    tiny model's 128 positions. The derived length stops there, and the cut is said,
    counted and stored."""
    full = {"name": "full", "kind": "full", "options": {"steps": 1, "batch_size": 4}}
    path = write_task(tmp_path, {"plain": bases["plain"]}, methods=[full],
                      parse={"data": {"sources": {"train": "train.jsonl"}, "val": "val.jsonl",
                                      "prompt": "{problem} sum:", "label": "long"}})
    for name in ("train", "val"):
        records = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").open()]
        write_jsonl(tmp_path / f"{name}.jsonl", [{**r, "long": r["problem"] * 5}
                                                 for r in records])
    spec = load_spec(path)
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    allocation = Allocation.of({"parse": plan("plain", "full", n=1),
                                "add": plan("plain", n=1)})
    with caplog.at_level(logging.WARNING, logger="envs.live.env"):
        obs = env.evaluate(allocation)
    assert obs.measured["truncated_examples"] == 4  # every drawn example
    [record] = [r for r in caplog.records if "max_length" in r.getMessage()]
    assert ("training plain with method full cut 4 of 4 examples to max_length 128 (derived"
            in record.getMessage())
    [meta] = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob(
        "live/artifacts/*/meta.json")]
    assert (meta["max_length"], meta["truncated"]) == (128, 4)
    assert env.train_length(artifact_of(spec, "parse", allocation["parse"])) == 128  # export's
    caplog.clear()
    env.evaluate(allocation)  # cached: nothing trained, nothing said, still counted
    assert not caplog.records
