"""Where the agent's search targets stand, read from the recorded benchmark results (runs
nothing).

    python experiments/targets.py
    python experiments/targets.py --readme README.md experiments/README.md   # their sections

For each set of tasks whose results are kept under experiments/results/ (the suite, the
held-out shapes, the suite under other budgets, the two live tasks, the recordings with
every checkpoint listed as a model (`flat_tables.py`), seven draws of random tables, alone
and together, and two of 4 and 5 stages), counts the tasks where the agent
meets each target, by the rules of `random_shapes.tally`: median trials to 99% of the
exact optimum at most half Optuna's (met where Optuna never gets there and the agent
does), at most the sweep's, median search GPU-h to 99% at most Optuna's (both only where
the agent gets there), best@10 >= 0.97. Then it gives the suite's figures per task, the
planner's median ms per trial over the tasks of the suite and of the held-out shapes and
the tasks over the 10 ms target (the wall time the benchmark measured, with its workers
sharing the cores), and each miss with its figures, in markdown. `--readme` writes the
same between the `targets.py` markers of each file named, so the README's figures come
from the kept results, not from retyping.

Each set is what the command of its section in experiments/README.md wrote; rerun that
command to bring a set up to date.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from random_shapes import tally
from sections import write_section

RESULTS = Path(__file__).resolve().parent / "results"
# the draws of random tables of one to three stages (`random_shapes.py --first A --shapes
# 64`); their sum is a row of its own
DRAWS = [(32, 95), (96, 159), (160, 223), (224, 287), (288, 351), (352, 415), (416, 479)]
DRAWN = [RESULTS / "random_shapes" / f"tally_{a}_{b}.csv" for a, b in DRAWS]
# name, file (a benchmark summary, or a tally that random_shapes.py wrote), trials per run
SETS = [
    ("suite", RESULTS / "summary.csv", 60),
    ("held-out shapes, x0.5 / x1 / x2", RESULTS / "heldout" / "summary.csv", 60),
    ("suite, x0.5 / x2", RESULTS / "budgets" / "summary.csv", 60),
    ("suite, x0.4 / x3", RESULTS / "wide" / "summary.csv", 60),
    ("live tasks (wordsum, smolmath)", RESULTS / "live" / "summary.csv", 30),
    ("checkpoints listed as models (flat_tables.py)", RESULTS / "flat" / "summary.csv", 40),
    *((f"random tables {a}-{b}", path, 40) for (a, b), path in zip(DRAWS, DRAWN, strict=True)),
    ("random tables of 4 stages, 1000-1015", RESULTS / "random_shapes" / "tally_4_stages.csv",
     40),
    ("random tables of 5 stages, 2000-2015", RESULTS / "random_shapes" / "tally_5_stages.csv",
     40),
]
BASELINES = {"optuna": "Optuna TPE", "optuna-stages": "Optuna told each stage's score",
             "sweep": "sweep"}
PLANNER_MS = 10.0  # the target for the planner's time per trial
CLAIMS = {"half_optuna": "trials <= 1/2 Optuna's", "sweep_or_less": "trials <= sweep's",
          "gpu_h_optuna_or_less": "search GPU-h <= Optuna's", "best_at_10": "best@10 >= 0.97"}


def load(path: Path, trials: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The set's tally, and its agent rows where the file is a benchmark summary."""
    table = pd.read_csv(path)
    if "strategy" not in table:
        return table, None
    return tally(table, trials), table[table.strategy == "agent"].set_index("task")


def misses(counted: pd.DataFrame, agent: pd.DataFrame | None, trials: int) -> list[str]:
    """One line per target: the tasks that miss it, with the agent's figure against the
    one it is compared with."""
    lines = []
    for claim, label in CLAIMS.items():
        failed = counted[~counted[claim]]
        if failed.empty:
            continue
        parts = []
        for row in failed.itertuples():
            agent_trials = f"{row.agent:g}" if row.agent <= trials else f">{trials}"
            if claim == "best_at_10" and agent is not None:
                parts.append(f"{row.task} {agent.loc[row.task, 'best_frac_at_10']:.3f}")
            elif claim == "sweep_or_less":
                parts.append(f"{row.task} {agent_trials} vs {row.sweep:g}")
            elif claim == "half_optuna":
                parts.append(f"{row.task} {agent_trials} vs {row.optuna:g}")
            else:
                parts.append(row.task)
        lines.append(f"{label}: {', '.join(parts)}")
    return lines


def suite_table(path: Path = SETS[0][1], trials: int = SETS[0][2]) -> list[str]:
    """In markdown, per task of a benchmark summary: each baseline's and the agent's median
    trials to 99% of the optimum with its median search GPU-h, and the agent's best@10;
    with a line that says so."""
    summary = pd.read_csv(path)
    seeds = int(summary.seeds.max())
    summary = summary.set_index(["task", "strategy"])
    shown = [s for s in BASELINES if s in summary.index.get_level_values(1)]
    lines = [f"The suite, per task: median trials to 99% of the optimum over {seeds} seeds "
             "(median search GPU-h to 99%; >N: not within the run's N trials)", "",
             "| task | " + " | ".join(BASELINES[s] for s in shown)
             + " | agent | agent best@10 |", "|---|" + "---|" * (len(shown) + 2)]
    for task in summary.index.get_level_values(0).unique():
        cells = []
        for strategy in [*shown, "agent"]:
            row = summary.loc[(task, strategy)]
            median = row.trials_to_99_median
            cells.append(f"{median:g} ({row.gpu_hours_to_99_median:.3g})"
                         if median <= trials else f">{trials}")
        best = summary.loc[(task, "agent")].best_frac_at_10
        lines.append(f"| {task} | {' | '.join(cells)} | {best:.3f} |")
    return lines


def report() -> str:
    """In markdown: per set, how many tasks meet each target; the suite's figures per task
    (`suite_table`); the planner's ms per trial on the suite and the held-out shapes; and,
    folded, every miss."""
    lines = ["| set | tasks | " + " | ".join(CLAIMS.values()) + " |",
             "|---|---|" + "---|" * len(CLAIMS)]
    missed, drawn, agents = [], [], {}
    for name, path, trials in SETS:
        counted, agents[name] = load(path, trials)
        lines.append(_row(name, counted))
        found = misses(counted, agents[name], trials)
        if found:
            missed.append(f"- {name}: " + "; ".join(found))
        if path in DRAWN:
            drawn.append(counted)
        if path == DRAWN[-1]:
            lines.append(_row(f"random tables {DRAWS[0][0]}-{DRAWS[-1][1]}, the {len(DRAWS)} "
                              "draws together", pd.concat(drawn)))
    lines += ["", *suite_table()]
    lines += ["", "Planner ms per trial (agent, wall time with two workers, median over tasks):"]
    for name, _, _ in SETS[:2]:
        ms = agents[name].planner_ms_per_trial
        over = ", ".join(f"{t} {v:.1f}" for t, v in ms[ms >= PLANNER_MS].items()) or "none"
        lines.append(f"- {name}: {ms.median():.1f} (per task {ms.min():.1f} to "
                     f"{ms.max():.1f}; over {PLANNER_MS:g} ms: {over})")
    lines += ["", "<details><summary>Every miss (the agent's figure against the baseline's; "
              "a task over the trials is shown as >N)</summary>", "", *missed, "", "</details>"]
    return "\n".join(lines)


def _row(name: str, counted: pd.DataFrame) -> str:
    cells = " | ".join(f"{int(counted[c].sum())} / {len(counted)}" for c in CLAIMS)
    return f"| {name} | {len(counted)} | {cells} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", nargs="+", type=Path, default=[], metavar="MD",
                        help="markdown files whose targets.py section is rewritten")
    args = parser.parse_args(argv)
    text = report()
    for path in args.readme:
        write_section(path, text, "targets.py")
    print(text)


if __name__ == "__main__":
    main()
