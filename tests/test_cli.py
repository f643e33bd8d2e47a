"""The `planner` command on a real database: the study every test reads is made by a
subprocess, as a user would run it; the commands under test go through `cli.main`, the
console script's entry point, in this process (a subprocess costs seconds of imports)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from planner import report
from planner.cli import escalation_lines
from planner.store import Store
from tests.conftest import run_planner, write_tiny_task


def planner(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_planner(*args, cwd=cwd)


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny task and its 8-trial Optuna study, made by a subprocess
    (`python -m planner`)."""
    folder = tmp_path_factory.mktemp("study")
    task = write_tiny_task(folder)
    r = subprocess.run([sys.executable, "-m", "planner", "optimize", str(task), "--budget",
                        "35gpu-h", "--strategy", "optuna", "--trials", "8", "--seed", "3"],
                       cwd=folder, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "leaderboard" in r.stdout and "extract:" in r.stdout
    return folder


@pytest.fixture
def study_dir(optimized: Path, tmp_path: Path, tiny_task_path: Path) -> Path:
    """A copy of `optimized` for one test to change."""
    shutil.copytree(optimized, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_optimize_writes_default_db_and_study(study_dir: Path) -> None:
    store = Store(f"sqlite:///{study_dir / 'planner.db'}")
    assert [s.name for s in store.studies()] == ["tiny-optuna"]
    assert len(store.trials("tiny-optuna")) == 8


def test_same_command_resumes_without_repeating(study_dir: Path, tiny_task_path: Path) -> None:
    r = planner("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--strategy", "optuna",
                "--trials", "12", "--seed", "3", "--resume", "--json", cwd=study_dir)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["trials"] == 12 and data["notes"] == []
    trials = Store(f"sqlite:///{study_dir / 'planner.db'}").trials("tiny-optuna")
    assert [t.number for t in trials] == list(range(12))
    assert len({t.allocation.key() for t in trials}) == 12


def test_a_stage_that_never_scored_is_named(tmp_path: Path) -> None:
    task = write_tiny_task(tmp_path)
    spec = yaml.safe_load(task.read_text())
    spec["subtasks"][1]["replay"]["table"] = "unsolved.csv"
    task.write_text(yaml.safe_dump(spec, sort_keys=False))
    rows = (tmp_path / "table.csv").read_text().splitlines()
    (tmp_path / "unsolved.csv").write_text("\n".join(
        [rows[0]] + [r.rsplit(",", 1)[0] + ",0" for r in rows[1:]]) + "\n")
    r = planner("optimize", str(task), "--strategy", "random", "--trials", "3", "--json",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["notes"] == [
        "stage solve scored 0 in every evaluated trial (3): no plan tried answered one of its "
        "validation items right"]
    r = planner("optimize", str(task), "--strategy", "random", "--trials", "3", cwd=tmp_path)
    assert "stage solve scored 0 in every evaluated trial" in r.stderr
    assert "stage extract" not in r.stderr
    shown = planner("show", "tiny-random", cwd=tmp_path)  # read again later, it still says so
    assert "stage solve scored 0 in every evaluated trial (3)" in shown.stderr
    assert json.loads(planner("show", "tiny-random", "--json", cwd=tmp_path).stdout)["notes"]
    trials = Store(f"sqlite:///{tmp_path / 'planner.db'}").trials("tiny-random")
    assert "`answer:`" in report.unsolved(trials, live=True)[0]  # a live stage: the hint


def test_studies_show_trace_json(study_dir: Path) -> None:
    studies = json.loads(planner("studies", "--json", cwd=study_dir).stdout)
    assert studies[0]["study"] == "tiny-optuna" and studies[0]["trials"] == 8
    shown = json.loads(planner("show", "tiny-optuna", "--json", cwd=study_dir).stdout)
    best = shown["best"]
    assert shown["trials"] == 8 and best["score"] == shown["leaderboard"][0]["score"]
    assert shown["notes"] == []
    split = best["cost_gpu_hours"]
    assert split["train"] + split["inference"] == pytest.approx(split["total"])
    assert split["total"] <= 35
    assert set(best["subtask_scores"]) == {"extract", "solve"}
    events = json.loads(planner("trace", "tiny-optuna", "--json", cwd=study_dir).stdout)
    assert [e["number"] for e in events if e["kind"] == "trial"] == list(range(8))
    human = planner("show", "tiny-optuna", cwd=study_dir)
    assert "training" in human.stdout and "inference" in human.stdout
    assert "time in trials" in human.stdout  # their durations summed, not the search's wall
    assert "timeline" in planner("trace", "tiny-optuna", cwd=study_dir).stdout


def test_export_then_optimize_from_plan(study_dir: Path, tiny_task_path: Path) -> None:
    out = study_dir / "export"
    r = planner("export", "tiny-optuna", "-o", str(out), cwd=study_dir)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load((out / "plan.yaml").read_text())
    shown = json.loads(planner("show", "tiny-optuna", "--json", cwd=study_dir).stdout)
    assert doc["allocation"] == shown["best"]["allocation"]
    assert doc["training"] == []  # released checkpoints: nothing to fine-tune
    serving = yaml.safe_load((out / "serving.yaml").read_text())
    assert set(serving["subtasks"]) == {"extract", "solve"}
    assert "expected end-to-end score" in (out / "README.md").read_text().lower()
    r = planner("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--strategy", "random",
                "--trials", "3", "--from", str(out), "--json", cwd=study_dir)
    assert r.returncode == 0, r.stderr
    trials = Store(f"sqlite:///{study_dir / 'planner.db'}").trials("tiny-random")
    assert trials[0].source == "from-plan"
    assert trials[0].allocation.to_dict() == doc["allocation"]


def test_export_of_a_chosen_trial_and_bad_export_input(study_dir: Path) -> None:
    r = planner("export", "tiny-optuna", "--trial", "2", "--format", "trl", "-o", "e",
                cwd=study_dir)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((study_dir / "e" / "plan.yaml").read_text())["trial"] == 2
    (study_dir / "notes").mkdir()
    (study_dir / "notes" / "mine.txt").write_text("keep")
    for args, expected in ((["--trial", "99"], "--trial 99: study 'tiny-optuna' has no "),
                           (["--format", "axolotol"], "--format"),
                           (["-o", "notes"], "notes: exists and is not an export folder")):
        r = planner("export", "tiny-optuna", "-o", "x", *args, cwd=study_dir)
        assert r.returncode == 2 and expected in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (study_dir / "x").exists()
    assert (study_dir / "notes" / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(("args", "expected"), [
    (["optimize", "{task}", "--budget", "8 hours"], "bad budget '8 hours'"),
    (["optimize", "{dir}/absent.yaml"], "no such task file"),
    (["optimize", "{task}", "--from", "{dir}/nope.yaml"], "no such plan file"),
    (["show", "nosuch"], "no such database file"),  # nothing optimized here yet
    (["trace", "nosuch"], "no such database file"),
    (["export", "nosuch", "-o", "x.yaml"], "no such database file"),
    (["optimize", "{task}", "--strategy", "grid"], "--strategy"),
])
def test_bad_input_one_line_exit_2(tmp_path: Path, tiny_task_path: Path, args: list[str],
                                   expected: str) -> None:
    args = [a.format(task=tiny_task_path, dir=tmp_path) for a in args]
    r = planner(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_resume_with_other_budget_is_refused(study_dir: Path, tiny_task_path: Path) -> None:
    r = planner("optimize", str(tiny_task_path), "--budget", "20gpu-h", "--strategy", "optuna",
                "--trials", "9", "--seed", "3", cwd=study_dir)
    assert r.returncode == 2
    assert "budget='35gpu-h'" in r.stderr and "--study NEW_NAME" in r.stderr
    assert len(Store(f"sqlite:///{study_dir / 'planner.db'}").trials("tiny-optuna")) == 8


def test_bad_plan_file_names_the_field(study_dir: Path, tiny_task_path: Path) -> None:
    plan = study_dir / "plan.yaml"
    plan.write_text(yaml.safe_dump({"allocation": {"extract": {"model": "huge"},
                                                   "solve": {"model": "small"}}}))
    r = planner("optimize", str(tiny_task_path), "--from", str(plan), cwd=study_dir)
    assert r.returncode == 2
    assert "allocation.extract.model: 'huge' is not allowed" in r.stderr


def test_an_unknown_study_is_named(study_dir: Path) -> None:
    for args in (["show", "nosuch"], ["trace", "nosuch"], ["export", "nosuch", "-o", "x"]):
        r = planner(*args, cwd=study_dir)
        assert r.returncode == 2 and "no study 'nosuch'" in r.stderr, r.stderr


def test_read_only_commands_create_and_alter_nothing(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE notes (text)")
    before = foreign.read_bytes()
    for args in (["studies"], ["show", "s"], ["trace", "s"], ["export", "s", "-o", "out"]):
        r = planner(*args, "--db", f"sqlite:///{tmp_path / 'absent.db'}", cwd=tmp_path)
        assert r.returncode == 2 and "no such database file" in r.stderr, r.stderr
        r = planner(*args, "--db", f"sqlite:///{foreign}", cwd=tmp_path)
        assert r.returncode == 2 and "not a planner database" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db"]
    assert foreign.read_bytes() == before  # no tables added, journal mode unchanged


_HEAVY = ("langgraph", "openai", "optuna")
_LOADED = ("import atexit, json, sys\n"
           f"atexit.register(lambda: print(json.dumps([m for m in {_HEAVY!r} "
           "if m in sys.modules])))\n"
           "from planner.cli import main\n"
           "sys.argv[0] = 'planner'\n"
           "main()\n")


def _loaded(*args: str, cwd: Path) -> list[str]:
    """The heavy libraries a `planner ARGS` subprocess had imported when it exited."""
    r = subprocess.run([sys.executable, "-c", _LOADED, *args], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_commands_load_only_the_libraries_they_run(study_dir: Path,
                                                   tiny_task_path: Path) -> None:
    """Reading commands start without LangGraph, Optuna or the OpenAI client (0.7 s against
    2 s); the builtin agent loads LangGraph and not the OpenAI client."""
    assert _loaded("--help", cwd=study_dir) == []
    assert _loaded("check", str(tiny_task_path), cwd=study_dir) == []
    assert _loaded("studies", cwd=study_dir) == []
    assert _loaded("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--trials", "2",
                   "--study", "agent", cwd=study_dir) == ["langgraph"]
    assert _loaded("trace", "agent", cwd=study_dir) == []


def test_escalations_are_one_line_per_cascade() -> None:
    """`planner show` sums up how much each cascade escalated over its trials, against the
    share the cost model assumed, instead of a line per trial."""
    rows = [{"number": n, "escalated": {"compute": {"assumed": 0.75, "measured": m}}}
            for n, m in ((3, 0.5), (5, 1.0), (8, 0.75))]
    rows.append({"number": 9, "escalated": {"parse": {"assumed": 1.0, "measured": 0.25}}})
    assert escalation_lines(rows) == [
        "compute: its cascade escalated a share of 0.5 to 1 (median 0.75) of its validation "
        "items to the strong plan (trials 3, 5, 8); the cost model assumed 0.75 (the threshold)",
        "parse: its cascade escalated a share 0.25 of its validation items to the strong plan "
        "(trial 9); the cost model assumed 1 (the threshold)"]
