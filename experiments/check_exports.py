"""Validate exported LLaMA-Factory and Axolotl configs with those tools' own parsers.

Opt-in, never part of `make test`. Each tool gets its own virtual environment under
$PLANNER_TOOL_VENVS (default ~/.cache/planner/tool-venvs), built on first use (1-3 min each
here; pip's log in <venv>.log) and reused after (a run then takes ~10 s). Both tools pin
torch/torchvision versions other than the project's, so each venv holds the project's torch
($PLANNER_TOOL_TORCH, default torch==2.13.0: the local CPU wheel here, no CUDA download), the
tool installed with --no-deps, and then only some of its requirements, at its pinned versions:

- llamafactory==0.9.5 (1.9 GB): all but torch, torchvision, torchaudio (no build matches torch
  2.13; llamafactory.data imports torchaudio for audio inputs only, so an empty module stands in)
  and gradio (web UI only; pip backtracks through dozens of its versions).
- axolotl==0.19.0 (1.5 GB): only what its config validator and prompt strategies import
  (pydantic, transformers, peft, datasets, ...), not the training stack (CUDA kernels etc.).

Checks, run from DIR (paths in the configs are relative to it):

- DIR/llamafactory/*.yaml, read with OmegaConf as `llamafactory-cli train` does:
  `llamafactory.hparams.get_train_args(config)` (unknown keys and bad values fail); the dataset
  names resolved in <dataset_dir>/dataset_info.json (`llamafactory.data.parser.
  get_dataset_list`); every file loaded, converted and mixed (mix_strategy, interleave_probs) by
  LLaMA-Factory's loader; `template` must be set and registered. bf16: true fails on a machine
  without a bf16 GPU ("Your setup doesn't support bf16/gpu"), so there, and only then, the
  checker adds `use_cpu: true` and says so on the result line.
- DIR/axolotl/*.yml: `axolotl.utils.config.validate_config(cfg, capabilities, ...)` with this
  machine's capabilities (bf16 auto/true/false all pass; true gets a note); top-level keys, each
  datasets entry's keys and a user-defined `type:` mapping's keys must be schema fields, since
  the validator drops unknown keys silently; LoRA needs lora_target_modules (a list) or
  lora_target_linear; each dataset file must exist.
- Both: the planner trains on the raw prompt followed by the completion and an EOS, with the
  loss on completion + EOS only (tools/train.py). The first example is tokenized by the tool's
  own code (LLaMA-Factory's template and dataset processor, Axolotl's prompt strategy) with a
  character-level tokenizer built here (EOS "</s>", no BOS, common EOS strings such as
  "<|im_end|>" as special tokens) and must come out exactly so; an EOS string at the end of a
  completion in the data counts as the EOS.

Usage (any Python >= 3.11; the checker itself needs only the standard library):

    python experiments/check_exports.py DIR [--tools llamafactory,axolotl] [--setup-only]
    experiments/check_exports.sh DIR          # the same, with the project's .venv python

One line per config: tool, file, OK (notes) or FAIL: error. Exit status 1 if any config fails,
2 if a venv cannot be built (with pip's first error and the log's path).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VENVS = Path(os.environ.get("PLANNER_TOOL_VENVS", "~/.cache/planner/tool-venvs")).expanduser()
TORCH = os.environ.get("PLANNER_TOOL_TORCH", "torch==2.13.0")


@dataclass(frozen=True)
class Tool:
    name: str
    package: str  # pip requirement, installed with --no-deps
    patterns: tuple[str, ...]  # config files under DIR/<name>/
    imports: str  # module that must import once the venv is built
    drop: frozenset[str] = frozenset()  # requirements of the package not installed
    only: frozenset[str] | None = None  # if set, the only requirements installed
    extra: tuple[str, ...] = ()  # installed besides


TOOLS = {
    "llamafactory": Tool(
        "llamafactory", "llamafactory==0.9.5", ("*.yaml", "*.yml"), "llamafactory.hparams",
        drop=frozenset({"torch", "torchvision", "torchaudio", "gradio"}),
    ),
    "axolotl": Tool(
        "axolotl", "axolotl==0.19.0", ("*.yml", "*.yaml"), "axolotl.utils.config",
        only=frozenset({"pydantic", "transformers", "tokenizers", "huggingface-hub", "accelerate",
                        "peft", "packaging", "pyyaml", "addict", "nvidia-ml-py", "numpy",
                        "datasets"}),
        extra=("pillow", "colorama"),
    ),
}


class SetupError(Exception):
    pass


# ------------------------------------------------------------------------------ venvs
def _run_logged(cmd: list[str], log: Path, what: str) -> None:
    """Run cmd, append its output to log, echo pip's "Collecting" lines as progress."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        error, seen = "", set()
        for line in proc.stdout:
            out.write(line)
            if line.startswith("Collecting ") and line.split()[1] not in seen:
                seen.add(line.split()[1])
                print(f"    {line.split()[1]}", flush=True)
            elif line.startswith("ERROR:") and not error:
                error = line.strip() + "; "
        if proc.wait():
            raise SetupError(f"{what} failed (exit {proc.returncode}): {error}log: {log}")


def ensure_venv(tool: Tool) -> Path:
    """The tool's venv python, building the venv on first use."""
    venv = VENVS / tool.name
    python = venv / "bin" / "python"
    stamp = venv / ".planner-ready"
    recipe = [tool.package, TORCH, *sorted(tool.drop), *sorted(tool.only or ()), *tool.extra]
    wanted = " ".join(recipe)  # a changed recipe rebuilds the venv
    if stamp.is_file() and stamp.read_text().strip() == wanted and python.exists():
        return python
    log = VENVS / f"{tool.name}.log"
    VENVS.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    start = time.monotonic()
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install",
           "--progress-bar", "off"]
    steps = 4
    print(f"[{tool.name}] building venv {venv} (log {log})", flush=True)
    print(f"  1/{steps} python -m venv", flush=True)
    _run_logged([sys.executable, "-m", "venv", "--clear", str(venv)], log, "python -m venv")
    print(f"  2/{steps} {TORCH}", flush=True)
    _run_logged([*pip, TORCH], log, f"pip install {TORCH}")
    print(f"  3/{steps} {tool.package} --no-deps", flush=True)
    _run_logged([*pip, "--no-deps", tool.package], log, f"pip install {tool.package}")
    dist = re.split(r"[<>=!~ ]", tool.package, maxsplit=1)[0]
    reqs = subprocess.run([str(python), str(Path(__file__).resolve()), "--list-requirements",
                           dist], capture_output=True, text=True, check=True).stdout.split("\n")
    keep = [r for r in reqs if r and _wanted(tool, r)]
    print(f"  4/{steps} {len(keep)} requirements of {tool.package} + {list(tool.extra)}",
          flush=True)
    _run_logged([*pip, TORCH, *keep, *tool.extra], log, f"pip install the deps of {tool.name}")
    probe = subprocess.run([str(python), "-c", f"import {tool.imports}"],
                           capture_output=True, text=True)
    if probe.returncode:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise SetupError(f"import {tool.imports} fails in {venv}: {last}")
    stamp.write_text(wanted + "\n")
    print(f"[{tool.name}] venv ready in {time.monotonic() - start:.0f} s", flush=True)
    return python


def _wanted(tool: Tool, requirement: str) -> bool:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    name = re.sub(r"[-_.]+", "-", name).lower()
    return name not in tool.drop and (tool.only is None or name in tool.only)


def list_requirements(dist: str) -> None:
    """(In a tool venv) print the requirements of dist that apply here, without extras."""
    from importlib.metadata import requires

    from pip._vendor.packaging.requirements import Requirement

    for line in requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            print(f"{req.name}{req.specifier}")


# ------------------------------------------------------------------------------ checks
Result = dict[str, Any]  # {"file": str, "ok": bool, "error": str, "notes": [str]}
# EOS strings of common tokenizers: a completion may end with one instead of relying on the tool
EOS_LIKE = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>",
            "<end_of_turn>", "<eos>")


def _first_record(path: Path) -> dict[str, Any]:
    with path.open() as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"{path}: first record is not a JSON object")
                return record
    raise ValueError(f"{path}: no records")


def _char_tokenizer(texts: list[str]) -> Any:
    """A character-level tokenizer (eos "</s>", no bos) over texts, built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) | set("".join(texts)))
    vocab = {t: i for i, t in enumerate(["<unk>", *EOS_LIKE, *chars])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=list(EOS_LIKE[1:]))


def _check_trained_span(tok: Any, prompt: str, completion: str, ids: list[int],
                        labels: list[int]) -> str:
    """Fail unless ids = prompt + completion + EOS with loss on completion + EOS only, the
    planner's training (tools/train.py); the EOS may also be a literal EOS string in the data."""
    encode = tok.encode  # character-level: encoding pieces apart equals encoding them together
    eos_ids = {tok.convert_tokens_to_ids(t) for t in EOS_LIKE}
    body = next((completion[: -len(e)] for e in EOS_LIKE if completion.endswith(e)), completion)
    masked = [i for i, label in zip(ids, labels, strict=True) if label == -100]
    trained = [label for label in labels if label != -100]
    if masked != encode(prompt, add_special_tokens=False):
        raise ValueError(f"the unlearned part is {tok.decode(masked)!r}, not the raw prompt "
                         f"{prompt!r}")
    if ids != masked + trained:
        raise ValueError("the loss does not cover exactly the tokens after the prompt")
    if trained and trained[-1] in eos_ids and trained[:-1] == encode(body,
                                                                     add_special_tokens=False):
        return "trains on completion+EOS only"
    if trained == encode(completion, add_special_tokens=False):
        raise ValueError("trains on the completion without an EOS after it, so the model would "
                         "not learn to stop (append the tokenizer's EOS string to completions)")
    raise ValueError(f"trains on {tok.decode(trained)!r}, not on the completion {completion!r} "
                     "+ one EOS")


def check_llamafactory(file: str) -> Result:
    """(In the LLaMA-Factory venv, cwd DIR) parse one config as `llamafactory-cli train` does."""
    _stub_torchaudio()
    from llamafactory.data.loader import _get_dataset_processor, _get_merged_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from omegaconf import OmegaConf
    from transformers.utils import is_torch_bf16_gpu_available

    notes: list[str] = []
    config = OmegaConf.to_container(OmegaConf.load(Path(file).absolute()))  # as read_args
    if not isinstance(config, dict):
        raise ValueError("not a YAML mapping")
    if (config.get("bf16") or config.get("pure_bf16")) and not is_torch_bf16_gpu_available():
        config = {**config, "use_cpu": True}  # else: "Your setup doesn't support bf16/gpu"
        notes.append("use_cpu=true added (no bf16 GPU here)")
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    if data_args.template is None:
        raise ValueError("no template: LLaMA-Factory would use the model's chat template")
    names = data_args.dataset or []
    for name, attr in zip(names, get_dataset_list(names, data_args.dataset_dir), strict=True):
        if attr.load_from != "file":
            raise ValueError(f"dataset {name} is not a local file ({attr.load_from})")
    stage = finetuning_args.stage
    merged = _get_merged_dataset(names, model_args, data_args, training_args, stage)
    example = next(iter(merged))
    prompt, completion = example["_prompt"][-1]["content"], example["_response"][0]["content"]
    tok = _char_tokenizer([prompt, completion])
    if data_args.cutoff_len < (chars := len(prompt) + len(completion) + 1):
        data_args.cutoff_len = chars  # in the base's tokens, not this tokenizer's characters
        notes.append("cutoff_len lifted to the example's characters for the check")
    template = get_template_and_fix_tokenizer(tok, data_args)
    processor = _get_dataset_processor(data_args, stage, template, tok, None)
    out = processor.preprocess_dataset({k: [v] for k, v in example.items()})
    notes.append(f"{len(names)} dataset(s), mix={data_args.mix_strategy}")
    notes.append(_check_trained_span(tok, prompt, completion, out["input_ids"][0],
                                     out["labels"][0]))
    return {"file": file, "ok": True, "error": "", "notes": notes}


def _stub_torchaudio() -> None:
    """llamafactory.data imports torchaudio at the top (for audio inputs only); no torchaudio
    build matches torch 2.13 (2.11's library fails to load), so an empty module stands in."""
    import importlib.machinery
    import importlib.util
    import types

    if "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None:
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub


def _fields(model: Any) -> set[str]:
    """Field names and aliases a pydantic model accepts."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        if field.alias:
            names.add(field.alias)
        choices = getattr(field.validation_alias, "choices", None)
        if choices:
            names.update(c for c in choices if isinstance(c, str))
        elif isinstance(field.validation_alias, str):
            names.add(field.validation_alias)
    return names


def check_axolotl(file: str) -> Result:
    """(In the Axolotl venv, cwd DIR) validate one config as `axolotl train` does."""
    import torch
    import yaml
    from axolotl.prompt_strategies import load as load_strategy
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault
    from axolotl.utils.schemas.config import AxolotlConfigWCapabilities
    from axolotl.utils.schemas.datasets import SFTDataset, UserDefinedPrompterType
    from transformers.utils import is_torch_bf16_gpu_available

    notes: list[str] = []
    raw = yaml.safe_load(Path(file).read_text())  # as axolotl.cli.config.load_cfg
    if not isinstance(raw, dict):
        raise ValueError("not a YAML mapping")
    unknown = [f"{k}" for k in raw if k not in _fields(AxolotlConfigWCapabilities)]
    for i, ds in enumerate(raw.get("datasets") or []):
        unknown += [f"datasets[{i}].{k}" for k in ds if k not in _fields(SFTDataset)]
        if isinstance(ds.get("type"), dict):
            unknown += [f"datasets[{i}].type.{k}" for k in ds["type"]
                        if k not in _fields(UserDefinedPrompterType)]
    if unknown:
        raise ValueError(f"keys unknown to Axolotl's schema (it drops them): {unknown}")

    bf16 = is_torch_bf16_gpu_available()
    capabilities = {"bf16": bf16, "fp8": False, "n_gpu": 1, "compute_capability": None}
    env = {"torch_version": str(torch.__version__).split("+")[0]}
    cfg = validate_config(DictDefault(raw), capabilities=capabilities, env_capabilities=env)
    if cfg.get("bf16") is True and not bf16:
        notes.append("bf16=true needs a bf16 GPU (Axolotl only warns here)")
    if cfg.get("adapter") in ("lora", "qlora") and not (cfg.get("lora_target_modules")
                                                        or cfg.get("lora_target_linear")):
        raise ValueError("LoRA without lora_target_modules or lora_target_linear: Axolotl would "
                         "pass target_modules=[] to peft")
    if isinstance(cfg.get("lora_target_modules"), str):
        raise ValueError("lora_target_modules is a string, which peft matches as one regex "
                         "against whole module names: write a YAML list")
    notes.append(f"adapter={cfg.get('adapter') or 'none (full)'}")

    for i, ds in enumerate(cfg.get("datasets") or []):
        path = Path(ds.get("path") or "")
        if not path.is_file():
            raise ValueError(f"datasets[{i}]: file {path} not found (from {Path.cwd()})")
        record = _first_record(path)
        kind = ds.get("type")
        fields = (kind.get("field_instruction"), kind.get("field_output")) if isinstance(
            kind, dict) else ()
        if not fields or not set(fields) <= set(record):
            raise ValueError(f"datasets[{i}]: type {kind!r} is not a user-defined mapping whose "
                             f"field_instruction/field_output name the records' fields "
                             f"{sorted(record)}; no built-in type trains prompt -> completion")
        tok = _char_tokenizer([str(v) for v in record.values()])
        prompt, completion = (str(record[f]) for f in fields)
        if (cfg.get("sequence_len") or 0) < (chars := len(prompt) + len(completion) + 1):
            cfg["sequence_len"] = chars  # in the base's tokens, not this one's characters
            notes.append("sequence_len lifted to the example's characters for the check")
        strategy = load_strategy("user_defined", tok, cfg, dict(kind))  # as Axolotl's loader
        out = strategy.tokenize_prompt(record)
        notes.append(f"datasets[{i}] " + _check_trained_span(
            tok, prompt, completion, out["input_ids"], out["labels"]))
    return {"file": file, "ok": True, "error": "", "notes": notes}


CHECKS = {"llamafactory": check_llamafactory, "axolotl": check_axolotl}


def worker(tool: str, out: Path, files: list[str]) -> None:
    """(In a tool venv) check each file, isolating failures; write the results as JSON."""
    results: list[Result] = []
    for file in files:
        try:
            results.append(CHECKS[tool](file))
        except BaseException as err:  # SystemExit from argument parsers too
            message = f"{type(err).__name__}: {err}".strip().replace("\n", " | ")
            results.append({"file": file, "ok": False, "error": message, "notes": []})
    out.write_text(json.dumps(results))


def run_checks(tool: Tool, python: Path, export_dir: Path) -> list[Result]:
    files = sorted({str(p.relative_to(export_dir))
                    for pattern in tool.patterns for p in (export_dir / tool.name).glob(pattern)})
    if not files:
        return []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "LLAMAFACTORY_VERBOSITY": "WARN",
           "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        env["HF_DATASETS_CACHE"] = str(Path(tmp) / "datasets")
        proc = subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--worker", tool.name, str(out), *files],
            cwd=export_dir, env=env, capture_output=True, text=True,
        )
        if out.is_file():
            return list(json.loads(out.read_text()))
    last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return [{"file": f, "ok": False, "error": f"checker crashed: {last}", "notes": []}
            for f in files]


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--list-requirements":
        list_requirements(sys.argv[2])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", type=Path, nargs="?", help="a `planner export` -o DIR")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help="comma list of: %(default)s")
    parser.add_argument("--setup-only", action="store_true", help="only build the venvs")
    args = parser.parse_args()
    if args.export_dir is None and not args.setup_only:
        parser.error("export_dir is required unless --setup-only")
    unknown = set(args.tools.split(",")) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; known: {', '.join(TOOLS)}")
    tools = [TOOLS[name] for name in args.tools.split(",")]
    failed = 0
    for tool in tools:
        try:
            python = ensure_venv(tool)
        except (SetupError, OSError, subprocess.CalledProcessError) as err:
            print(f"error: cannot build the {tool.name} venv under {VENVS}: {err}",
                  file=sys.stderr)
            return 2
        if args.setup_only:
            continue
        results = run_checks(tool, python, args.export_dir.resolve())
        if not results:
            print(f"{tool.name:<12}  (no {'/'.join(tool.patterns)} under "
                  f"{args.export_dir / tool.name})")
        for r in results:
            failed += not r["ok"]
            status = f"OK ({'; '.join(r['notes'])})" if r["ok"] else f"FAIL: {r['error']}"
            print(f"{tool.name:<12}  {r['file']:<32}  {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
