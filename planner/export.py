"""Export a trial's allocation as a folder another tool runs, and read a plan back.

`planner export STUDY --format F -o DIR` writes, relative to DIR:

    plan.yaml        the allocation, its scores and cost, and each distinct fine-tune
                     (`planner optimize --from DIR` and `planner train DIR` read it)
    README.md        how to run each file, expected scores, cost, what F cannot express
    serving.yaml     `vllm serve` commands and each subtask's request and aggregator
    task/            format `planner`, live tasks: the task and its data files, so
                     `planner train DIR` runs anywhere
    data/, llamafactory/, axolotl/, trl/   the other formats (`planner.train_configs`)

The folder is written beside DIR and renamed into place: a crash leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from planner.artifact import Artifact, artifact_of, verifier_of
from planner.cascade import cascade_of
from planner.cost import CostModel
from planner.errors import SpaceError, SpecError
from planner.methods import TOOLS, FineTune, Lora, Merge
from planner.serving import serving_plan
from planner.space import Allocation, SearchSpace
from planner.spec import IGNORED_FIELDS, VERIFIER_AGGREGATORS, TaskSpec, load_yaml
from planner.store import StudyRecord, TrialRecord
from planner.train_configs import (
    CONFIG_FILES,
    DATA_DIR,
    TRAIN_CONFIGS,
    Job,
    data_file,
    dataset_info,
    mixture_file,
)

FORMATS = ("planner", *TOOLS)
PLAN_FILE = "plan.yaml"
TASK_DIR = "task"

Example = dict[str, str]


@dataclass(frozen=True)
class Resolved:
    """The task's models and data as its environment sees them."""

    bases: dict[str, str]
    """Model name -> what other tools load: a local folder or file, or a hub id."""
    examples: dict[tuple[str, str], list[Example]] | None = None
    """(qualified source, model name) -> its training examples as that base trains on them
    (in its chat template where the source's subtask sets `chat_template`); None where the
    task has no data (replay)."""
    special: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Model name -> the BOS and EOS text its tokenizer puts around an example
    (`tools.train.special_text`); absent where the tokenizer is not at hand."""
    max_lengths: dict[str, int] = field(default_factory=dict)
    """Subtask -> tokens per example its fine-tune keeps, where the method derives them
    from the data (`max_length` unset); absent where the data is not at hand."""


def jobs_of(spec: TaskSpec, allocation: Allocation, bases: Mapping[str, str],
            max_lengths: Mapping[str, int] | None = None) -> dict[str, Job | None]:
    """Subtask -> the distinct fine-tune it serves from (None: a base or checkpoint as is).
    LoRA with peft's default targets gets them spelled out from the base's config, and a
    max_length derived from the data its value (`max_lengths`, by subtask)."""
    served: dict[Artifact, list[str]] = {}
    for subtask in spec.order():
        served.setdefault(artifact_of(spec, subtask, allocation[subtask]).exported,
                          []).append(subtask)
    jobs: dict[str, Job | None] = {}
    for artifact, subtasks in served.items():
        method = artifact.method
        job = None
        if isinstance(method, FineTune):
            base = bases[artifact.model]
            method = _with_targets(method, base)
            derived = (max_lengths or {}).get(subtasks[0])
            if method.options.max_length is None and derived is not None:
                method = method.model_copy(update={"options": method.options.model_copy(
                    update={"max_length": derived})})
            job = Job("_".join(subtasks), tuple(subtasks), artifact.model, base, method,
                      artifact.sources)
        jobs.update(dict.fromkeys(subtasks, job))
    return jobs


def _with_targets(method: FineTune, base: str) -> FineTune:
    """A LoRA left on peft's default modules, with them named from the base's config."""
    if not isinstance(method, Lora) or method.options.lora_targets is not None:
        return method
    config = Path(base) / "config.json"
    if not config.is_file():
        return method
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = json.loads(config.read_text()).get("model_type")
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        return method
    options = method.options.model_copy(update={"lora_targets": tuple(targets)})
    return method.model_copy(update={"options": options})


def _plan_document(spec: TaskSpec, study: StudyRecord, trial: TrialRecord,
                   served: Mapping[str, Job | None]) -> dict:
    """Everything needed to run the allocation again: the choices, scores and cost, and
    each distinct fine-tune once (`served`: each subtask's, `jobs_of`), whichever subtasks
    it serves."""
    cost_model = CostModel(spec)
    jobs = {j.name: j for j in served.values() if j}
    return {
        "task": spec.name,
        "study": study.name,
        "trial": trial.number,
        "budget": study.budget,
        "score": trial.score,
        "subtask_scores": dict(trial.subtask_scores),
        "cost_gpu_hours": {"train": trial.cost.train_gpu_hours,
                           "inference": trial.cost.inference_gpu_hours},
        "allocation": trial.allocation.to_dict(),
        "training": [{
            "name": j.name, "serves": list(j.serves), "base_model": j.base,
            "method": j.method.name, **j.method.model_dump(mode="json", exclude={"name"}),
            "train_tokens": cost_model.train_tokens(
                artifact_of(spec, j.serves[0], trial.allocation[j.serves[0]]).exported),
            "mixture": j.sources, "output_dir": j.output_dir} for j in jobs.values()],
    }


def export_files(spec: TaskSpec, study: StudyRecord, trial: TrialRecord, fmt: str,
                 resolved: Resolved) -> tuple[dict[str, str], list[str]]:
    """The export folder's files (relative path -> text) and, one line each, what `fmt`
    cannot express. `fmt` is `planner` or a tool of `planner.methods.TOOLS`."""
    jobs = jobs_of(spec, trial.allocation, resolved.bases, resolved.max_lengths)
    doc = _plan_document(spec, study, trial, jobs)
    distinct = list({j.name: j for j in jobs.values() if j}.values())
    serving, unexpressed = serving_plan(
        spec.subtasks, dict(trial.allocation.items()), jobs, resolved.bases,
        dict(trial.subtask_scores), recorded=resolved.examples is None)
    unexpressed += _research_notes(spec, trial.allocation, fmt)
    unexpressed += _unsourced(spec, trial.allocation)
    files = {PLAN_FILE: _yaml(doc), "serving.yaml": _yaml(serving)}
    runs: list[tuple[Job, str]] = []
    if fmt == "planner":
        if resolved.examples is None:
            unexpressed.append("train: a replay task has no data to train on; `planner train` "
                               "needs a live task (export another format to train elsewhere)")
        else:
            files |= task_copy(spec)
            runs = [(j, "planner train .") for j in distinct]
    else:
        for job in distinct:
            config = TRAIN_CONFIGS[fmt](job)
            path, command = CONFIG_FILES[fmt]
            files[path.format(job.name)] = _yaml(config.keys)
            runs.append((job, command.format(path.format(job.name))))
            unexpressed += [f"{job.name}: {line}" for line in config.unexpressed]
            if job.method.options.max_length is None:
                unexpressed.append(f"{job.name}: max_length: planner derives it from the "
                                   "training data, which is not at hand: the tool's default "
                                   "length applies; set it to the longest example's tokens")
        files |= _data_files(distinct, fmt, resolved, unexpressed)
    files["README.md"] = readme(doc, serving, fmt, runs, unexpressed)
    return files, unexpressed


def _unsourced(spec: TaskSpec, allocation: Allocation) -> list[str]:
    """A line naming the allocation's models the task gives no `source` (a replay task's
    table labels), which the configs and `vllm serve` then load by name; none if none."""
    names = sorted({p.model for _, p in allocation.items() if not spec.model(p.model).source})
    if not names:
        return []
    return [f"models {', '.join(names)}: the task gives no `source`, so the configs and "
            "`vllm serve` load them by name; set each model's `source:` to its Hugging Face "
            "id or folder"]


def _research_notes(spec: TaskSpec, allocation: Allocation, fmt: str) -> list[str]:
    """What no export format holds yet: a merge's components and the merge (the plan is
    exported as its base), the verifier a verifier aggregator re-ranks with, and a
    cascade's escalation rule and strong plan (the export serves the cheap plan alone)."""
    notes = []
    for s, plan in allocation.items():
        method = spec.method(plan.method)
        if isinstance(method, Merge):
            how = (method.tool_config(fmt).unexpressed[0] if fmt in TOOLS else
                   "kind merge: planner exports no merge; train the components and merge them "
                   "with planner (tools.merge)")
            notes.append(f"{s}: method {plan.method}: this export serves the base model "
                         f"{plan.model}, not the merge; {how}")
        if (v := verifier_of(spec, s, plan)) is not None and v.sequential:
            notes.append(f"{s}: verifier {plan.verifier} is sequential: planner trained the "
                         "generator further on its verification data (sampled from it, "
                         "labelled by the metric), one model that generates and scores; this "
                         "export holds the generator's fine-tune alone: continue it with "
                         "tools.verifier.continue_verifier")
        elif plan.aggregator in VERIFIER_AGGREGATORS and plan.samples > 1:
            notes.append(f"{s}: aggregator {plan.aggregator} re-ranks the n samples by verifier "
                         f"{plan.verifier}, which planner trained and this export does not hold; "
                         "train one (tools.verifier.train_verifier) to score the samples")
        if (cascade := cascade_of(spec, s, plan)) is not None:
            strong = cascade.strong
            trained = (f"; its fine-tune is not among the trainings here: train {strong.model} "
                       f"with {strong.method} on mixture {strong.mixture} as a plan of {s} would"
                       if spec.method(strong.method).fine_tunes else "")
            notes.append(f"{s}: cascade {plan.cascade} (Yue et al. 2024): planner answered with "
                         f"the plan above {cascade.describe()}; this export serves the plan "
                         f"above alone: serve {strong.model} too and apply the rule to the n "
                         f"answers{trained}")
    return notes


def _data_files(jobs: list[Job], fmt: str, resolved: Resolved,
                unexpressed: list[str]) -> dict[str, str]:
    """The sources the jobs train on as prompt/completion JSONL, as each base trains on them
    (for LLaMA-Factory with its special tokens as text), LLaMA-Factory's registry and
    Axolotl's pre-drawn mixtures."""
    wanted = {data_file(job, q): (q, job.model) for job in jobs for q in job.sources}
    files = {}
    if fmt == "llamafactory":
        names = [Path(path).stem for path in wanted]
        files[f"{DATA_DIR}/dataset_info.json"] = json.dumps(dataset_info(names), indent=2) + "\n"
    examples = resolved.examples
    if examples is None:
        if wanted:
            unexpressed.append("data: a replay task has no training records; write "
                               + ", ".join(wanted) + " (one {\"prompt\", \"completion\"} "
                               "object per line) before training")
        if wanted and fmt == "llamafactory":
            unexpressed.append("data: LLaMA-Factory's `empty` template adds no special tokens: "
                               "end each completion with the tokenizer's EOS token (and start "
                               "each prompt with its BOS, if it adds one)")
        return files
    for path, (q, model) in wanted.items():
        bos, eos = resolved.special.get(model, ("", "")) if fmt == "llamafactory" else ("", "")
        files[path] = _jsonl([{"prompt": bos + e["prompt"], "completion": e["completion"] + eos}
                              for e in examples[q, model]])
    if fmt == "axolotl":
        from tools.train import sample_mixture

        for job in (j for j in jobs if len(j.sources) > 1):
            o = job.method.options
            drawn = sample_mixture({q: examples[q, job.model] for q in job.sources}, job.sources,
                                   o.steps * o.batch_size, o.seed)
            files[mixture_file(job)] = _jsonl([example for _, example in drawn])
    return files


def task_copy(spec: TaskSpec) -> dict[str, str]:
    """The task, its data files and the Python modules beside it that a subtask's `metric`
    or `answer` names (module:function) under `task/`: data paths point into the copy,
    local model paths become absolute."""
    task = spec.model_dump(mode="json", exclude_none=True)
    for entry in task["subtasks"]:  # a field the environment ignores is refused on reading
        for name in IGNORED_FIELDS[spec.environment]:
            entry.pop(name, None)
    files: dict[str, str] = {}
    for entry, s in zip(task["subtasks"], spec.subtasks, strict=True):
        if s.data is None:
            continue
        named = {f"sources/{k}": p for k, p in s.data.sources.items()} | {"val": s.data.val}
        copies = {key: f"data/{s.name}/{key.removeprefix('sources/')}.jsonl" for key in named}
        for key, path in named.items():
            files[f"{TASK_DIR}/{copies[key]}"] = spec.path(path).read_text()
        entry["data"]["sources"] = {k: copies[f"sources/{k}"] for k in s.data.sources}
        entry["data"]["val"] = copies["val"]
    for entry in task["models"]:
        local = spec.path(Path(entry["source"])) if entry.get("source") else None
        if local is not None and local.exists():
            entry["source"] = str(local.resolve())
    files[f"{TASK_DIR}/task.yaml"] = _yaml(task)
    return files | {f"{TASK_DIR}/{rel}": text for rel, text in _user_modules(spec).items()}


def _user_modules(spec: TaskSpec) -> dict[str, str]:
    """The source files, by path relative to the task's folder, of the modules beside the
    task that a subtask's `metric` or `answer` imports (`module:function`): a `name.py`, or
    every .py file of a package folder `name/`. A module found elsewhere on the import path
    is installed where the export runs, as it was where the study ran."""
    named = {s.metric for s in spec.subtasks} | {
        s.answer for s in spec.subtasks if isinstance(s.answer, str)}
    tops = {name.partition(":")[0].split(".")[0] for name in named if ":" in name}
    files: dict[str, str] = {}
    for top in sorted(tops):
        module, package = spec.root / f"{top}.py", spec.root / top
        found = [module] if module.is_file() else sorted(package.rglob("*.py"))
        for path in found:
            files[path.relative_to(spec.root).as_posix()] = path.read_text()
    return files


def readme(doc: dict, serving: dict, fmt: str, runs: list[tuple[Job, str]],
           unexpressed: list[str]) -> str:
    """The export's README: how to run each file, expected scores, cost, what is missing."""
    cost = doc["cost_gpu_hours"]
    lines = [f"# {doc['task']}: allocation of study {doc['study']}, trial {doc['trial']}", "",
             f"Expected end-to-end score {doc['score']:.4g} (budget {doc['budget']}); "
             f"estimated cost {cost['train'] + cost['inference']:.4g} GPU-h "
             f"(training {cost['train']:.4g}, inference {cost['inference']:.4g}).", "",
             "| subtask | plan | expected score |", "|---|---|---|"]
    for subtask, plan in doc["allocation"].items():
        described = " / ".join(f"{k}={v}" for k, v in plan.items())
        lines.append(f"| {subtask} | {described} | {doc['subtask_scores'][subtask]:.4g} |")
    lines += ["", f"## Train ({fmt})", "", "Run from this folder."]
    if fmt == "planner" and runs:
        lines.append("`planner train .` trains each model below with planner's own tools, "
                     "re-scores the allocation on the task's validation data (task/) and "
                     "says whether the score agrees with the study's.")
    lines.append("")
    if not runs:
        lines.append("Nothing to train: every subtask serves a base model or checkpoint.")
    for job, command in runs:
        run = "" if fmt == "planner" else f"`{command}`: "
        lines += [f"- {run}{job.method.kind} on {job.base} for {', '.join(job.serves)}, data "
                  + ", ".join(f"{q} {w:.3g}" for q, w in job.sources.items())
                  + f"; writes {job.output_dir}"]
    lines += ["", "## Serve (vLLM)", "", "serving.yaml holds each subtask's request (POST it "
              "to the subtask's `endpoint`: /v1/completions with the filled prompt template "
              "as `prompt`, /v1/chat/completions with it as the one user message where "
              "planner used the model's chat template) and the aggregator to apply to its n "
              "answers.", ""]
    lines += [f"- `{s['command']}` for {', '.join(s['subtasks'])}" for s in serving["servers"]]
    lines += ["", f"## Not expressed in the {fmt} format", ""]
    lines += [f"- {line}" for line in unexpressed] or ["Nothing: every setting is exported."]
    return "\n".join(lines) + "\n"


def write_export(files: Mapping[str, str], out_dir: Path) -> None:
    """Write the files under `out_dir`, replacing an earlier export there; a folder that
    is not an export (no plan.yaml) and not empty is refused."""
    if out_dir.exists() and (not out_dir.is_dir() or (
            any(out_dir.iterdir()) and not (out_dir / PLAN_FILE).is_file())):
        raise SpecError(f"-o {out_dir}: exists and is not an export folder; give a new or "
                        "empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        if out_dir.exists():
            out_dir.replace(old)
        tmp.replace(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def read_plan(path: Path, space: SearchSpace) -> Allocation:
    """Read an export's (or a plan file's) allocation and validate it against the space."""
    if path.is_dir():
        path = path / PLAN_FILE
    if not path.is_file():
        raise SpecError(f"{path}: no such plan file; write one with `planner export`")
    doc = load_yaml(path, "plan")
    if not isinstance(doc, dict) or not isinstance(doc.get("allocation"), dict):
        raise SpecError(f"{path}: allocation: missing; a plan file maps `allocation` to one "
                        "plan per subtask")
    try:
        return space.coerce(doc["allocation"])
    except SpaceError as e:
        raise SpecError(f"{path}: allocation.{e}") from None


def _yaml(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _jsonl(records: list[Example]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
