"""Bad input of every kind: one line on stderr (`Error: ...`), exit code 2, no traceback, no
hang, nothing written; or, where a generated input happens to be valid, a valid study.

Hypothesis generates task files (mutated YAML and raw bytes), replay tables, budgets, CLI
flags and database URLs; each `Case` is written to a fresh folder and run through
`planner.cli.main` in this process (`run_case`), with an alarm as the hang guard. The
generators and `run_case` are shared with `experiments/fuzz_inputs.py`, which runs more.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cli import main

FIFO, FOLDER = "<fifo>", "<folder>"  # special file contents: a named pipe, a directory
ERROR_LIMIT_S = 20  # a run longer than this is a hang


def table_text(rows: int = 4) -> str:
    """A counts table: 2 models x 2 checkpoints x `rows` items, 8 samples each."""
    lines = ["model,method,item,n_samples,n_correct"]
    for m, skill in (("small", 1), ("large", 3)):
        for c, bonus in (("ckpt-a", 0), ("ckpt-b", 2)):
            lines += [f"{m},{c},{i},8,{min(8, skill + bonus + i % 3)}" for i in range(rows)]
    return "\n".join(lines) + "\n"


def base_task(table: str = "table.csv") -> dict:
    """A valid two-stage replay task over `table_text()`."""
    return {
        "name": "fuzz", "environment": "replay", "budget": "100gpu-h",
        "hardware": {"peak_flops": 1e15, "utilization": 0.5},
        "workload": {"queries": 1000},
        "models": [{"name": "small", "params": 1e8}, {"name": "large", "params": 1e9}],
        "methods": [{"name": "ckpt-a", "kind": "pretrain", "train_tokens": 1e9},
                    {"name": "ckpt-b", "kind": "pretrain", "train_tokens": 1e10}],
        "subtasks": [
            {"name": name, "depends_on": deps, "prompt_tokens": 100, "output_tokens": 100,
             "models": ["small", "large"], "methods": ["ckpt-a", "ckpt-b"],
             "samples": [1, 2, 4], "aggregators": ["oracle"],
             "replay": {"table": table, "item": "item",
                        "choices": {"model": "model", "method": "method"}}}
            for name, deps in (("extract", []), ("solve", ["extract"]))],
    }


def dump(task: object) -> bytes:
    return yaml.safe_dump(task, sort_keys=False, allow_unicode=True).encode()


@dataclass(frozen=True)
class Case:
    """One input: files under the case folder's `task/` (bytes, `FIFO` or `FOLDER`), the
    database `db/planner.db` starts as (`db_kind`), and the command (`{task}`, `{dir}`
    expand to the task file and the case folder; the command runs in `db/`)."""

    kind: str
    args: tuple[str, ...]
    files: dict[str, bytes | str] = field(default_factory=dict)
    db_kind: str = "none"  # none | study | foreign | text | corrupt

    def __repr__(self) -> str:  # hypothesis prints failing examples
        files = {k: (v[:60] if isinstance(v, bytes) else v) for k, v in self.files.items()}
        return f"Case({self.kind!r}, {self.args!r}, {files!r}, db={self.db_kind!r})"


@dataclass(frozen=True)
class Outcome:
    code: int | None  # None: a traceback or a hang
    stdout: str
    stderr: str
    hung: bool = False
    traceback: str = ""
    wrote: tuple[str, ...] = ()  # files created, changed or removed in db/

    @property
    def refused(self) -> bool:
        lines = self.stderr.splitlines()
        return (self.code == 2 and len(lines) == 1 and lines[0].startswith("Error:")
                and "Traceback" not in self.stderr)

    def verdict(self) -> str:
        """refused | valid | traceback | hang | multi-line | exit N"""
        if self.hung:
            return "hang"
        if self.traceback or "Traceback" in self.stderr:
            return "traceback"
        if self.refused:
            return "refused"
        if self.code == 0:
            return "valid"
        errors = [ln for ln in self.stderr.splitlines() if ln.startswith("Error:")]
        return "multi-line" if self.code == 2 and errors else f"exit {self.code}"


# --- running a case ----------------------------------------------------------------------
class _Hang(BaseException):
    """Raised by the alarm: not an Exception, so no handler in planner swallows it."""


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def ring(*_: object) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(args: list[str], cwd: Path, limit_s: int = ERROR_LIMIT_S) -> Outcome:
    """`planner ARGS` in this process, as `main()` runs it: exit code and output."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["planner", *args]
    os.chdir(cwd)
    code, hung, trace = None, False, ""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _alarm(limit_s):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _Hang:
        hung = True
    except Exception:  # what the user would see as a traceback
        trace = traceback.format_exc()
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return Outcome(code, out.getvalue(), err.getvalue(), hung, trace)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (SQLite's transient -wal/-shm files aside) -> its digest."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.endswith(("-wal", "-shm", "-journal"))}


def run_case(case: Case, limit_s: int = ERROR_LIMIT_S) -> Outcome:
    """Write `case` to a fresh folder, run it, and note what changed in its db/ folder."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        args = prepare(case, folder)
        before = _snapshot(folder / "db")
        outcome = run_cli(args, folder / "db", limit_s)
        after = _snapshot(folder / "db")
        wrote = tuple(sorted(k for k in before.keys() | after.keys()
                             if before.get(k) != after.get(k)))
        if outcome.code == 0 and case.args[:1] == ("optimize",):
            wrote = () if _has_study(folder / "db", case.args) else ("no study",)
        return Outcome(outcome.code, outcome.stdout, outcome.stderr, outcome.hung,
                       outcome.traceback, wrote)


def prepare(case: Case, folder: Path) -> list[str]:
    """Lay out task/, db/ and out/ for `case`; return its arguments, expanded."""
    for sub in ("task", "db", "out"):
        (folder / sub).mkdir()
    for name, content in case.files.items():
        path = folder / "task" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == FIFO:
            os.mkfifo(path)
        elif content == FOLDER:
            path.mkdir()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _make_db(case.db_kind, folder / "db" / "planner.db")
    task = str(folder / "task" / "task.yaml")
    return [a.replace("{task}", task).replace("{dir}", str(folder)) for a in case.args]


def _make_db(kind: str, path: Path) -> None:
    if kind in ("study", "corrupt"):  # a consistent copy, its WAL included
        with contextlib.closing(sqlite3.connect(study_db())) as src, \
                contextlib.closing(sqlite3.connect(path)) as dst:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")  # as planner keeps it
    if kind in ("corrupt", "foreign"):
        with contextlib.closing(sqlite3.connect(path)) as c:
            c.execute("UPDATE study SET task_json = '{not json'" if kind == "corrupt"
                      else "CREATE TABLE notes (text TEXT)")
            c.commit()
    elif kind == "text":
        path.write_text("name,score\na,1\n")


@cache
def study_db() -> Path:
    """A database holding study `fuzz-random` (3 trials), made once per process."""
    folder = Path(tempfile.mkdtemp(prefix="planner-fuzz-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # each run left one behind
    (folder / "table.csv").write_text(table_text())
    (folder / "task.yaml").write_bytes(dump(base_task()))
    r = run_cli(["optimize", str(folder / "task.yaml"), "--strategy", "random", "--trials",
                 "3", "--json"], folder, 120)
    assert r.code == 0, (r.stderr, r.traceback)
    return folder / "planner.db"


def _has_study(db: Path, args: tuple[str, ...]) -> bool:
    """After `optimize` exited 0: its database holds a study with trials."""
    url = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--db"), None)
    if url is not None and not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return True  # not a file we can look into
    path = db / "planner.db" if url is None else Path(url.removeprefix("sqlite:///"))
    path = path if path.is_absolute() else db / path
    if not path.is_file():
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as c:
        return c.execute("SELECT COUNT(*) FROM trial").fetchone()[0] > 0


# --- generators --------------------------------------------------------------------------
NASTY = st.sampled_from([
    True, False, None, float("inf"), float("-inf"), float("nan"), 0, -1, 1e-300, 10**30, 1e300,
    "", " ", "x", "1e9", "true", [], {}, [1, 1], ["x", "x"], {"a": None}, [[[]]], 3.5,
    "../../etc/passwd", "/etc/passwd", "a/b", "\u00e9\u00e8", "{x}"])


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into a nested mapping/list."""
    found = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += _paths(v, (*prefix, i))
    return found


def _mutate(task: dict, path: tuple, op: str, value: object) -> dict:
    """`task` with the node at `path` replaced, removed, duplicated or joined by a key."""
    parent = task
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif op == "add_key" and isinstance(parent, dict):
        parent[f"extra_{last}"] = value
    elif op == "empty" and isinstance(parent[last], dict | list):
        parent[last] = type(parent[last])()
    else:
        parent[last] = value
    return task


@st.composite
def mutated_tasks(draw: st.DrawFn) -> Case:
    """The base task with one or two nodes made nasty, as YAML."""
    task = base_task()
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(task)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "duplicate", "add_key",
                                   "empty"]))
        task = _mutate(task, path, op, copy.deepcopy(draw(NASTY)))
    return _optimize_case("task:mutated", dump(task), draw)


def _deep(n: int) -> bytes:
    return b"name: " + b"[" * n + b"]" * n + b"\n"


def _laughs(levels: int) -> bytes:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


RAW_TASKS: dict[str, Callable[[st.DrawFn], bytes]] = {
    "binary": lambda d: d(st.binary(min_size=1, max_size=200)),
    "utf-16": lambda d: dump(base_task()).decode().encode(d(st.sampled_from(
        ["utf-16", "utf-16-le", "utf-32"]))),
    "latin-1": lambda d: dump({**base_task(), "description": "caf\u00e9 na\u00efve"}).decode()
    .encode("latin-1"),
    "nested": lambda d: _deep(d(st.sampled_from([33, 200, 5000, 100_000]))),
    "laughs": lambda d: _laughs(d(st.integers(4, 9))),
    "duplicate-key": lambda d: dump(base_task()) + d(st.sampled_from(
        [b"name: again\n", b"budget: 1gpu-h\n"])),
    "not-mapping": lambda d: d(st.sampled_from([b"", b"- a\n- b\n", b"42\n", b"~\n",
                                                b"just text\n", b"[1, {a: 2}]\n"])),
    "text": lambda d: d(st.text(max_size=80)).encode(),
    "recursive": lambda d: b"a: &a [*a]\n",
    "huge": lambda d: b"description: " + b"x" * (1 << 20) + b"\n",
}


@st.composite
def raw_tasks(draw: st.DrawFn) -> Case:
    """Task files that are not a task: binary, other encodings, nesting, aliases..."""
    kind = draw(st.sampled_from(sorted(RAW_TASKS)))
    return _optimize_case(f"task:{kind}", RAW_TASKS[kind](draw), draw)


def _optimize_case(kind: str, task: bytes, draw: st.DrawFn,
                   files: dict[str, bytes | str] | None = None) -> Case:
    strategy = draw(st.sampled_from(["random", "agent"]))
    return Case(kind, ("optimize", "{task}", "--strategy", strategy, "--trials", "3"),
                {"task.yaml": task, "table.csv": table_text().encode(), **(files or {})})


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _jsonl(text: str, nested: bool = False) -> bytes:
    """The CSV table `text` as JSON Lines; `nested`: items as objects, counts as they are."""
    header, *rows = text.splitlines()
    names = header.split(",")
    lines = []
    for row in rows:
        record: dict = dict(zip(names, row.split(","), strict=False))
        record.update({k: int(v) for k, v in record.items() if v.isdigit()})
        if nested and "item" in record:
            record["item"] = {"id": record["item"]}
        lines.append(json.dumps(record))
    return ("\n".join(lines) + "\n").encode()


def _cells(text: str, row: int, column: int, value: str) -> str:
    lines = text.splitlines()
    cells = lines[row].split(",")
    cells[column] = value
    lines[row] = ",".join(cells)
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[st.DrawFn], tuple[str, bytes | str]]] = {
    "empty": lambda d: ("table.csv", b""),
    "header-only": lambda d: ("table.csv", b"model,method,item,n_samples,n_correct\n"),
    "cell": lambda d: ("table.csv", _cells(table_text(), d(st.integers(1, 16)),
                                           d(st.integers(2, 4)), d(st.sampled_from(
                                               ["abc", "", "-1", "2.5", "9", "1e400", "nan",
                                                "true", "1e30", "-0"]))).encode()),
    "ragged": lambda d: ("table.csv", (table_text() + d(st.sampled_from(
        ["a,b\n", "small,ckpt-a,9,8,1,extra\n", "\"unclosed\n"]))).encode()),
    "plain-as-gz": lambda d: ("table.csv.gz", table_text().encode()),
    "garbage-gz": lambda d: ("table.csv.gz", _gz(table_text().encode())[:30]
                             + d(st.binary(max_size=20))),
    "gz-binary": lambda d: ("table.csv.gz", _gz(d(st.binary(min_size=1, max_size=100)))),
    "binary": lambda d: ("table.csv", d(st.binary(min_size=1, max_size=200))),
    "utf-16": lambda d: ("table.csv", table_text().encode("utf-16")),
    "folder": lambda d: ("table.csv", FOLDER),
    "fifo": lambda d: ("table.csv", FIFO),
    "not-parquet": lambda d: ("table.parquet", table_text().encode()),
    "csv-as-jsonl": lambda d: ("table.jsonl", table_text().encode()),
    "jsonl-binary": lambda d: ("table.jsonl", d(st.binary(min_size=1, max_size=200))),
    "plain-as-jsonl-gz": lambda d: ("table.jsonl.gz", _jsonl(table_text())),
    "jsonl-nested": lambda d: ("table.jsonl", _jsonl(table_text(), nested=True)),
    "json-binary": lambda d: ("table.json", d(st.binary(min_size=1, max_size=200))),
    "json-shape": lambda d: ("table.json", d(st.sampled_from(
        ["[]", "5", "[1, 2]", "{}", '{"model": "small"}', "[[1, 2]]", "null", "[{}]"]))),
    "tsv-as-csv": lambda d: ("table.tsv", table_text().encode()),
    "trailing-extra": lambda d: ("table.csv", "\n".join(
        [line + (",x" if i == 1 else ",") for i, line in enumerate(table_text().splitlines())]
    ).encode()),
    "unknown-suffix": lambda d: ("table.xlsx", table_text().encode()),
    "device": lambda d: (d(st.sampled_from(["/dev/null", "/dev/zero", "/dev/urandom"])), b""),
    "system-file": lambda d: (d(st.sampled_from(["/etc/passwd", "/proc/self/environ",
                                                 "/etc/hostname"])), b""),
    "escape": lambda d: ("../../../etc/passwd", b""),
    "missing": lambda d: ("absent.csv", b""),
}


@st.composite
def bad_tables(draw: st.DrawFn) -> Case:
    """The base task over a table that is broken in one way."""
    kind = draw(st.sampled_from(sorted(TABLES)))
    name, content = TABLES[kind](draw)
    files: dict[str, bytes | str] = {} if name.startswith(("/", "..")) or kind == "missing" \
        else {name: content}
    task = dump(base_task(table=name))
    case = _optimize_case(f"table:{kind}", task, draw, files)
    return Case(case.kind, case.args, {k: v for k, v in case.files.items()
                                       if k != "table.csv" or "table.csv" in files})


BUDGETS = st.one_of(
    st.sampled_from(["", " ", "8", "gpu-h", "-1gpu-h", "0gpu-h", "1e400gpu-h", "infgpu-h",
                     "nangpu-h", "1e-300gpu-h", "1e300flop", "3.5e18flop", "8 hours", "8gpu-h",
                     "90gpu-min", "1e16gpu-h", "8gpu-h\nx", "\x00"]),
    st.builds(lambda n, u: f"{n}{u}", st.floats(allow_nan=True, allow_infinity=True)
              | st.integers(-10, 10**20), st.sampled_from(["gpu-h", "gpu-min", "gpu-s", "flop"])),
    st.text(max_size=20))


@st.composite
def budgets(draw: st.DrawFn) -> Case:
    budget = draw(BUDGETS)
    flag = draw(st.sampled_from(["--budget", "--search-budget"]))
    case = _optimize_case("budget", dump(base_task()), draw)
    return Case(f"budget:{flag}", (*case.args, flag, budget), case.files)


OPTIMIZE_FLAGS = {
    "--trials": st.sampled_from(["0", "-3", "1e3", "abc", "", "99999999999", "2"]),
    "--seed": st.sampled_from(["-1", "4294967296", "x", "", "7"]),
    "--patience": st.sampled_from(["0", "-1", "10000000", "2"]),
    "--llm-timeout": st.sampled_from(["nan", "inf", "-1", "0", "1e9", "x"]),
    "--strategy": st.sampled_from(["", "grid", "AGENT", "optuna"]),
    "--reasoner": st.sampled_from(["", "gpt", "llm"]),
    "--study": st.sampled_from(["", " ", "fuzz-random", "mine"]),
    "--from": st.sampled_from(["{dir}/absent", "{dir}/task", "{dir}/task/table.csv",
                               "{dir}/task/task.yaml", "/dev/null"]),
    "--bogus": st.just("1"),
}


@st.composite
def optimize_flags(draw: st.DrawFn) -> Case:
    """`optimize` on a valid task with one or two odd flags."""
    names = draw(st.lists(st.sampled_from(sorted(OPTIMIZE_FLAGS)), min_size=1, max_size=2,
                          unique=True))
    case = _optimize_case("flags", dump(base_task()), draw)
    extra = [x for n in names for x in (n, draw(OPTIMIZE_FLAGS[n]))]
    extra += draw(st.sampled_from([[], ["--resume"], ["--json"]]))
    db_kind = draw(st.sampled_from(["none", "study"]))
    return Case(f"flags:{'+'.join(names)}", (*case.args, *extra), case.files, db_kind)


DB_URLS = st.sampled_from([
    "sqlite:///{dir}/nodir/x.db", "sqlite:///{dir}/task", "sqlite:///{dir}/task/table.csv",
    "sqlite:///{dir}/task/fifo", "mysql://u:secret@localhost/db", "foo://x", "garbage", "",
    "postgresql://u:secret@127.0.0.1:1/db", "sqlite:///planner.db", "sqlite:///other.db",
    "sqlite:////dev/null"])
READ_COMMANDS = [("studies",), ("show", "fuzz-random"), ("trace", "fuzz-random"),
                 ("export", "fuzz-random", "-o", "{dir}/out/e"), ("trials", "fuzz-random"),
                 ("compare", "fuzz-random"), ("show", "nosuch"), ("trace", "fuzz-random",
                                                                  "--step", "-1")]


@st.composite
def databases(draw: st.DrawFn) -> Case:
    """Any command on a bad --db, or on a database that is foreign, text or corrupt."""
    db_kind = draw(st.sampled_from(["none", "study", "foreign", "text", "corrupt"]))
    url = draw(st.one_of(st.just(None), DB_URLS))
    command = draw(st.sampled_from(
        [*READ_COMMANDS, ("optimize", "{task}", "--strategy", "random", "--trials", "2"),
         ("check", "{task}")]))
    args = (*command, *(("--db", url) if url is not None and command[0] != "check" else ()))
    files = {"task.yaml": dump(base_task()), "table.csv": table_text().encode(),
             "fifo": FIFO}
    return Case(f"db:{db_kind}:{command[0]}", args, files, db_kind)


@st.composite
def read_commands(draw: st.DrawFn) -> Case:
    """A read-only command with odd arguments, on a planner database."""
    command = draw(st.sampled_from(READ_COMMANDS))
    extra = draw(st.sampled_from([[], ["--json"], ["--top", "0"], ["--top", "-5"],
                                  ["--trial", "99"], ["--format", "nope"], ["--step", "x"],
                                  ["--task", "{dir}/absent.yaml"], ["--status", "weird"]]))
    return Case(f"read:{command[0]}", (*command, *extra), {}, "study")


INPUTS = st.one_of(mutated_tasks(), raw_tasks(), bad_tables(), budgets(), optimize_flags(),
                   databases(), read_commands())
"""Every kind of generated input."""


def check(case: Case, outcome: Outcome) -> None:
    """The promise: a clean refusal that wrote nothing, or a valid study."""
    verdict = outcome.verdict()
    assert verdict in ("refused", "valid"), (verdict, outcome.stderr[-2000:],
                                             outcome.traceback[-3000:])
    assert not outcome.wrote, (verdict, outcome.wrote, outcome.stderr)


# --- property tests ----------------------------------------------------------------------
FAST = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(mutated_tasks())
def test_mutated_task_files(case: Case) -> None:
    check(case, run_case(case))


@FAST
@given(raw_tasks())
def test_task_files_that_are_not_tasks(case: Case) -> None:
    check(case, run_case(case))


@FAST
@given(bad_tables())
def test_replay_tables(case: Case) -> None:
    check(case, run_case(case))


@FAST
@given(budgets())
def test_budgets(case: Case) -> None:
    check(case, run_case(case))


@FAST
@given(optimize_flags())
def test_optimize_flags(case: Case) -> None:
    check(case, run_case(case))


@FAST
@given(st.one_of(databases(), read_commands()))
def test_databases_and_read_commands(case: Case) -> None:
    check(case, run_case(case))


# --- one example per kind ----------------------------------------------------------------
def _task_case(task: bytes | dict, **files: bytes | str) -> Case:
    data = dump(task) if isinstance(task, dict) else task
    return Case("example", ("optimize", "{task}", "--strategy", "random", "--trials", "2"),
                {"task.yaml": data, "table.csv": table_text().encode(), **files})


def _edit(change: Callable[[dict], object]) -> dict:
    task = base_task()
    change(task)
    return task


def _sub(**fields: object) -> Callable[[dict], object]:
    return lambda t: t["subtasks"][0].update(fields)


TASK_EXAMPLES = [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "byte 1 is not UTF-8"),
    (dump(base_task()).decode().encode("utf-16"), "UTF-16"),
    (dump({**base_task(), "description": "caf\u00e9"}).decode().encode("latin-1"),
     "not UTF-8 text"),
    (_deep(100_000), "nested deeper than 32 levels"),
    (_laughs(9), "once aliases are expanded"),
    (b"a: &a [*a]\n", "refers to its own parent"),
    (dump(base_task()) + b"name: again\n", "key 'name' appears twice"),
    (b"- a\n- b\n", "expected a mapping, got list"),
    (b"", "the file is empty"),
    (_edit(lambda t: t["models"][0].update(params=True)), "true is a boolean, not a number"),
    (_edit(lambda t: t["models"][0].update(params=float("inf"))), "finite number"),
    (_edit(lambda t: t["models"][0].update(params=float("nan"))), "finite number"),
    (dump(base_task()).replace(b"params: 100000000.0", b"params: 1e400"), "finite number"),
    (_edit(lambda t: t["models"][0].update(params=1e30)), "less than or equal to"),
    (_edit(lambda t: t["workload"].update(queries=True)), "boolean, not a number"),
    (_edit(lambda t: t["hardware"].update(utilization=1e-300)), "greater than or equal"),
    (_edit(lambda t: t.update(methods=[])), "methods: List should have at least 1 item"),
    (_edit(_sub(methods=[])), "methods: List should have at least 1 item"),
    (_edit(_sub(mixtures={})), "mixtures: Dictionary should have at least 1 item"),
    (_edit(_sub(aggregators=["oracle", "oracle"])), "'oracle' is listed twice"),
    (_edit(_sub(samples=[1, 2, 2])), "2 is listed twice"),
    (_edit(lambda t: t["models"].append({"name": "small", "params": 1})),
     "'small' is used twice"),
    (_edit(lambda t: t["subtasks"][0]["replay"].update(choices={})),
     "choices: Dictionary should have at least 1 item"),
    (_edit(lambda t: t["subtasks"][0].update(methods=["ckpt-a"], replay={
        **t["subtasks"][0]["replay"], "choices": {"model": "model"}})),  # were averaged
     "both count item '0' for one choice (they differ in ['method']"),
    (_edit(lambda t: t["subtasks"][0]["replay"].update(item="")),  # a traceback in fuzzing
     "replay.item: String should have at least 1 character"),
    (_edit(lambda t: t["subtasks"][0]["replay"]["choices"].update(method="")),
     "replay.choices.method: String should have at least 1 character"),
    (_edit(lambda t: t["models"][0].update(methods=["ckpt-z"])),
     "models[0] (small).methods: names unknown methods ['ckpt-z']"),
    (_edit(lambda t: t["methods"][0].update(options={"steps": 3})), "takes no key 'options'"),
    (_edit(_sub(metric="accuracy")), "the replay environment ignores `metric`"),
    (_edit(_sub(data={"val": "v.jsonl"})), "the replay environment ignores `data`"),
    (_edit(lambda t: t["subtasks"][0]["replay"].update(table="../../etc/passwd")),
     "leaves the task's folder"),
    (_edit(lambda t: (t["models"][1].update(name="big"),
                      [s.update(models=["small", "big"]) for s in t["subtasks"]])),
     "no rows for big/ckpt-a/default; column `model` (choices.model) never holds `big`; it "
     "holds large, small: name the model as the table does, or add its rows"),
]


@pytest.mark.parametrize(("task", "expected"), TASK_EXAMPLES,
                         ids=[e for _, e in TASK_EXAMPLES])
def test_task_file_examples(task: bytes | dict, expected: str) -> None:
    outcome = run_case(_task_case(task))
    check(_task_case(task), outcome)
    assert expected in outcome.stderr, outcome.stderr


TABLE_EXAMPLES = [
    ("empty", b"", "the table is empty"),
    ("header", b"model,method,item,n_samples,n_correct\n", "the table has no rows"),
    ("text", _cells(table_text(), 3, 4, "many").encode(),
     "row 3: column 'n_correct' is not a number"),
    ("inf", _cells(table_text(), 3, 4, "1e400").encode(),
     "row 3: column 'n_correct' is not a finite number"),
    ("blank", _cells(table_text(), 3, 4, "").encode(), "row 3: column 'n_correct' is empty"),
    ("list", _cells(table_text(), 3, 4, '"[1, 0]"').encode(),
     "row 3: column 'n_correct' holds a list, which only JSON Lines, JSON and Parquet"),
    ("longer first row", _cells(table_text(), 1, 4, "1,9").encode(),
     "line 2 has 6 fields but the header has 5; quote a text that holds the separator"),
    ("ragged", (table_text() + "small,ckpt-a,9,8,1,extra\n").encode(),
     "line 18 has 6 fields but the header has 5"),
    ("over", _cells(table_text(), 1, 4, "9").encode(),
     "row 1: column 'n_correct' is more than column 'n_samples'"),
    ("negative", _cells(table_text(), 2, 4, "-1").encode(), "row 2: column 'n_correct' is "
     "negative"),
    ("fraction", _cells(table_text(), 2, 3, "7.5").encode(), "is not a whole number"),
    ("zero", _cells(table_text(), 2, 3, "0").encode(), "is not a sample count"),
    ("twice", (table_text() + "small,ckpt-a,0,8,2\n").encode(),
     "rows 1 and 17 both count item '0' for one choice"),
    ("pair unrecorded", "".join(ln for ln in table_text().splitlines(keepends=True)
                                if not ln.startswith("small,ckpt-b")).encode(),
     "no rows for small/ckpt-b/default; add the rows, or offer only recorded methods"),
]


@pytest.mark.parametrize(("name", "content", "expected"), TABLE_EXAMPLES,
                         ids=[t[0] for t in TABLE_EXAMPLES])
def test_table_examples(name: str, content: bytes, expected: str) -> None:
    case = _task_case(base_task(), **{"table.csv": content})
    outcome = run_case(case)
    check(case, outcome)
    assert expected in outcome.stderr, outcome.stderr


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("table.csv.gz", table_text().encode(), "not valid gzip data"),
    ("table.csv.gz", _gz(table_text().encode())[:40], "not valid gzip data"),
    ("table.csv", FOLDER, "is not a regular file"),
    ("table.csv", FIFO, "is not a regular file"),
    ("table.parquet", table_text().encode(), "not a readable Parquet file"),
    ("table.jsonl", table_text().encode(), "not well-formed JSON Lines"),
    ("table.jsonl.gz", _jsonl(table_text()), "not valid gzip data"),
    ("table.json", table_text().encode(), "not well-formed JSON (an array of objects"),
    ("table.json.gz", _jsonl(table_text()), "not valid gzip data"),
    ("table.tsv.gz", table_text().encode(), "not valid gzip data; a .tsv.gz table"),
    ("table.xlsx", table_text().encode(), "unknown table format"),
    ("/dev/zero", None, "is not a regular file"),
])
def test_table_file_examples(name: str, content: bytes | str | None, expected: str) -> None:
    files = {} if content is None else {name: content}
    case = _task_case(base_task(table=name), **files)
    outcome = run_case(case)
    check(case, outcome)
    assert expected in outcome.stderr, outcome.stderr


def test_parquet_without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    def missing(*_: object, **__: object) -> None:
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow'")

    monkeypatch.setattr(pd, "read_parquet", missing)
    case = _task_case(base_task(table="table.parquet"), **{"table.parquet": b"PAR1"})
    outcome = run_case(case)
    check(case, outcome)
    assert "needs pyarrow, which is not installed" in outcome.stderr


@pytest.mark.parametrize("table", ["/etc/passwd", "/proc/self/environ"])
def test_system_file_contents_are_never_echoed(table: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_FUZZ_VALUE", "visible-environment-value")
    case = _task_case(base_task(table=table))
    outcome = run_case(case)
    check(case, outcome)
    assert "columns, none of them named so" in outcome.stderr or "root:" not in outcome.stderr
    assert "visible-environment-value" not in outcome.stderr
    assert "root:x" not in outcome.stderr


def test_absolute_table_outside_the_folder_is_noted_once(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.csv").write_text(table_text())
    case = _task_case(base_task(table=str(tmp_path / "elsewhere.csv")))
    outcome = run_case(case)
    assert outcome.code == 0, outcome.stderr
    notes = [ln for ln in outcome.stderr.splitlines() if ln.startswith("note: reading table")]
    assert notes == [f"note: reading table {tmp_path / 'elsewhere.csv'} (outside the task "
                     "folder)"]


@pytest.mark.parametrize(("db_kind", "url", "expected"), [
    ("none", "sqlite:///{dir}/nodir/x.db", "does not exist|no such database file"),
    ("none", "sqlite:///{dir}/task", "not a regular file"),
    ("text", None, "not a SQLite database file"),
    ("foreign", None, "planner adds no tables to it|not a planner database"),
    ("corrupt", None, r"study 'fuzz-random' is damaged \(its task is not JSON\)"),
    ("none", "mysql://u:secret@localhost/db", r"driver \(MySQLdb\) is not installed"),
    ("none", "garbage", "not a database URL"),
    ("none", "foo://x", "unknown kind of database"),
])
def test_bad_databases(db_kind: str, url: str | None, expected: str) -> None:
    for command in (("optimize", "{task}", "--strategy", "random", "--trials", "2"),
                    ("studies",), ("show", "fuzz-random")):
        case = Case("db", (*command, *(("--db", url) if url else ())),
                    {"task.yaml": dump(base_task()), "table.csv": table_text().encode()},
                    db_kind)
        outcome = run_case(case)
        check(case, outcome)
        assert re.search(expected, outcome.stderr), (command, outcome.stderr)
        assert "secret" not in outcome.stderr


def test_foreign_sqlite_file_is_left_as_it_was(tmp_path: Path) -> None:
    case = Case("db", ("optimize", "{task}", "--trials", "2"),
                {"task.yaml": dump(base_task()), "table.csv": table_text().encode()},
                "foreign")
    outcome = run_case(case)
    check(case, outcome)
    assert "planner adds no tables to it" in outcome.stderr


def test_read_only_database_file(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).endswith(
        "planner.db") and mode == os.W_OK else real(p, mode, **kw))
    case = Case("db", ("optimize", "{task}", "--trials", "2"),
                {"task.yaml": dump(base_task()), "table.csv": table_text().encode()}, "study")
    outcome = run_case(case)
    check(case, outcome)
    assert "read-only" in outcome.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (("--budget", ""), "--budget: blank"),
    (("--study", ""), "--study: blank"),
    (("--search-budget", " "), "--search-budget: blank"),
    (("--budget", "1e400gpu-h"), "--budget: bad budget '1e400gpu-h'"),
    (("--budget", "50usd"), "--budget: 50usd: a budget in USD needs the price of a GPU-hour"),
    (("--search-budget", "5usd"), "--search-budget: 5usd: a budget in USD needs the price"),
    (("--trials", "0"), "'--trials'"),
    (("--trials", "100000000"), "'--trials'"),
    (("--seed", "-1"), "'--seed'"),
    (("--llm-timeout", "nan"), "--llm-timeout"),
    (("--resume",), "no such database file"),
    (("--from", "/dev/null"), "no such plan file"),
])
def test_flag_examples(args: tuple[str, ...], expected: str) -> None:
    case = _task_case(base_task())
    case = Case("flags", (*case.args, *args), case.files)
    outcome = run_case(case)
    check(case, outcome)
    assert expected in outcome.stderr, outcome.stderr


@pytest.mark.parametrize("args", [(), ("nosuch",), ("optimize",), ("show",),
                                  ("show", "x", "--top", "0"), ("export", "x")])
def test_usage_errors_are_one_line(args: tuple[str, ...]) -> None:
    case = Case("usage", args, {}, "study")
    outcome = run_case(case)
    assert outcome.refused, outcome.stderr
    assert not outcome.wrote


def test_valid_input_makes_a_study() -> None:
    case = _task_case(base_task())
    outcome = run_case(case)
    assert outcome.verdict() == "valid" and not outcome.wrote, outcome.stderr


def test_a_fifo_table_does_not_hang_the_real_command(tmp_path: Path) -> None:
    """The command as users run it (a subprocess), over a named pipe nobody writes."""
    os.mkfifo(tmp_path / "table.csv")
    (tmp_path / "task.yaml").write_bytes(dump(base_task()))
    r = subprocess.run([sys.executable, "-m", "planner.cli", "optimize", "task.yaml"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "is not a regular file" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv", "task.yaml"]
