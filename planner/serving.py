"""How the found allocation is served with vLLM: one `vllm serve` command per distinct served
model (a base with its LoRA adapters, or a fully fine-tuned model) and, per subtask, the
request that reproduces its sampling and the aggregator to apply to the n answers. The
request goes to `/v1/completions` with the filled prompt template as `prompt`, or, where the
subtask sets `chat_template` (planner gave the model each prompt as the user's turn of its
chat template), to `/v1/chat/completions` with it as the one user message, which vLLM
renders with the model's chat template and the assistant's turn opened, as planner did.

Flags follow vLLM's OpenAI-compatible server: `--generation-config vllm` keeps the model's
own `generation_config.json` from overriding the request's sampling parameters, and
`--max-lora-rank` takes one of vLLM's supported ranks.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from planner.methods import Lora
from planner.space import Plan
from planner.spec import SubtaskSpec
from planner.train_configs import Job

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""`--max-lora-rank` values vLLM accepts."""


@dataclass
class Server:
    """One `vllm serve` process: a model and the LoRA adapters served beside it."""

    name: str
    model: str
    loras: dict[str, str] = field(default_factory=dict)
    """Adapter name -> folder."""
    max_lora_rank: int = 0
    seed: int = 0

    def command(self) -> str:
        args = ["vllm", "serve", self.model, "--served-model-name", self.name,
                "--generation-config", "vllm", "--seed", str(self.seed)]
        if self.loras:
            rank = next((r for r in LORA_RANKS if r >= self.max_lora_rank), self.max_lora_rank)
            args += ["--enable-lora", "--max-lora-rank", str(rank), "--lora-modules",
                     *(f"{name}={path}" for name, path in self.loras.items())]
        return shlex.join(args)


def serving_plan(subtasks: list[SubtaskSpec], allocation: dict[str, Plan],
                 jobs: dict[str, Job | None], bases: dict[str, str],
                 scores: dict[str, float], *, recorded: bool) -> tuple[dict, list[str]]:
    """The serving document (servers, and per subtask its server, request, aggregator and
    expected score) and what vLLM cannot serve as planned.

    Args:
        jobs: subtask -> the fine-tune it serves from (None: the base or a checkpoint as is).
        bases: model name -> what vLLM loads for it.
        recorded: the task replays recorded results, so its decoding settings are planner's
            defaults, not those of the recorded runs.
    """
    servers: dict[tuple[str, str], Server] = {}  # ("base", model) or ("tuned", job name)
    entries: dict[str, dict] = {}
    unexpressed: list[str] = []
    for s in subtasks:
        plan, job = allocation[s.name], jobs[s.name]
        d = s.decoding
        if job is not None and job.method.serves_soft_prompt:
            unexpressed.append(f"{s.name}: prompt tuning: vLLM serves no soft prompts; sample "
                               f"{job.output_dir} with planner's transformers sampler "
                               "(tools.infer.TransformersSampler)")
            server_name, model_name = None, job.name
        elif job is not None and not isinstance(job.method, Lora):  # every weight trained
            server_name = model_name = job.name
            servers.setdefault(("tuned", job.name), Server(job.name, job.output_dir, seed=d.seed))
        else:
            server_name = plan.model
            server = servers.setdefault(("base", plan.model),
                                        Server(plan.model, bases[plan.model], seed=d.seed))
            model_name = plan.model
            if job is not None:  # a LoRA adapter on the base
                server.loras[job.name] = job.output_dir
                server.max_lora_rank = max(server.max_lora_rank, job.method.options.lora_r)
                model_name = job.name
        # no request seed: vLLM gives sample j the seed + j, so one seed on every prompt
        # would share the sampling noise across prompts (planner seeds each prompt apart)
        request = {"model": model_name, "n": plan.samples, "temperature": d.temperature,
                   "top_p": d.top_p, "max_tokens": d.max_new_tokens}
        entry: dict[str, object] = {"server": server_name, "endpoint": (
            "/v1/chat/completions" if s.chat_template else "/v1/completions")}
        if s.data is not None:
            entry["prompt_template"] = s.data.prompt
        if plan.aggregator == "oracle":
            unexpressed.append(f"{s.name}: aggregator oracle scores a correct answer among the "
                               f"n samples (pass@{plan.samples}); serving needs a verifier or "
                               "test to pick it")
        entries[s.name] = {**entry, "request": request, "aggregator": plan.aggregator,
                           "expected_score": scores.get(s.name)}
    if recorded:
        unexpressed.append("decoding: a replay task records no sampling settings; the "
                           "requests carry planner's defaults: set those of the recorded runs")
    doc = {"servers": [{"name": v.name, "command": v.command(),
                        "subtasks": [n for n, e in entries.items() if e["server"] == v.name]}
                       for v in servers.values()],
           "subtasks": entries}
    return doc, unexpressed
