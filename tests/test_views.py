"""The user's view of real studies: `trials`, `compare`, `report`, `dashboard`, `delete`.

Two 8-trial searches of the GSM8K replay task (agent, Optuna) run in-process, then each
command is checked against the store and the exact optimum."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from envs import make_environment
from envs.replay.optimum import load_optima
from planner.cli import app
from planner.cost import Cost, CostModel
from planner.draws import study_draws
from planner.search._optuna import params
from planner.search.search_cost import SearchCost
from planner.space import Allocation, SearchSpace
from planner.spec import load_spec
from planner.store import Store, TrialStatus

TASK = Path(__file__).parents[1] / "envs" / "replay" / "tasks" / "monkeys_gsm8k.yaml"
STUDIES = ("monkeys-gsm8k-agent", "monkeys-gsm8k-optuna")


def planner(*args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(app, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('views') / 'planner.db'}"
    for strategy in ("agent", "optuna"):
        planner("optimize", str(TASK), "--strategy", strategy, "--trials", "8", "--db", url,
                "--json")
    return url


def copy_db(db: str, folder: Path) -> str:
    """A consistent copy of the study database (WAL included)."""
    target = folder / "copy.db"
    with sqlite3.connect(db.removeprefix("sqlite:///")) as src, \
            sqlite3.connect(target) as dst:
        src.backup(dst)
    return f"sqlite:///{target}"


def test_studies_show_full_names(db: str) -> None:
    text = planner("studies", "--db", db)
    for name in STUDIES:
        assert name in text


def test_trials_lists_every_trial_and_filters_by_status(db: str) -> None:
    store = Store(db, create=False)
    for name in STUDIES:
        rows = json.loads(planner("trials", name, "--db", db, "--json"))
        stored = store.trials(name)
        assert [r["number"] for r in rows] == [t.number for t in stored] == list(range(8))
        assert [r["score"] for r in rows] == [t.score for t in stored]
        ok = json.loads(planner("trials", name, "--db", db, "--json", "--status", "ok"))
        assert [r["number"] for r in ok] == [t.number for t in stored
                                              if t.status is TrialStatus.OK]
    text = planner("trials", STUDIES[0], "--db", db)
    assert "solve:" in text and "est. GPU-h" in text
    none = planner("trials", STUDIES[0], "--db", db, "--status", "failed")
    assert none.strip() == f"{STUDIES[0]}: no failed trials"  # not an empty table


def test_compare_reports_best_and_what_reaching_it_cost(db: str) -> None:
    rows = json.loads(planner("compare", *STUDIES, "--db", db, "--json"))
    assert [r["study"] for r in rows] == list(STUDIES)
    store = Store(db, create=False)
    spec = load_spec(TASK)
    env = make_environment(spec)
    optimum = load_optima()[spec.name]["score"]
    for row in rows:
        trials = store.trials(row["study"])
        ok = [t for t in trials if t.status is TrialStatus.OK]
        best = max(ok, key=lambda t: (t.score, -t.number))
        assert row["best_score"] == best.score
        assert row["trials_to_best"] == best.number + 1
        cost_model = CostModel(spec, env.calibration())
        draws = study_draws(SearchSpace(spec), cost_model,
                            store.require_study(row["study"]).budget_gpu_hours)
        meter = SearchCost(cost_model, env.validation_items(), draws)
        for t in ok:
            if t.number <= best.number:
                meter.add(t.allocation)
        to_best = meter.gpu_hours
        assert row["search_gpu_hours_to_best"] == pytest.approx(to_best)
        assert row["search_gpu_hours"] >= to_best > 0
        assert row["search_cost"].startswith("cache-aware")
        assert row["optimum"] == pytest.approx(optimum)
        assert row["fraction_of_optimum"] == pytest.approx(best.score / optimum)
        assert row["choices"]["solve"]["model"] == best.allocation["solve"].model
    text = planner("compare", *STUDIES, "--db", db)
    assert "search GPU-h to best" in text and "trials to best" in text


def test_compare_without_an_optimum_where_the_space_is_too_large(db: str,
                                                                  monkeypatch) -> None:
    """A replay task whose allocations are too many to enumerate is compared without its
    optimum, not a traceback."""
    monkeypatch.setattr("planner.cli.VIEW_ENUMERATED", 1)
    rows = json.loads(planner("compare", *STUDIES, "--db", db, "--json"))
    assert [r["optimum"] for r in rows] == [None, None]
    assert all(r["best_score"] > 0 for r in rows)


def test_report_holds_plots_tables_and_gap_to_optimum(db: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    planner("report", STUDIES[0], "-o", str(out), "--db", db)
    page = out.read_text()
    assert page.count('<img src="data:image/png;base64,') == 4
    assert sorted(p.name for p in (tmp_path / "report_files").iterdir()) == [
        "best_vs_search_gpu_hours.png", "best_vs_trials.png", "cost_split.png",
        "stage_curves.png"]
    for header in ("rank", "trial", "score", "est. GPU-h", "allocation", "stage", "model",
                   "samples", "stage score", "training GPU-h", "inference GPU-h"):
        assert f"<th>{header}</th>" in page
    optimum = load_optima()["monkeys-gsm8k"]["score"]
    assert "gap to optimum" in page and f"{optimum:.4g}" in page
    assert not re.search(r"<script|https?://", page)  # static: no script, no network


def test_dashboard_mirrors_each_study_with_its_own_trials(db: str, tmp_path: Path) -> None:
    url = copy_db(db, tmp_path)
    store = Store(url)
    space = SearchSpace(load_spec(TASK))
    seen = {t.allocation.key() for t in store.trials(STUDIES[1])}
    fresh = (a for a in (Allocation.of({"solve": p}) for p in space.plans("solve"))
             if a.key() not in seen)
    for status, cost in ((TrialStatus.OVER_BUDGET, 1e6), (TrialStatus.FAILED, 1.0)):
        number = store.start_trial(STUDIES[1], next(fresh), Cost(0.0, cost))
        store.finish_trial(STUDIES[1], number, status, error=f"{status.value} here")
    storage = f"sqlite:///{tmp_path / 'dashboard.db'}"
    text = planner("dashboard", "--db", url, "--out", storage)
    assert text.strip() == f"optuna-dashboard {storage}"
    planner("dashboard", STUDIES[1], "--db", url, "--out", storage)  # rebuilt, not doubled
    assert sorted(optuna.get_all_study_names(storage)) == sorted(STUDIES)
    states = {TrialStatus.OK: "COMPLETE", TrialStatus.FAILED: "FAIL",
              TrialStatus.OVER_BUDGET: "PRUNED"}
    for name, count in zip(STUDIES, (8, 10), strict=True):
        mirrored = optuna.load_study(study_name=name, storage=storage).trials
        stored = store.trials(name)
        assert len(mirrored) == len(stored) == count
        for m, t in zip(mirrored, stored, strict=True):
            assert m.user_attrs["planner_trial"] == t.number
            assert m.state.name == states[t.status]
            assert m.value == (t.score if t.status is TrialStatus.OK else None)
            assert m.params == params(space, t.allocation)
            assert {k: v for k, v in m.user_attrs.items() if k.startswith("score.")} == {
                f"score.{s}": v for s, v in t.subtask_scores.items()}
            assert m.user_attrs["est_gpu_hours"] == pytest.approx(t.cost.total_gpu_hours)
            assert m.user_attrs.get("error") == t.error
    over = mirrored[-2]
    assert over.state.name == "PRUNED" and over.user_attrs["why"].startswith("over budget")


def test_delete_removes_the_study_and_what_its_strategy_kept(db: str, tmp_path: Path) -> None:
    url = copy_db(db, tmp_path)
    path = url.removeprefix("sqlite:///")

    def checkpoints(thread: str) -> int:
        with sqlite3.connect(path) as c:
            return c.execute("SELECT COUNT(*) FROM checkpoints WHERE thread_id = ?",
                             (thread,)).fetchone()[0]

    assert checkpoints(STUDIES[0]) > 0
    CliRunner().invoke(app, ["delete", STUDIES[0], "--db", url], input="n\n")
    assert Store(url, create=False).get_study(STUDIES[0]) is not None  # declined: kept
    planner("delete", STUDIES[0], "--db", url, "--yes")
    store = Store(url, create=False)
    assert [s.name for s in store.studies()] == [STUDIES[1]]
    assert len(store.trials(STUDIES[1])) == 8
    assert checkpoints(STUDIES[0]) == 0
    internal = f"{STUDIES[1]}-optuna"
    assert internal in optuna.get_all_study_names(url)
    planner("delete", STUDIES[1], "--db", url, "--yes")
    assert store.studies() == [] and internal not in optuna.get_all_study_names(url)
    with sqlite3.connect(path) as c:
        for table in ("trial", "subtask_result", "agent_step", "insight"):
            assert c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
