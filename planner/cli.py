"""The `planner` command: thin Typer commands over the library; errors end in `main()`.

Results go to stdout (a rich table, or JSON with --json); progress and errors to stderr.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import sys
from collections import Counter
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from planner import html_report, report, secrets, views
from planner.check import SAMPLE, SpaceSummary, nothing_fits, summarize
from planner.cost import CostModel
from planner.errors import PlannerError
from planner.executors import EXECUTORS, make_executor
from planner.export import FORMATS, export_files, read_plan, write_export
from planner.sampling import with_flags as with_sampling_flags
from planner.search import STRATEGIES, AgentOptions, best_trial
from planner.search.agent import DEFAULT_PATIENCE, LLMConfig
from planner.search.agent.steps import AnsweredStep, Step, step_of
from planner.space import Plan, SearchSpace
from planner.spec import TaskSpec, load_spec, outside_tables, parse_spec
from planner.store import OutdatedStoreError, Store, StudyRecord, TrialRecord, TrialStatus
from planner.study import default_study_name, delete_study
from planner.study import optimize as run_optimize

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find a compute allocation for a multi-stage LLM pipeline.")
out = Console(soft_wrap=True)
err = Console(stderr=True)

DbOpt = Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the study database.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
StudyArg = Annotated[str, typer.Argument(help="Study name (see `planner studies`).")]
DEFAULT_DB = "sqlite:///planner.db"
MAX_TRIALS = 100_000  # --trials, --patience: beyond it, a typo


def _emit_json(data: object) -> None:
    sys.stdout.write(secrets.redact_json(data, indent=2) + "\n")


@app.command()
def optimize(
    task: Annotated[Path, typer.Argument(metavar="TASK", help="Path of the task.yaml.")],
    budget: Annotated[str | None, typer.Option(help="Cap on the allocation's cost, e.g. "
                                               "8gpu-h, 90gpu-min, 3.5e18flop "
                                               "(default: the task's).")] = None,
    strategy: Annotated[str, typer.Option(help=f"One of {', '.join(STRATEGIES)}.")] = "agent",
    trials: Annotated[int, typer.Option(min=1, max=MAX_TRIALS,
                                        help="Search budget: trials in the study.")] = 30,
    search_budget: Annotated[str | None, typer.Option(
        help="Also stop once evaluating the trials has cost this much (each fine-tune and "
             "each sampled arm paid once), e.g. 5gpu-h.")] = None,
    reasoner: Annotated[str, typer.Option(help="Agent reasoner: builtin (no LLM) or llm (an "
                                          "OpenAI-compatible endpoint; key from "
                                          "OPENAI_API_KEY).")] = "builtin",
    llm_base_url: Annotated[str | None, typer.Option(help="Chat endpoint for --reasoner llm, "
                                                     "e.g. http://127.0.0.1:8000/v1.")] = None,
    llm_model: Annotated[str | None, typer.Option(help="Model name for --reasoner llm.")]
    = None,
    llm_timeout: Annotated[float, typer.Option(min=1, max=86400, help="Seconds per --reasoner "
                                               "llm request (a small CPU server needs "
                                               "minutes).")] = 60.0,
    llm_nodes: Annotated[str, typer.Option(help="Agent nodes the --reasoner llm model answers "
                                           "(the builtin answers the others): any of init, "
                                           "reflect, propose.")] = "reflect,propose",
    llm_tool_rounds: Annotated[int, typer.Option(min=0, max=20, help="Replies per node in "
                                                 "which the --reasoner llm model may call "
                                                 "tools (predict, price, frontier, trial) "
                                                 "before it answers; 0: none.")] = 3,
    llm_guard: Annotated[bool, typer.Option(help="Ask the --reasoner llm model to propose only "
                                            "once the search stalls, and only while its picks "
                                            "outside the builtin's top candidates score what "
                                            "the builtin's own were predicted to (a weak "
                                            "model then costs about one trial); at init, "
                                            "run the builtin's probe design whole beside "
                                            "one probe of the model's own.")] = True,
    patience: Annotated[int, typer.Option(min=1, max=MAX_TRIALS, help="Agent: stop after this "
                                          "many proposals without a better score.")]
    = DEFAULT_PATIENCE,
    screen: Annotated[float | None, typer.Option(
        help="Agent: first evaluate an allocation that opens an unsampled arm on this share "
             "of the validation items (a screen, e.g. 0.25; on a live task also of its "
             "fine-tunes' training steps, resumed in full later), and in full only if it "
             "proves promising; saves the sampling and training of arms that "
             "disappoint.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: TASK-STRATEGY).")] = None,
    db: DbOpt = DEFAULT_DB,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the strategy.")]
    = 0,
    resume: Annotated[bool, typer.Option(help="Continue an existing study (fail if none).")]
    = False,
    allow_changed_task: Annotated[bool, typer.Option(
        help="Continue a study although its task file, data or --reasoner changed since it "
             "was made (records the new ones).")] = False,
    from_plan: Annotated[Path | None, typer.Option("--from", help="Evaluate this export "
                                                   "(folder or its plan.yaml) first.")] = None,
    executor: Annotated[str | None, typer.Option(
        help="Where trials run: local (in this process), process (a subprocess per trial, "
             "which returns its GPU memory on exit) or ray (a Ray task per trial; see "
             "--ray-address). Default: local for replay tasks, process for live ones.")]
    = None,
    workers: Annotated[int, typer.Option(min=1, max=4096, help="Trials run at once by the "
                                         "process or ray executor.")] = 1,
    trial_timeout: Annotated[float | None, typer.Option(
        min=1, help="Seconds a trial may run before it is killed and recorded as failed "
                    "(process and ray executors).")] = None,
    retries: Annotated[int, typer.Option(min=0, max=10, help="Further attempts at a trial "
                                         "that failed transiently (worker lost, out of "
                                         "memory, server unreachable).")] = 1,
    ray_address: Annotated[str | None, typer.Option(
        help="Ray cluster to run trials on, e.g. ray://head:10001 or auto (default: start a "
             "local Ray instance).")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(
        min=0, max=1024, help="GPUs each trial asks for (default: 1 where there are GPUs, "
                              "else 0; always 0 for replay).")] = None,
    backend: Annotated[str | None, typer.Option(
        help="Live tasks: sample every subtask with transformers, vllm (the gpu extra) or "
             "openai (an OpenAI-compatible server; see --base-url, --served). Default: the "
             "task's `sampling:` (else transformers).")] = None,
    base_url: Annotated[str | None, typer.Option(
        help="Live tasks, backend openai: the server, e.g. http://127.0.0.1:8000/v1 (key "
             "from the task's sampling.api_key_env, default OPENAI_API_KEY).")] = None,
    served: Annotated[list[str] | None, typer.Option(
        metavar="MODEL[=NAME]", help="Live tasks, backend openai: the server serves base "
             "model MODEL under NAME (default: MODEL); repeat for each model.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search for the best allocation of TASK under --budget."""
    from envs import make_environment

    _not_blank(budget=budget, search_budget=search_budget, study=study, db=db,
               ray_address=ray_address)
    if not math.isfinite(llm_timeout):  # click's range lets nan through
        raise PlannerError("--llm-timeout: not a number; give seconds, e.g. 60")
    _not_blank(backend=backend, base_url=base_url)
    # the sampling flags go into the spec, which workers build their environments from
    spec = with_sampling_flags(load_spec(task), source=str(task), backend=backend,
                               base_url=base_url, served=served)
    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"choose from {', '.join(STRATEGIES)}", param_hint="--strategy")
    budget = budget or spec.budget
    if budget is None:
        raise PlannerError(f"{task}: budget: not set; pass --budget (e.g. 8gpu-h) or add "
                           "`budget:` to the task file")
    budget_gpu_hours = _budget("--budget", budget, spec)
    if search_budget is not None:
        _budget("--search-budget", search_budget, spec)
    agent = _agent_options(reasoner, llm_base_url, llm_model, llm_timeout, llm_nodes,
                           llm_tool_rounds, patience, workers, llm_guard)
    if screen is not None:
        if strategy != "agent":
            raise PlannerError("--screen: only the agent screens; add --strategy agent, or "
                               "leave --screen out")
        if not 0.0 < screen < 1.0:  # also refuses nan
            raise PlannerError(f"--screen {screen}: give a share of the validation items "
                               "between 0 and 1, e.g. 0.25")
        agent = replace(agent, screen=screen)
    executor = executor or ("process" if spec.environment == "live" else "local")
    _check_executor(executor, workers, trial_timeout, ray_address)
    space = SearchSpace(spec)
    start = read_plan(from_plan, space) if from_plan else None
    env = make_environment(spec)
    cheapest = nothing_fits(space, CostModel(spec, env.calibration()), budget_gpu_hours)
    if cheapest is not None:
        raise _nothing_fits(task, budget, cheapest)
    if resume:  # a missing study is refused before the database is created or changed
        with contextlib.suppress(OutdatedStoreError):  # checked once it is brought up to date
            Store(db, create=False).require_study(study or default_study_name(spec, strategy))
    store = Store(db)
    _note_outside_tables(spec)
    runs = make_executor(executor, env, partial(make_environment, spec), workers=workers,
                         timeout_s=trial_timeout, ray_address=ray_address,
                         gpus=0 if spec.environment == "replay" else gpus_per_trial)
    with _progress(trials, quiet=as_json) as on_trial:
        result = run_optimize(spec, env, store=store, budget=budget, strategy=strategy,
                              n_trials=trials, seed=seed, study=study,
                              task_path=str(task.resolve()), resume=resume, start_from=start,
                              callback=on_trial, search_budget=search_budget, agent=agent,
                              allow_changed_task=allow_changed_task, executor=runs,
                              retries=retries)
    board = report.leaderboard(result.trials)
    fallbacks = report.reasoner_fallbacks(store.steps(result.study.name))
    spent = result.search_gpu_hours
    failure = report.failure(result.trials)
    notes = [*result.notes, *report.unsolved(result.trials, spec.environment == "live")]
    if as_json:
        _emit_json({**report.summary(result.study, result.trials), "leaderboard": board,
                    "stopped": result.stopped, "search_gpu_hours": spent,
                    "notes": notes, "failure": failure, "llm_fallbacks": fallbacks})
        raise typer.Exit(1 if failure else 0)
    for note in notes:
        err.print(note, style="yellow", soft_wrap=True)
    if failure:
        _error_line(failure)
        raise typer.Exit(1)
    _print_leaderboard(spec, board, result.study.name)
    if fallbacks and fallbacks["fallbacks"]:
        err.print(f"the language model was replaced by the builtin reasoner in "
                  f"{fallbacks['fallbacks']} of {fallbacks['propose_steps']} proposal, "
                  f"{fallbacks['reflect_steps']} reflection and {fallbacks['init_steps']} "
                  "init steps: "
                  + secrets.redact("; ".join(fallbacks["reasons"])), style="yellow",
                  soft_wrap=True)
    err.print(f"stopped: {result.stopped or 'done'}; evaluating the trials cost {spent:.4g} "
              "GPU-h (each fine-tune and sampled arm once)", soft_wrap=True, highlight=False)


def _nothing_fits(task: Path, budget: str, cheapest: float) -> PlannerError:
    """The error for a budget under the cheapest allocation's cost."""
    return PlannerError(f"{task}: budget {budget}: no allocation fits; the cheapest costs "
                        f"{_rounded_up(cheapest)} GPU-h; pass a larger --budget")


def _rounded_up(gpu_hours: float) -> str:
    """`gpu_hours` to four significant digits, rounded up: a budget of the figure shown
    fits what it prices (rounded to nearest, a cheapest cost of 0.0637202 showed as
    0.06372, a budget it then refused)."""
    text = f"{gpu_hours:.4g}"
    if float(text) >= gpu_hours:
        return text
    return f"{float(text) + 10.0 ** (math.floor(math.log10(gpu_hours)) - 3):.4g}"


def _not_blank(**options: str | None) -> None:
    """A given option is not blank: `--budget ""` is an error, not the default."""
    for name, value in options.items():
        if value is not None and not value.strip():
            flag = "--" + name.replace("_", "-")
            raise PlannerError(f"{flag}: blank; give a value, or leave {flag} out for the "
                               "default")


def _budget(flag: str, text: str, spec: TaskSpec) -> float:
    """A budget option in GPU-hours of the task's hardware; an error names the flag."""
    try:
        return spec.hardware.gpu_hours(text)
    except PlannerError as e:
        raise PlannerError(f"{flag}: {e}") from None


def _note_outside_tables(spec: TaskSpec) -> None:
    """Say once which replay tables are read from outside the task's folder."""
    for path in outside_tables(spec):
        err.print(f"note: reading table {path} (outside the task folder)", soft_wrap=True,
                  highlight=False, markup=False)


def _check_executor(kind: str, workers: int, timeout: float | None,
                    ray_address: str | None) -> None:
    """The executor flags agree with each other; one line naming the flag otherwise."""
    if kind not in EXECUTORS:
        raise PlannerError(f"--executor {kind!r}: choose from {', '.join(EXECUTORS)}")
    if kind == "local" and (workers > 1 or timeout is not None):
        flag = "--workers" if workers > 1 else "--trial-timeout"
        raise PlannerError(f"{flag}: the local executor runs one trial at a time in this "
                           "process; add --executor process (or ray)")
    if ray_address is not None and kind != "ray":
        raise PlannerError("--ray-address: only for --executor ray")
    if timeout is not None and not math.isfinite(timeout):
        raise PlannerError("--trial-timeout: not a number; give seconds, e.g. 3600")


def _agent_options(reasoner: str, base_url: str | None, model: str | None, timeout: float,
                   nodes: str, tool_rounds: int, patience: int, workers: int = 1,
                   guard: bool = True) -> AgentOptions:
    """The agent's options; it proposes as many allocations per step as there are workers."""
    if reasoner not in ("builtin", "llm"):
        raise typer.BadParameter("choose builtin or llm", param_hint="--reasoner")
    if reasoner == "builtin":
        return AgentOptions(patience=patience, proposals_per_step=workers)
    if not base_url or not model:
        raise PlannerError("--reasoner llm needs --llm-base-url (e.g. http://127.0.0.1:8000/v1) "
                           "and --llm-model")
    chosen = tuple(n.strip() for n in nodes.split(",") if n.strip())
    if not chosen or set(chosen) - {"init", "reflect", "propose"}:
        raise PlannerError(f"--llm-nodes {nodes!r}: name some of init, reflect and propose, "
                           "e.g. --llm-nodes reflect,propose")
    return AgentOptions(reasoner="llm", llm=LLMConfig(base_url, model, timeout_s=timeout,
                                                      nodes=chosen, tool_rounds=tool_rounds,
                                                      guard=guard),
                        patience=patience,
                        proposals_per_step=workers)


class _progress:
    """A progress bar with a live best-so-far line, shown from the first trial on (so a
    study refused before it runs prints only its error line); silent with --json."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                                 disable=quiet)
        self.task = self.progress.add_task("trials", total=total)
        self.done = 0

    def __enter__(self):
        def on_trial(trial: TrialRecord, best: TrialRecord | None) -> None:
            self.progress.start()  # once: a started progress ignores it
            line = "best: -" if best is None else (
                f"best {report.score_text(best.score)} @ {best.cost.total_gpu_hours:.4g} "
                f"GPU-h (trial {best.number}: {'; '.join(best.allocation.describe())})")
            self.done = max(self.done, trial.number + 1)  # trials may finish out of order
            self.progress.update(self.task, completed=self.done, description=line)

        return on_trial

    def __exit__(self, *exc: object) -> None:
        if self.progress.live.is_started:
            self.progress.stop()


def _print_leaderboard(spec: TaskSpec | None, board: list[dict], study: str) -> None:
    table = Table(title=f"{study}: leaderboard", show_lines=True)
    for col in ("rank", "trial", "score", "est. GPU-h", "allocation"):
        table.add_column(col, justify="right" if col != "allocation" else "left")
    for row in board:
        lines = [f"{s}: {_plan_line(p)}  [{report.score_text(row['subtask_scores'].get(s))}]"
                 for s, p in row["allocation"].items()]
        table.add_row(str(row["rank"]), str(row["number"]), report.score_text(row['score']),
                      f"{row['cost_gpu_hours']['total']:.4g}", "\n".join(lines))
    out.print(table)


def _plan_line(p: dict) -> str:
    return Plan(p).describe()


def _listed(values: list[str], most: int = 12) -> str:
    """`values` joined, or their ends and how many there are where more than `most`."""
    if len(values) <= most:
        return ", ".join(values)
    return (f"{', '.join(values[:5])}, ..., {', '.join(values[-2:])} ({len(values):,} values; "
            "--json lists them)")


@app.command()
def check(
    task: Annotated[Path, typer.Argument(metavar="TASK", help="Path of the task.yaml.")],
    budget: Annotated[str | None, typer.Option(help="Budget to check against (default: the "
                                               "task's).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate TASK without running anything: its dimensions, allocations, and the budget."""
    from envs import make_environment

    _not_blank(budget=budget)
    spec = load_spec(task)
    budget = budget or spec.budget
    cap = None if budget is None else _budget("--budget", budget, spec)
    env = make_environment(spec)
    space, cost_model = SearchSpace(spec), CostModel(spec, env.calibration())
    info = summarize(space, cost_model, cap)
    # a budget `optimize` would refuse is refused here too, after the report, in one line;
    # where the summary saw an allocation fit, none is refused, and no plan is priced again
    cheapest = (nothing_fits(space, cost_model, cap)
                if cap is not None and info.feasible_fraction == 0 else None)
    if cheapest is None:
        _note_outside_tables(spec)
    if as_json:
        _emit_json({"task": spec.name, "budget": budget, **asdict(info), "binds": info.binds})
    else:
        _print_check(spec, info, budget, cap)
    if cheapest is not None:
        raise _nothing_fits(task, str(budget), cheapest)


def _print_check(spec: TaskSpec, info: SpaceSummary, budget: str | None, cap: float | None) -> None:
    """`planner check`'s report: dimensions, allocations, costs, the budget's cut."""
    out.print(f"[bold]{spec.name}[/] ({spec.environment}): valid")
    for subtask, dims in info.dimensions.items():
        out.print(f"  {subtask}: {info.plans[subtask]:,} plans")
        for d in dims:
            values = [f"{v['name']} {v['weights']}" if isinstance(v, dict) else str(v)
                      for v in d["values"]]
            out.print(f"    {d['name']} ({d['kind']}): {_listed(values)}", highlight=False)
    how = "" if info.exact else f" (from a sample of {SAMPLE:,})"
    out.print(f"allocations: {info.allocations:,}; cost {info.cost_min_gpu_hours:.4g} .. "
              f"{info.cost_max_gpu_hours:.4g} GPU-h{how}")
    if cap is not None:
        verdict = "binds: the dearest allocations do not fit" if info.binds else \
            "does not bind: every allocation fits"
        share = info.feasible_fraction
        fit = (f"{share:.1%} of allocations fit" if share >= 0.001 else
               "no allocation fits" if share == 0 and info.exact else
               "under 0.1% of allocations fit")  # not "0.0%" where some do
        out.print(f"budget {budget} ({cap:.4g} GPU-h): {fit}{how}; it {verdict}")
        for subtask, arms in info.cut_draws.items():
            counts = Counter(a["samples"] for a in arms)
            drawn = ", ".join(f"{k} for {counts[k]}" for k in sorted(counts, reverse=True))
            out.print(f"  {subtask}: {len(arms)} arms are drawn below n="
                      f"{max(spec.subtask(subtask).samples)}, the most a plan of each within "
                      f"the budget reads (--json names them): n={drawn}", highlight=False)


@app.command()
def studies(db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """List the studies in the database."""
    store = Store(db, create=False)
    rows = []
    for s in store.studies():
        trials = store.trials(s.name)
        best = best_trial(trials)
        rows.append({"study": s.name, "task": s.task_name, "strategy": s.strategy,
                     "budget": s.budget, "trials": len(trials),
                     "best_score": best.score if best else None})
    if as_json:
        _emit_json(rows)
        return
    table = Table(title=f"studies in {db}")
    for col in ("study", "task", "strategy", "budget", "trials", "best_score"):
        table.add_column(col, overflow="fold", no_wrap=col == "study")
    for r in rows:
        score = report.score_text(r["best_score"])
        table.add_row(r["study"], r["task"], r["strategy"], r["budget"], str(r["trials"]), score)
    out.print(table)


@app.command()
def show(study: StudyArg, db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False,
         top: Annotated[int, typer.Option(min=1, help="Leaderboard rows.")] = 5) -> None:
    """Best allocation, per-subtask scores, cost split and search spend of a study."""
    store = Store(db, create=False)
    record = store.require_study(study)
    trials = store.trials(study)
    info = report.summary(record, trials)
    board = report.leaderboard(trials, top)
    measured = views.measured_vs_estimated(record, trials)
    notes = report.unsolved(trials, record.task.get("environment") == "live")
    if as_json:
        _emit_json({**info, "leaderboard": board, "measured_vs_estimated": measured,
                    "notes": notes})
        return
    out.print(f"[bold]{record.name}[/] task={record.task_name} strategy={record.strategy} "
              f"seed={record.seed} budget={record.budget} ({record.budget_gpu_hours:.4g} GPU-h)")
    statuses = ", ".join(f"{k} {v}" for k, v in info["trials_by_status"].items() if v)
    if info["screens"]:  # scored on a share of the validation items; never the best
        statuses += f"; {info['screens']} of them screens"
    # the trials' own durations added up: workers in parallel count each, the planner none
    out.print(f"trials run: {info['trials']} ({statuses}); time in trials "
              f"{info['search_seconds']:.2f} s (summed)")
    best = info["best"]
    if best is None:
        out.print("no successful trial yet")
        return
    c = best["cost_gpu_hours"]
    price = record.task.get("hardware", {}).get("usd_per_gpu_hour")
    out.print(f"best: trial {best['number']} score {report.score_text(best['score'])}; "
              f"cost {c['total']:.4g} GPU-h = training {c['train']:.4g} + inference "
              f"{c['inference']:.4g}" + (f" (${c['total'] * price:,.2f} at ${price:g} a GPU-hour)"
                                         if price else ""))
    for s, p in best["allocation"].items():
        score = best["subtask_scores"].get(s, float("nan"))
        out.print(f"  {s}: {_plan_line(p)}  score {report.score_text(score)}")
    for note in notes:
        err.print(note, style="yellow", soft_wrap=True)
    _print_leaderboard(None, board, record.name)
    if measured:
        _print_measured(measured, record.name)


def _print_measured(measured: dict, study: str) -> None:
    """`planner show`'s estimated-vs-measured table of live trials, and which peak its
    utilisation is a fraction of."""
    table = Table(title=f"{study}: estimated vs measured (live trials)")
    for col in ("trial", "est. train GPU-h", "train device-h", "train util.", "train tok/s",
                "sampling device-h", "sampling util.", "cached fine-tunes", "spent device-h"):
        table.add_column(col, justify="right")
    for r in measured["rows"]:
        table.add_row(str(r["number"]), *(_gpu_h(r[k]) for k in (
            "estimated_train_gpu_hours", "train_device_hours", "train_utilization",
            "train_tokens_per_second", "sample_device_hours", "sample_utilization")),
            str(r["cached_trainings"]), _gpu_h(r["spent_device_hours"]))
    out.print(table)
    out.print(f"utilisation = FLOPs / (device seconds x peak); peak: {measured['peak']}. "
              f"Estimates assume {measured['assumed_utilization']:.3g} of "
              f"{measured['hardware']}'s peak (hardware.utilization), or what GPU runs in the "
              "live cache measured when the study started (planner.cost.Utilization)",
              highlight=False)
    out.print(f"device time the search spent: {measured['spent_device_hours']:.4g} device-h "
              "(measured; work reused from the cache counted once)", highlight=False)
    for line in escalation_lines(measured["rows"]):
        out.print(line, highlight=False)


def escalation_lines(rows: list[dict]) -> list[str]:
    """One line per subtask and cascade threshold: the share of its validation items the
    trials escalated to the strong plan (a range over several trials) against the share the
    cost model assumed."""
    runs: dict[tuple[str, float], list[tuple[int, float]]] = {}
    for r in rows:
        for s, share in r["escalated"].items():
            runs.setdefault((s, share["assumed"]), []).append((r["number"], share["measured"]))
    lines = []
    for (s, assumed), seen in runs.items():
        shares = sorted(m for _, m in seen)
        which = _listed([str(n) for n, _ in seen])
        measured = (f"a share {shares[0]:.3g}" if len(seen) == 1 else
                    f"a share of {shares[0]:.3g} to {shares[-1]:.3g} (median "
                    f"{statistics.median(shares):.3g})")
        lines.append(f"{s}: its cascade escalated {measured} of its validation items to the "
                     f"strong plan (trial{'s' if len(seen) > 1 else ''} {which}); the cost "
                     f"model assumed {assumed:.3g} (the threshold)")
    return lines


@app.command()
def trace(study: StudyArg, db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False,
          step: Annotated[int | None, typer.Option(help="Show one agent step in full.")]
          = None) -> None:
    """Trial-by-trial timeline of a study, with the agent's steps where it has them."""
    store = Store(db, create=False)
    store.require_study(study)
    steps = store.steps(study)
    if step is not None:
        match = [s for s in steps if s.number == step]
        if not match:
            has = (f"it has {len(steps)} steps (0..{len(steps) - 1})" if steps else
                   "it has none: only the agent records steps; leave --step out for its trials")
            raise PlannerError(f"--step: study {study!r} has no step {step}; {has}")
        s = match[0]
        data = {"number": s.number, "node": s.node, "created": s.created, "payload": s.payload}
        if as_json:
            _emit_json(data)
        else:  # redacted here too: a database written before redaction may hold secrets
            _print_step(s.number, step_of(s.node, secrets.redact_data(s.payload)))
        return
    events = secrets.redact_data(report.timeline(store.trials(study), steps))
    if as_json:
        _emit_json(events)
        return
    table = Table(title=f"{study}: timeline")
    for col in ("#", "what", "status", "score", "GPU-h", "detail"):
        table.add_column(col)
    best = float("-inf")
    for e in events:
        if e["kind"] == "trial":
            score = e["score"]
            mark = ""
            if score is not None and score > best:
                best, mark = score, " *"
            table.add_row(f"trial {e['number']}", e["source"] or "-", e["status"],
                          report.score_text(score) + mark,
                          f"{e['cost_gpu_hours']['total']:.4g}",
                          e["error"] or "; ".join(_plan_line(p)
                                                  for p in e["allocation"].values()))
        else:
            st = step_of(e["node"], e["payload"])
            status, extra = "", ""
            if isinstance(st, AnsweredStep):
                status = "fallback" if st.fallback else ""
                if st.attempts:
                    tokens = sum(sum(a.tokens.values()) for a in st.attempts)
                    latency = sum(a.latency_s for a in st.attempts)
                    tools = sum(len(a.tool_calls) for a in st.attempts)
                    extra = (f" [{len(st.attempts)} calls"
                             + (f", {tools} tool calls" if tools else "")
                             + f", {tokens} tokens, {latency:.2f} s]")
            table.add_row(f"step {e['number']}", e["node"], status, "", "",
                          Text(st.summary + extra))
    out.print(table)
    out.print("* new best; `planner trace STUDY --step N` shows one step in full")


def _print_step(number: int, step: Step) -> None:
    """One agent step: its summary, what it decided (`Step.details`), each LLM exchange
    (the messages it added, the reply, the tools it called and what they answered), then
    the rest as JSON."""
    out.print(Panel(Text(step.summary), title=f"step {number}: {step.node}"))
    for line in step.details():
        out.print(Text(f"  {line}"))
    attempts = step.attempts if isinstance(step, AnsweredStep) else []
    shown = 0  # messages of the conversation shown so far
    for i, a in enumerate(attempts):
        for m in a.messages[shown:]:
            if i and m["role"] in ("assistant", "tool"):  # shown with the call before
                continue
            out.print(Panel(Text(m.get("content") or ""), title=f"call {i}: {m['role']}"))
        shown = len(a.messages)
        out.print(Panel(Text(a.response or ("(tool calls)" if a.tool_calls else "(no reply)")),
                        title=f"call {i}: reply ({a.tokens or 'no usage'}, "
                              f"{a.latency_s:.2f} s)"))
        for c in a.tool_calls:
            out.print(Text(f"  tool {c.name}({c.arguments}) -> {json.dumps(c.result)}"[:2000]))
        for error in a.errors:
            out.print(Text(f"  error: {error}", style="red"))
    rest = {k: v for k, v in step.payload().items() if k not in ("summary", "attempts")}
    out.print_json(json.dumps(rest, default=str))


@app.command()
def export(study: StudyArg,
           output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write "
                                                "(replaced if it holds an earlier export).")],
           fmt: Annotated[str, typer.Option("--format", help="Training configs to write: "
                                            + ", ".join(FORMATS) + ".")] = "planner",
           trial: Annotated[int | None, typer.Option(help="Trial number (default: the "
                                                      "best).")] = None,
           task: Annotated[Path | None, typer.Option(help="The study's task.yaml, where it "
                                                     "moved since the study ran.")] = None,
           db: DbOpt = DEFAULT_DB) -> None:
    """Write a trial's allocation as a folder of training and serving configs.

    The folder's README says how to run them; `planner optimize --from` and `planner train`
    read it."""
    from envs import resolve_for_export

    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose from {', '.join(FORMATS)}", param_hint="--format")
    store = Store(db, create=False)
    record = store.require_study(study)
    chosen = _trial(store.trials(study), study, trial)
    spec = _study_spec(record, task)
    files, unexpressed = export_files(spec, record, chosen, fmt,
                                      resolve_for_export(spec, chosen.allocation))
    write_export(files, output)
    for line in unexpressed:
        err.print(f"not expressed: {line}", style="yellow", soft_wrap=True)
    err.print(f"wrote {output}/ ({len(files)} files; trial {chosen.number}, score "
              f"{chosen.score:.4g}); {output}/README.md says how to run them", soft_wrap=True)


def _trial(trials: list[TrialRecord], study: str, number: int | None) -> TrialRecord:
    """The trial to export: `number`, or the best; it must have succeeded."""
    if number is None:
        best = best_trial(trials)
        if best is None:
            raise PlannerError(f"study {study!r} has no successful trial to export; run "
                               "`planner optimize` first")
        return best
    chosen = next((t for t in trials if t.number == number), None)
    if chosen is None or chosen.status is not TrialStatus.OK:
        ok = [t.number for t in trials if t.status is TrialStatus.OK]
        raise PlannerError(f"--trial {number}: study {study!r} has no successful trial "
                           f"{number}; successful trials: {ok or 'none'}")
    return chosen


def _study_spec(record: StudyRecord, task: Path | None) -> TaskSpec:
    """The study's task as it ran, its relative paths from the task file's folder."""
    path = task or Path(record.task_path)
    if task is not None and not task.is_file():
        raise PlannerError(f"--task {task}: no such file")
    return parse_spec(record.task, root=path.resolve().parent, source=f"study {record.name}")


@app.command()
def train(export_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Folder written by "
                                                     "`planner export --format planner`.")],
          seeds: Annotated[int, typer.Option(min=1, help="Evaluations: the exported seeds, "
                                             "then every seed moved by 1, 2, ...; their "
                                             "spread is the noise.")] = 2,
          cache_dir: Annotated[Path | None, typer.Option(
              help="Artifact and sample cache (default: DIR/.planner-cache, emptied first); "
                   "a given one is reused, so what it holds is not retrained.")] = None,
          as_json: JsonOpt = False) -> None:
    """Retrain and re-score an exported allocation of a live task on its validation data.

    Exit 0 when the score agrees with the study's within the seeds' noise, 1 when not."""
    from envs.live.reproduce import SeedRun, reproduce

    def on_run(run: SeedRun) -> None:
        if not as_json:
            err.print(f"seed +{run.shift}: score {run.score:.4f} ({run.wall_seconds:.1f} s)")

    result = reproduce(export_dir, seeds=seeds, cache_dir=cache_dir, progress=not as_json,
                       on_run=on_run)
    if as_json:
        _emit_json({**asdict(result), "score": result.score, "noise": result.noise,
                    "agrees": result.agrees})
        raise typer.Exit(0 if result.agrees else 1)
    subtasks = list(result.runs[0].subtask_scores)
    table = Table(title=f"{result.task}: study {result.study}, trial {result.trial}, retrained")
    for col in ("seeds", "score", *subtasks, "train tokens", "wall s"):
        table.add_column(col, justify="right")
    for r in result.runs:
        table.add_row(f"+{r.shift}", f"{r.score:.4f}",
                      *(f"{r.subtask_scores[s]:.4f}" for s in subtasks),
                      f"{r.train_tokens:,.0f}", f"{r.wall_seconds:.1f}")
    table.add_row("study", f"{result.study_score:.4f}",
                  *(f"{result.study_subtask_scores.get(s, float('nan')):.4f}" for s in subtasks),
                  "", "")
    out.print(table)
    diff = abs(result.score - result.study_score)
    out.print(f"noise (max |score(+k) - score(+0)| over {seeds - 1} other seeds): "
              f"{result.noise:.4f}")
    verdict = "agrees" if result.agrees else "does NOT agree"
    sign = "<=" if result.agrees else ">"
    out.print(f"reproduced {result.score:.4f} vs study {result.study_score:.4f}: "
              f"|difference| {diff:.4f} {sign} noise {result.noise:.4f}: {verdict}")
    for name, folder in result.outputs.items():
        out.print(f"trained {name}: {export_dir / folder}")
    raise typer.Exit(0 if result.agrees else 1)


@app.command("trials")
def list_trials(study: StudyArg, db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False,
                status: Annotated[TrialStatus | None, typer.Option(
                    help="Only the trials of this status.")] = None) -> None:
    """List a study's trials: status, score, estimated cost, source, allocation, error."""
    store = Store(db, create=False)
    store.require_study(study)
    rows = views.trial_list(store.trials(study), status)
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        out.print(f"{study}: no {status.value + ' ' if status else ''}trials")
        return
    table = Table(title=f"{study}: trials" + (f" ({status.value})" if status else ""),
                  show_lines=True)
    for col in ("#", "status", "score", "est. GPU-h", "source", "allocation", "error"):
        table.add_column(col, overflow="fold",
                         justify="right" if col in ("#", "score", "est. GPU-h") else "left")
    for r in rows:
        table.add_row(str(r["number"]), r["status"], report.score_text(r["score"]),
                      f"{r['cost_gpu_hours']['total']:.4g}", r["source"] or "-",
                      "\n".join(f"{s}: {_plan_line(p)}" for s, p in r["allocation"].items()),
                      Text(r["error"] or ""))
    out.print(table)


@app.command()
def compare(names: Annotated[list[str], typer.Argument(metavar="STUDY...",
                                                       help="Studies to put side by side.")],
            db: DbOpt = DEFAULT_DB, as_json: JsonOpt = False) -> None:
    """Studies side by side: best score, trials and search GPU-hours to reach it.

    Also the share of the exact optimum (replay tasks) and each stage's choice in the best
    allocation. Search GPU-hours are metered as --search-budget meters them."""
    store = Store(db, create=False)
    rows = [views.comparison(_study_data(store, name)) for name in names]
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="studies side by side", show_lines=True)
    table.add_column("", style="bold", overflow="fold")
    for r in rows:
        table.add_column(r["study"], overflow="fold")
    fields = [("task", lambda r: r["task"]), ("strategy", lambda r: r["strategy"]),
              ("budget", lambda r: r["budget"]), ("trials", lambda r: str(r["trials"])),
              ("best score", lambda r: report.score_text(r["best_score"])),
              ("of the exact optimum", lambda r: "-" if r["fraction_of_optimum"] is None
               else f"{r['fraction_of_optimum']:.1%} of {r['optimum']:.4g}"),
              ("trials to best", lambda r: str(r["trials_to_best"] or "-")),
              ("search GPU-h to best", lambda r: _gpu_h(r["search_gpu_hours_to_best"])),
              ("search GPU-h, all", lambda r: _gpu_h(r["search_gpu_hours"])),
              ("best's est. GPU-h", lambda r: _gpu_h(r["best_cost_gpu_hours"]))]
    for label, cell in fields:
        table.add_row(label, *(cell(r) for r in rows))
    for stage in dict.fromkeys(s for r in rows for s in r["choices"]):
        table.add_row(stage, *(_choice_line(r["choices"].get(stage)) for r in rows))
    out.print(table)
    for label in dict.fromkeys(r["search_cost"] for r in rows):
        out.print(f"search GPU-h: {label}", highlight=False)


def _gpu_h(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _choice_line(choice: dict | None) -> str:
    if choice is None:
        return "-"
    plan = {k: v for k, v in choice.items() if k != "score"}
    return f"{_plan_line(plan)}  [{report.score_text(choice['score'])}]"


VIEW_ENUMERATED = 500_000_000  # compare and report show a replay optimum found in seconds


def _study_data(store: Store, name: str) -> views.StudyData:
    """A study with its space, its search metered as `Runner.search_spent` does (by the
    environment its stored task builds) and, for a replay task, its exact optimum."""
    from envs import make_environment
    from envs.replay.env import ReplayEnvironment
    from envs.replay.optimum import NoOptimum, exhaustive_optimum

    record = store.require_study(name)
    trials = store.trials(name)
    spec = _study_spec(record, None)
    space = SearchSpace(spec)
    try:
        env = make_environment(spec)
    except (PlannerError, OSError) as e:
        return views.StudyData(record, trials, space, metering="the sum of the evaluated "
                               f"trials' estimated costs (its environment failed: {e})")
    optimum = None
    if isinstance(env, ReplayEnvironment):
        with contextlib.suppress(NoOptimum):
            optimum = exhaustive_optimum(spec, record.budget_gpu_hours, env,
                                         limit=VIEW_ENUMERATED).score
    return views.StudyData(record, trials, space, CostModel(spec, env.calibration()),
                           env.validation_items(), optimum=optimum)


@app.command()
def delete(study: StudyArg, db: DbOpt = DEFAULT_DB,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False) -> None:
    """Delete a study and everything its search kept in the database.

    Its trials and results, the agent's steps, insights and graph checkpoints, and the
    Optuna baselines' own studies."""
    reader = Store(db, create=False)
    reader.require_study(study)
    n = len(reader.trials(study))
    if not yes:
        typer.confirm(f"Delete study {study!r} and its {n} trials from {db}?", abort=True)
    for what in delete_study(Store(db), study):
        err.print(f"deleted {what}", soft_wrap=True)


@app.command("report")
def html_report_command(
        study: StudyArg,
        output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")],
        png_dir: Annotated[Path | None, typer.Option(help="Folder for the plots as PNG files "
                                                     "(default: OUTPUT_files/ beside it).")]
        = None,
        top: Annotated[int, typer.Option(min=1, help="Leaderboard rows.")] = 10,
        db: DbOpt = DEFAULT_DB) -> None:
    """Write a study's report: one static HTML page with plots (and PNG files).

    Best so far against trials and search GPU-hours, each stage's score against n per arm,
    the best's cost split and choices, the leaderboard, and the gap to the exact optimum
    (replay tasks)."""
    if output.is_dir():
        raise PlannerError(f"-o {output}: is a folder; name the page, e.g. {output}/report.html")
    data = views.report_data(_study_data(Store(db, create=False), study), top)
    png_dir = png_dir or output.with_name(f"{output.stem}_files")
    try:
        pngs = html_report.write_report(data, output, png_dir)
    except OSError as e:
        raise PlannerError(f"-o {output}: cannot write {e.filename or output}: {e.strerror}; "
                           "choose a writable file (and --png-dir)") from None
    err.print(f"wrote {output} ({len(pngs)} plots, also as PNG files in {png_dir}/)",
              soft_wrap=True)


@app.command("dashboard")
def dashboard_command(
        names: Annotated[list[str] | None, typer.Argument(
            metavar="[STUDY]...", help="Studies to mirror (default: every study).")] = None,
        db: DbOpt = DEFAULT_DB,
        out_url: Annotated[str, typer.Option("--out", help="Optuna storage URL to write; its "
                                             "studies of these names are rebuilt.")]
        = "sqlite:///planner-dashboard.db") -> None:
    """Write studies as Optuna studies, to browse with optuna-dashboard.

    One Optuna study per study (its name), one Optuna trial per trial, whatever the
    strategy; prints the optuna-dashboard command."""
    from planner import dashboard  # loads Optuna

    store = Store(db, create=False)
    _check_dashboard_storage(out_url, db)
    records = [store.require_study(n) for n in names] if names else store.studies()
    if not records:
        raise PlannerError(f"--db {db}: no study to show; run `planner optimize` first")
    for record in records:
        space = SearchSpace(_study_spec(record, None))
        try:
            mirror = dashboard.write_dashboard(out_url, record, space, store.trials(record.name))
        except (ImportError, SQLAlchemyError) as e:  # no driver, not a database, no server
            raise PlannerError(f"--out {out_url}: {str(e).splitlines()[0]}") from None
        err.print(f"{record.name}: {len(mirror.trials)} trials", soft_wrap=True)
    err.print(f"wrote {out_url}; open it with (pip install optuna-dashboard):", soft_wrap=True)
    sys.stdout.write(f"optuna-dashboard {out_url}\n")


def _check_dashboard_storage(out_url: str, db: str) -> None:
    """Refuse a --out that is not a URL, the study database itself, or a SQLite file in a
    folder that does not exist."""
    try:
        parsed, source = make_url(out_url), make_url(db)
    except ArgumentError:
        raise PlannerError(f"--out {out_url}: not a database URL; e.g. "
                           "sqlite:///planner-dashboard.db") from None
    if parsed.drivername.startswith("sqlite") and parsed.database:
        target = Path(parsed.database).resolve()
        if source.drivername.startswith("sqlite") and source.database \
                and Path(source.database).resolve() == target:
            raise PlannerError(f"--out {out_url}: is the study database; pass another file, "
                               "e.g. sqlite:///planner-dashboard.db")
        if not target.parent.is_dir():
            raise PlannerError(f"--out {out_url}: no folder {target.parent}")


cache_app = typer.Typer(no_args_is_help=True, help="The live environment's cache: trained "
                        "models, sample sets, half-written builds.")
app.add_typer(cache_app, name="cache")
CacheDirOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Cache root (default: $PLANNER_CACHE, else ~/.cache/planner).")]


def _cache_root(cache_dir: Path | None) -> Path:
    from envs.live.cache import default_root

    root = cache_dir if cache_dir is not None else default_root()
    if cache_dir is not None and not root.is_dir():  # the default may not exist yet: empty
        raise PlannerError(f"--cache-dir {root}: no such folder; pass the cache's folder "
                           "(default: $PLANNER_CACHE, else ~/.cache/planner)")
    return root


def _cache_rows(entries: list, now: float) -> list[dict]:
    return [{"kind": e.kind, "key": e.key, "bytes": e.bytes, "age_seconds": now - e.used,
             "detail": e.detail, "path": None if e.path is None else str(e.path)}
            for e in entries]


def _cache_table(title: str, rows: list[dict]) -> Table:
    from envs.live.cache import format_age, format_size

    table = Table(title=title)
    for col in ("kind", "key", "size", "last used", "detail"):
        table.add_column(col, justify="right" if col in ("size", "last used") else "left",
                         overflow="fold")
    for r in rows:
        table.add_row(r["kind"], r["key"], format_size(r["bytes"]),
                      f"{format_age(r['age_seconds'])} ago", Text(r["detail"]))
    return table


@cache_app.command("ls")
def cache_ls(cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """List trained models, sample sets and half-written builds: size, last use, key.

    Least recently used first, the order `planner cache prune` removes them in."""
    import time

    from envs.live.cache import entries, format_size

    root = _cache_root(cache_dir)
    now = time.time()
    rows = _cache_rows(entries(root), now)
    if as_json:
        _emit_json({"cache": str(root), "bytes": sum(r["bytes"] for r in rows),
                    "entries": rows})
        return
    out.print(_cache_table(f"cache {root}", rows))
    out.print(f"{len(rows)} entries, {format_size(sum(r['bytes'] for r in rows))} "
              "(zoo/ base models not counted)", highlight=False)


@cache_app.command("prune")
def cache_prune(
        max_size: Annotated[str | None, typer.Option(
            help="Remove the least recently used until the cache holds at most this, e.g. "
                 "10GB, 500MB, 8GiB.")] = None,
        older_than: Annotated[str | None, typer.Option(
            help="Remove what was last used longer ago than this, e.g. 7d, 12h, 2w.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; "
                                              "remove nothing.")] = False,
        cache_dir: CacheDirOpt = None, as_json: JsonOpt = False) -> None:
    """Bound the cache: remove trained models and sample sets, least recently used first.

    Half-written builds left by killed trainings are removed too, once an hour old and not
    locked by a running build. A pruned model or sample set is made again when a trial
    needs it."""
    import time

    from envs.live.cache import format_size, parse_age, parse_size, prune

    _not_blank(max_size=max_size, older_than=older_than)
    limits: dict[str, float | None] = {"max_size": None, "older_than": None}
    for flag, text, parse in (("max_size", max_size, parse_size),
                              ("older_than", older_than, parse_age)):
        if text is not None:
            try:
                limits[flag] = parse(text)
            except ValueError as e:
                raise PlannerError(f"--{flag.replace('_', '-')}: {e}") from None
    root = _cache_root(cache_dir)
    now = time.time()
    result = prune(root, max_bytes=limits["max_size"], older_than=limits["older_than"],
                   now=now, dry_run=dry_run)
    removed, kept = _cache_rows(result.removed, now), _cache_rows(result.kept, now)
    freed, left = sum(r["bytes"] for r in removed), sum(r["bytes"] for r in kept)
    if as_json:
        _emit_json({"cache": str(root), "dry_run": dry_run, "removed": removed,
                    "freed_bytes": freed, "kept_bytes": left,
                    "skipped": _cache_rows(result.skipped, now)})
        return
    verb = "would remove" if dry_run else "removed"
    if removed:
        out.print(_cache_table(f"{verb} from {root}", removed))
    for e in result.skipped:
        err.print(f"kept half-written build {e.key} ({format_size(e.bytes)}): a build is "
                  "running, or it is less than an hour old", soft_wrap=True, highlight=False)
    if max_size is None and older_than is None:
        err.print("no --max-size or --older-than: only half-written builds were pruned",
                  soft_wrap=True)
    out.print(f"{verb} {len(removed)} entries ({format_size(freed)}); "
              f"{'would keep' if dry_run else 'kept'} {len(kept)} ({format_size(left)})",
              highlight=False)


def main() -> None:
    """Entry point: known errors become one line on stderr and exit code 2."""
    # the imported modules' ~220k objects live as long as the process: frozen (once: tests
    # run main() many times in one process), the collector's full passes skip them (one
    # pass over them took 150 ms here, 0.8 ms a trial of a 60-trial study)
    if not gc.get_freeze_count():
        gc.freeze()
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(code) comes back here
    except PlannerError as e:
        _error_line(str(e))
        if os.environ.get("PLANNER_DEBUG"):
            raise
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("Aborted.")
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: bad option value, missing argument
        command = e.ctx.command_path if getattr(e, "ctx", None) else "planner"
        _error_line(f"{e.format_message() or 'no command given'} (see `{command} --help`)")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _error_line(message: str) -> None:
    """`Error: MESSAGE` as one line on stderr, secrets redacted (a plain write: rich would
    wrap long paths)."""
    sys.stderr.write(f"Error: {' '.join(secrets.redact(message).splitlines())}\n")


if __name__ == "__main__":
    main()
