"""Search-efficiency benchmark: strategies x tasks x seeds, scored against exact optima.

    python experiments/benchmark.py                      # every suite task, 20 seeds, 50 trials
    python experiments/benchmark.py --seeds 3 --trials 20 --tasks monkeys-gsm8k my_task.yaml
    python experiments/benchmark.py --strategies random,optuna    # names: spaces or commas
    python experiments/benchmark.py --tasks envs/live/tasks/wordsum/task.yaml --workers 1 \
        --out experiments/results/live --readme experiments/README_live.md   # a live task
    python experiments/benchmark.py --budget-scale 0.25 4 --out /tmp/budgets \
        --readme /tmp/budgets/README.md     # each task under 1/4 and 4x its budget

`--budget-scale` asks the tables questions nobody tuned a strategy on: each task runs under
its budget times each factor, as a task named `NAME@xFACTOR` with its own exact optimum
(the optimum moves: other model sizes, checkpoints and n win under another budget).

Writes, under --out (default experiments/results): `benchmark.csv` (one row per trial),
`summary.csv` (one row per task x strategy), `<task>.png` (best-so-far vs trials and vs
search compute, median and IQR band over seeds), and the markdown table to --readme.

Scores are shown as a fraction of the task's exhaustive optimum under its budget
(envs/replay/optima.yaml; computed on the fly for tasks outside the suite). A live task's
optimum is found by evaluating every allocation within its budget in the live environment,
which trains and samples whatever its cache lacks (minutes for wordsum, once); its trials
then read the cache. Each worker process finds the optimum itself, so fill the cache with a
`--workers 1` run first: on an empty cache every worker would train the same models.
*Search compute* is what a live run would spend to evaluate the trials
(`planner.search.search_cost`): each distinct fine-tune once (a released checkpoint is
downloaded, not trained), plus, per distinct (subtask, model, method, mixture), one pass of
max-n samples over the subtask's recorded items (every n <= max-n is then estimated from
those samples).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import matplotlib
import numpy as np
import pandas as pd
from sections import write_section

from envs import make_environment
from envs.replay.optimum import (
    NoOptimum,
    builtin_tasks,
    exhaustive_optimum,
    load_optima,
)
from planner.cost import CostModel
from planner.draws import study_draws
from planner.env import Environment
from planner.executors import LocalExecutor
from planner.search import STRATEGIES, BaseStrategy, OptunaStrategy, SearchContext, make_strategy
from planner.search._runner import Runner
from planner.search.search_cost import SearchCost
from planner.space import SearchSpace
from planner.spec import TaskSpec, load_spec
from planner.store import Store, TrialRecord, TrialStatus
from planner.study import open_study

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

HERE = Path(__file__).parent
CHECKPOINTS = (10, 20, 50)  # report the best score after this many trials
TARGET = 0.99  # "reached" = best-so-far >= 99% of the optimum
SCREEN = 0.25  # agent-screen: the share of validation items (live: and of training steps)
# a screen evaluates


def refuse(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2 (as the planner command does)."""
    sys.stderr.write(f"Error: {message}\n")
    raise SystemExit(2)


def available_strategies(llm: bool = False) -> list[str]:
    """Default strategies: random, Optuna TPE (told the end score, or each stage's), the sweep,
    and the agent (plain and screening) when planner registers it (`agent-llm` too when an
    endpoint is given).
    `optuna-gp` runs only when asked for: it needs scipy and takes seconds per trial here
    (see the README)."""
    names = ["random", "optuna", "optuna-stages", "sweep"]
    if "agent" in STRATEGIES:
        names += ["agent", "agent-screen", "agent-llm"] if llm else ["agent", "agent-screen"]
    return names


@dataclass(frozen=True)
class LLMEndpoint:
    base_url: str
    model: str


def build_strategy(name: str, ctx: SearchContext, llm: LLMEndpoint | None = None,
                   batch: int = 1) -> BaseStrategy:
    """`optuna` is TPE; `optuna-gp` Optuna's Gaussian-process sampler (categorical-aware);
    `agent` the builtin reasoner, `agent-screen` the same screening new arms on `SCREEN` of
    the items first, `agent-llm` the LLM reasoner on an OpenAI-compatible API; the agent
    proposes `batch` allocations per step."""
    if name == "optuna-gp":
        import optuna

        return OptunaStrategy(ctx, sampler=optuna.samplers.GPSampler(seed=ctx.seed))
    if name.startswith("agent"):
        # no convergence stop: every strategy is compared over the same number of trials
        from planner.search.agent import AgentOptions, AgentStrategy, LLMConfig

        if name in ("agent", "agent-screen"):
            return AgentStrategy(ctx, AgentOptions(
                patience=None, proposals_per_step=batch,
                screen=SCREEN if name == "agent-screen" else None))
        if llm is None:
            refuse("agent-llm needs --llm-base-url and --llm-model")
        return AgentStrategy(ctx, AgentOptions(reasoner="llm", patience=None,
                                               llm=LLMConfig(llm.base_url, llm.model),
                                               proposals_per_step=batch))
    return make_strategy(name, ctx, storage=None)


@dataclass(frozen=True)
class Task:
    spec: TaskSpec
    env: Environment
    optimum: float


_CACHE: dict[tuple[Path, float], Task] = {}


def load_task(path: Path, budget_scale: float = 1.0) -> Task:
    """Spec, environment and exact optimum of a task (under its budget times
    `budget_scale`: `scaled`), loaded once per process."""
    if (path, budget_scale) not in _CACHE:
        spec = scaled(load_spec(path), budget_scale)
        env = make_environment(spec)
        stored = load_optima().get(spec.name)
        if spec.environment != "replay":
            optimum = brute_force_optimum(spec, env)
        elif stored is not None and stored["budget"] == spec.budget:
            optimum = float(stored["score"])
        else:
            try:
                optimum = exhaustive_optimum(spec, _budget(spec), env).score
            except NoOptimum as e:
                refuse(str(e))
        _CACHE[path, budget_scale] = Task(spec, env, optimum)
    return _CACHE[path, budget_scale]


def scaled(spec: TaskSpec, factor: float) -> TaskSpec:
    """The task under its budget times `factor`, named `NAME@xFACTOR` (itself at 1)."""
    if factor == 1.0:
        return spec
    return spec.model_copy(update={"name": f"{spec.name}@x{factor:g}",
                                   "budget": f"{_budget(spec) * factor:.6g}gpu-h"})


BRUTE_FORCE_LIMIT = 10_000  # allocations a brute-force optimum may evaluate


def brute_force_optimum(spec: TaskSpec, env: Environment) -> float:
    """The best score of all allocations within the task's budget, each evaluated in `env`
    with the samples a study draws (for a live task: its cache makes every evaluation after
    the first few cheap)."""
    budget = _budget(spec)
    space = SearchSpace(spec)
    if space.size() > BRUTE_FORCE_LIMIT:
        refuse(f"{spec.name}: {space.size()} allocations are too many to evaluate one "
               f"by one (at most {BRUTE_FORCE_LIMIT}); benchmark a smaller space")
    cost_model = CostModel(spec, env.calibration())
    draws = study_draws(space, cost_model, budget)  # the samples a study of it draws
    return max((env.evaluate(a, draws=draws).score for a in space.allocations()
                if cost_model.estimate(a).total_gpu_hours <= budget), default=0.0)


def _budget(spec: TaskSpec) -> float:
    if spec.budget is None:
        refuse(f"{spec.name}: give the task a default `budget:` to benchmark it")
    return spec.hardware.gpu_hours(spec.budget)


@dataclass(frozen=True)
class Job:
    task: Path
    strategy: str
    seed: int
    trials: int
    llm: LLMEndpoint | None = None
    batch: int = 1  # trials asked before any result is heard, as with that many workers
    budget_scale: float = 1.0  # the task's budget times this (`scaled`)


def run_job(job: Job) -> list[dict]:
    """One study in an in-memory store; one row per trial."""
    task = load_task(job.task, job.budget_scale)
    spec, env = task.spec, task.env
    store = Store("sqlite://")
    name = f"{spec.name}-{job.strategy}-{job.seed}"
    record = open_study(store, spec, name=name, budget=spec.budget or "", strategy=job.strategy,
                        seed=job.seed)
    cost_model = CostModel(spec, env.calibration())
    runner = Runner(env, store, name, cost_model, record.budget_gpu_hours,
                    executor=LocalExecutor(env, job.batch),
                    screen=SCREEN if job.strategy == "agent-screen" else None)
    ctx = SearchContext(runner.space, cost_model, record.budget_gpu_hours, job.seed, store, name)
    meter = SearchCost(cost_model, env.validation_items(), runner.draws)
    rows: list[dict] = []
    last = time.perf_counter()

    def callback(trial: TrialRecord, best: TrialRecord | None) -> None:
        nonlocal last
        now = time.perf_counter()
        rows.append({
            "task": spec.name, "strategy": job.strategy, "seed": job.seed,
            "trial": len(rows) + 1, "status": str(trial.status),
            "score": trial.score if trial.status is TrialStatus.OK else np.nan,
            "best": best.score if best is not None else 0.0,
            "best_frac": (best.score if best is not None else 0.0) / task.optimum,
            "search_gpu_hours": (meter.add(trial.allocation, trial.fidelity)
                                 if trial.status is TrialStatus.OK
                                 else meter.gpu_hours),
            "allocation": "; ".join(trial.allocation.describe()),
            "fidelity": trial.fidelity,
            "planner_ms": 1000 * (now - last),
        })
        last = time.perf_counter()  # the meter's bookkeeping is not the planner's time

    runner.optimize(build_strategy(job.strategy, ctx, job.llm, job.batch), job.trials, callback)
    return rows


def pad(trials: pd.DataFrame, n_trials: int) -> pd.DataFrame:
    """Carry a run that stopped early (the strategy had nothing left to propose, or nothing
    left that can beat its best) to `n_trials` with its best and search compute unchanged,
    marked status `stopped`."""
    extra = []
    for _, run in trials.groupby(["task", "strategy", "seed"], sort=False):
        last = run.iloc[-1]
        for k in range(len(run) + 1, n_trials + 1):
            extra.append({**last.to_dict(), "trial": k, "status": "stopped", "score": np.nan,
                          "allocation": "", "planner_ms": np.nan})
    return pd.concat([trials, pd.DataFrame(extra)]).sort_values(
        ["task", "strategy", "seed", "trial"], kind="stable", key=_keep_order(trials))


def _keep_order(trials: pd.DataFrame):
    """Sort key that keeps tasks and strategies in the order they were run."""
    order = {c: {v: i for i, v in enumerate(trials[c].unique())} for c in ("task", "strategy")}
    return lambda col: col.map(order[col.name]) if col.name in order else col


def summarize(trials: pd.DataFrame, n_trials: int) -> pd.DataFrame:
    """Per task x strategy: trials to reach 99% (median, IQR), best after k, ms per trial."""
    out = []
    for (task, strategy), g in trials.groupby(["task", "strategy"], sort=False):
        reach, spend, best_at = [], [], {k: [] for k in CHECKPOINTS if k <= n_trials}
        for _, run in g.groupby("seed"):
            frac = run["best_frac"].to_numpy()
            hit = np.flatnonzero(frac >= TARGET)
            reach.append(float(hit[0] + 1) if hit.size else n_trials + 1.0)  # censored
            spend.append(float(run["search_gpu_hours"].iloc[hit[0]]) if hit.size else np.inf)
            for k in best_at:
                best_at[k].append(frac[min(k, len(frac)) - 1])
        q1, med, q3 = np.percentile(reach, [25, 50, 75])
        row = {"task": task, "strategy": strategy, "seeds": len(reach),
               "reached": int(sum(r <= n_trials for r in reach)),
               "trials_to_99_median": med, "trials_to_99_q1": q1, "trials_to_99_q3": q3,
               "gpu_hours_to_99_median": float(np.median(spend))}
        row |= {f"best_frac_at_{k}": float(np.median(v)) for k, v in best_at.items()}
        row["planner_ms_per_trial"] = float(g["planner_ms"].median())
        out.append(row)
    return pd.DataFrame(out)


def _fmt_trials(x: float, n_trials: int) -> str:
    return f">{n_trials}" if x > n_trials else f"{x:g}"


def markdown_table(summary: pd.DataFrame, n_trials: int) -> str:
    ks = [k for k in CHECKPOINTS if f"best_frac_at_{k}" in summary]
    head = ("| task | strategy | trials to 99% (median [IQR]) | search GPU-h to 99% | reached | "
            + " | ".join(f"best@{k}" for k in ks) + " | planner ms/trial |")
    lines = [head, "|" + "---|" * (6 + len(ks))]
    for r in summary.itertuples():
        iqr = (f"{_fmt_trials(r.trials_to_99_median, n_trials)} "
               f"[{_fmt_trials(r.trials_to_99_q1, n_trials)}, "
               f"{_fmt_trials(r.trials_to_99_q3, n_trials)}]")
        best = " | ".join(f"{getattr(r, f'best_frac_at_{k}'):.3f}" for k in ks)
        spend = "-" if np.isinf(r.gpu_hours_to_99_median) else f"{r.gpu_hours_to_99_median:.4g}"
        lines.append(f"| {r.task} | {r.strategy} | {iqr} | {spend} | {r.reached}/{r.seeds} | "
                     f"{best} | {r.planner_ms_per_trial:.1f} |")
    return "\n".join(lines)


def plot_task(trials: pd.DataFrame, task: str, path: Path) -> None:
    """Best-so-far (fraction of optimum) vs trials and vs search compute, band = IQR."""
    fig, (by_trial, by_compute) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    data = trials[trials["task"] == task]
    lo = max(data["search_gpu_hours"][data["search_gpu_hours"] > 0].min(), 1e-6)
    grid = np.geomspace(lo, data["search_gpu_hours"].max(), 200)
    for strategy, g in data.groupby("strategy", sort=False):
        runs = [r for _, r in g.groupby("seed")]
        curves = np.array([r["best_frac"].to_numpy() for r in runs])
        x = np.arange(1, curves.shape[1] + 1)
        line, = by_trial.plot(x, np.median(curves, axis=0), label=strategy)
        by_trial.fill_between(x, *np.percentile(curves, [25, 75], axis=0), alpha=0.2,
                              color=line.get_color())
        at = np.array([_step(r["search_gpu_hours"].to_numpy(), r["best_frac"].to_numpy(), grid)
                       for r in runs])
        by_compute.plot(grid, np.median(at, axis=0), color=line.get_color(), label=strategy)
        by_compute.fill_between(grid, *np.percentile(at, [25, 75], axis=0), alpha=0.2,
                                color=line.get_color())
    by_trial.set(xlabel="trials", ylabel="best so far / exhaustive optimum", title=task)
    by_compute.set(xlabel="search compute (GPU-h, live-run equivalent)", xscale="log",
                   title=f"{task}: vs search compute")
    for ax in (by_trial, by_compute):
        ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    by_trial.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _step(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The step function y(x) (0 before the first point) sampled on `grid`."""
    idx = np.searchsorted(x, grid, side="right") - 1
    return np.where(idx >= 0, y[np.maximum(idx, 0)], 0.0)


def split_names(values: Sequence[str] | None) -> list[str]:
    """Command-line names given space- or comma-separated (`a b`, `a,b`, `a, b`)."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def check_strategies(names: list[str], llm: bool) -> list[str]:
    """The names, if each is a strategy this benchmark runs; else exit naming the valid ones."""
    known = [*available_strategies(llm=True), "optuna-gp"]
    unknown = [n for n in names if n not in known]
    if unknown:
        refuse(f"unknown strategies {unknown}; choose from {known}")
    if "agent-llm" in names and not llm:
        refuse("agent-llm needs --llm-base-url and --llm-model")
    return names


def resolve_tasks(names: Sequence[str]) -> list[Path]:
    """Suite task names or task.yaml paths; default: the whole suite."""
    suite = {load_spec(p).name: p for p in builtin_tasks()}
    if not names:
        return list(suite.values())
    unknown = [n for n in names if n not in suite and not Path(n).is_file()]
    if unknown:
        refuse(f"unknown tasks {unknown}: neither suite tasks ({', '.join(suite)}) "
               "nor task files")
    return [suite[n] if n in suite else Path(n) for n in names]


def run(tasks: list[Path], strategies: list[str], seeds: int, n_trials: int, workers: int,
        llm: LLMEndpoint | None = None, batch: int = 1,
        budget_scales: Sequence[float] = (1.0,)) -> pd.DataFrame:
    jobs = [Job(t, s, seed, n_trials, llm, batch, scale) for t in tasks
            for scale in budget_scales for s in strategies for seed in range(seeds)]
    if not gc.get_freeze_count():  # the loaded modules, as `planner`'s command line does
        gc.freeze()
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(run_job, jobs, chunksize=1)
    else:
        results = [run_job(j) for j in jobs]
    return pd.DataFrame([row for rows in results for row in rows])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with `tasks` and `strategies` as lists of names (`llm`: the
    endpoint for agent-llm, or None)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=[],
                        help="suite names or task.yaml paths, space- or comma-separated")
    parser.add_argument("--strategies", nargs="*", default=None,
                        help="space- or comma-separated; default: random optuna "
                        "optuna-stages sweep agent agent-screen (+ agent-llm with an "
                        "endpoint); optuna-gp on request")
    parser.add_argument("--llm-base-url", help="OpenAI-compatible endpoint for agent-llm")
    parser.add_argument("--llm-model", help="model name at that endpoint")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget-scale", nargs="+", default=["1"],
                        metavar="FACTOR", help="run each task under its budget times each "
                        "factor (default 1: the task's own budget)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md",
                        help="markdown file whose benchmark section is (re)written")
    args = parser.parse_args(argv)
    args.llm = LLMEndpoint(args.llm_base_url, args.llm_model) if args.llm_base_url else None
    args.strategies = (check_strategies(split_names(args.strategies), args.llm is not None)
                       or available_strategies(args.llm is not None))
    args.tasks = split_names(args.tasks)
    args.budget_scale = [_factor(text) for text in args.budget_scale]
    return args


def _factor(text: str) -> float:
    """A --budget-scale factor: a positive number (else one line, exit code 2)."""
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not 0 < factor < float("inf"):
        refuse(f"--budget-scale {text}: not a positive number; give factors such as 0.5 2")
    return factor


def main() -> None:
    args = parse_args()
    strategies = args.strategies
    start = time.perf_counter()
    tasks = resolve_tasks(args.tasks)
    live = any(load_spec(t).environment != "replay" for t in tasks)
    if not live:  # each optimum found once, before workers fork; a factor too small stops here
        for task in tasks:
            for factor in args.budget_scale:
                load_task(task, factor)
    trials = pad(run(tasks, strategies, args.seeds, args.trials, args.workers, args.llm,
                     budget_scales=args.budget_scale), args.trials)
    elapsed = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    trials.to_csv(args.out / "benchmark.csv", index=False, float_format="%.6g")
    summary = summarize(trials, args.trials)
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.6g")
    plots = []
    for task in trials["task"].unique():
        plot_task(trials, task, args.out / f"{task}.png")
        plots.append(task)
    table = markdown_table(summary, args.trials)
    write_section(args.readme, _readme(table, plots, args, strategies, elapsed, live),
                  "benchmark.py")
    print(table)
    print(f"\n{len(trials)} trials in {elapsed:.0f} s with {args.workers} workers; "
          f"wrote {args.out} and {args.readme}")


def _as_from_root(path: Path) -> str:
    """`path` as the command line run from the repository root names it: relative to the
    root inside it, absolute elsewhere."""
    path, root = path.resolve(), HERE.parent.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _readme(table: str, plots: list[str], args: argparse.Namespace, strategies: list[str],
            elapsed: float, live: bool = False) -> str:
    rel = Path(os.path.relpath(args.out.resolve(), args.readme.resolve().parent)).as_posix()
    links = "\n".join(f"- [{t}]({rel}/{t}.png)" for t in plots)
    readme = _as_from_root(args.readme)
    names = [_as_from_root(Path(t)) if Path(t).is_file() else t for t in args.tasks]
    options = f" --tasks {' '.join(names)}" if names else ""
    if args.out.resolve() != (HERE / "results").resolve():
        options += f" --out {_as_from_root(args.out)}"
    if args.budget_scale != [1.0]:
        options += f" --budget-scale {' '.join(f'{f:g}' for f in args.budget_scale)}"
    if live:
        title, optima = "live tasks", ("every allocation within the budget evaluated in the "
                                       "live environment")
        timed = ("wall time per trial of the planner and the evaluation (read from the live "
                 "cache, filled by the optimum's evaluations)")
    else:
        title, optima = "replay suite", ("envs/replay/optima.yaml, or computed for another "
                                         "budget")
        timed = ("wall time per trial of the planner itself (strategy, cost check, store; "
                 "the replay lookup is negligible)")
    return f"""## Search-efficiency benchmark ({title})

`python experiments/benchmark.py{options} --seeds {args.seeds} --trials {args.trials} \
--workers {args.workers} --readme {readme}` ({', '.join(strategies)}): {elapsed:.0f} s wall on
{os.cpu_count()} CPU cores (load average {os.getloadavg()[1]:.1f} over the last 5 minutes of
the run).

Scores are best-so-far / exhaustive optimum under the task's budget ({optima}).
*trials to 99%*: median and IQR over seeds of the first trial whose best-so-far reaches 99%
of the optimum (`>{args.trials}`: not within the run); *reached*: seeds that got there;
*best@k*: median best-so-far after k trials; *planner ms/trial*: median {timed}. Raw
trials: [benchmark.csv]({rel}/benchmark.csv), summary: [summary.csv]({rel}/summary.csv).

{table}

Plots (best-so-far vs trials and vs search compute, median and IQR band over seeds):
{links}

Other Optuna samplers: `--strategies optuna-gp` runs Optuna's GPSampler, which handles the
categorical choices (it needs scipy). It is not in the default run: each ask fits a
Gaussian process, and the budget check may reject up to 200 asks per trial, so a trial
takes seconds here (about 2.3 s on average over 20 trials of monkeys-gsm8k). CMA-ES is
not offered: CmaEsSampler does not model categorical parameters (it falls back to
independent random sampling for them), and every plan field but n is categorical.
The agent runs without its convergence stop (`patience`), so every strategy gets the same
number of trials; a run that stops early (nothing left to propose, or, on a one-stage task,
nothing left that can beat its best) keeps its best for the remaining trials (`stopped` rows
in benchmark.csv).
"""


if __name__ == "__main__":
    main()
