"""Persistence: studies, trials, per-subtask results, agent steps and insights (SQLModel).

Only this module imports sqlmodel; callers get frozen records back. SQLite (WAL, busy
timeout) by default; any SQLAlchemy URL works. Every write commits at once, so a crash
loses at most the trial that was running, which a resumed study runs again. Several
processes may drive one study: each is a driver (a seat and a heartbeat), claims trial
numbers and allocations atomically, and adopts only trials whose driver is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Index, Table, bindparam, event, func, inspect, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, UniqueConstraint, create_engine, delete, select

from planner.cost import Cost
from planner.env import Observation, ScreenScores
from planner.errors import StudyError
from planner.secrets import redact, redact_data, redact_json
from planner.space import Allocation

_CLAIM_TRIES = 50  # lost races for a trial number, step number or seat before giving up
_HEARTBEAT_S = 10.0  # how often a driver says it is alive
_STALE_S = 60.0  # a driver silent this long is presumed dead (at once if its host is this one
# and its process is gone), and its running trials and seat are free to take over
_HOST = socket.gethostname()


class TrialStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"
    OVER_BUDGET = "over_budget"

    def is_finished(self) -> bool:
        return self is not TrialStatus.RUNNING


class _StudyRow(SQLModel, table=True):
    __tablename__ = "study"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    task_name: str
    task_path: str
    task_json: str
    budget: str
    budget_gpu_hours: float
    strategy: str
    seed: int
    created: float
    task_hash: str = ""  # sha256 of the task and its files (`planner.study.task_hash`)
    reasoner: str = ""  # the agent's reasoner (builtin, llm); "" for other strategies
    draws_json: str = ""  # [[arm, n], ...] (`planner.draws`); "" until its first run


class _TrialRow(SQLModel, table=True):
    __tablename__ = "trial"
    __table_args__ = (UniqueConstraint("study_id", "number"),
                      Index("ix_trial_claim", "study_id", "claim", unique=True))
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    number: int
    allocation_json: str
    status: str
    score: float | None = None
    train_gpu_hours: float
    inference_gpu_hours: float
    measured_json: str = "{}"
    source: str = ""
    started: float
    duration_s: float | None = None
    error: str | None = None
    claim: str | None = None  # sha256 of the allocation key (and fidelity); None once failed
    driver: str = ""  # the token of the driver running it (`Driver`)
    fidelity: float = 1.0  # the share of validation items evaluated (< 1: a screen; on a live
    # task also the share of its fine-tunes' steps trained: `planner.env.screens_training`)
    on_screen_items_json: str = ""  # a full trial's `ScreenScores`; "" when not asked for


class _SubtaskResultRow(SQLModel, table=True):
    __tablename__ = "subtask_result"
    id: int | None = Field(default=None, primary_key=True)
    trial_id: int = Field(foreign_key="trial.id", index=True)
    subtask: str
    score: float
    train_gpu_hours: float
    inference_gpu_hours: float


class _StepRow(SQLModel, table=True):
    __tablename__ = "agent_step"
    __table_args__ = (Index("ix_agent_step_number", "study_id", "number", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    number: int
    node: str
    payload_json: str
    created: float


class _InsightRow(SQLModel, table=True):
    __tablename__ = "insight"
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    step: int  # the agent step that produced it
    subtask: str
    kind: str
    text: str
    data_json: str = "{}"
    created: float


class _DriverRow(SQLModel, table=True):
    """A process driving a study: its seat (0, 1, ... among live drivers) and heartbeat."""

    __tablename__ = "driver"
    __table_args__ = (UniqueConstraint("study_id", "seat"),)
    id: int | None = Field(default=None, primary_key=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    token: str = Field(unique=True)
    seat: int
    host: str
    pid: int
    heartbeat: float


# Core statements of the hot paths (an agent trial reads and writes the store several times;
# the ORM's per-row objects and per-call statement building cost more than SQLite itself)
_TRIAL: Table = _TrialRow.__table__  # type: ignore[assignment]
_RESULT: Table = _SubtaskResultRow.__table__  # type: ignore[assignment]
_STEP: Table = _StepRow.__table__  # type: ignore[assignment]
_INSIGHT: Table = _InsightRow.__table__  # type: ignore[assignment]
_TRIALS_FROM = (_TRIAL.select().where(_TRIAL.c.study_id == bindparam("study"),
                                      _TRIAL.c.number >= bindparam("start"))
                .order_by(_TRIAL.c.number))
_RESULTS_FROM = (_RESULT.select().join_from(_RESULT, _TRIAL, _RESULT.c.trial_id == _TRIAL.c.id)
                 .where(_TRIAL.c.study_id == bindparam("study"),
                        _TRIAL.c.number >= bindparam("start"))
                 .order_by(_RESULT.c.id))
_CLAIMED = _TRIAL.select().with_only_columns(_TRIAL.c.id).where(
    _TRIAL.c.study_id == bindparam("study"), _TRIAL.c.claim == bindparam("claim"))
# SET: the columns given, and the duration since the trial started; returns its row id
_FINISH = (_TRIAL.update().where(_TRIAL.c.study_id == bindparam("study"),
                                 _TRIAL.c.number == bindparam("at"))
           .values(duration_s=bindparam("now") - _TRIAL.c.started).returning(_TRIAL.c.id))
_INSERT = {t.name: t.insert() for t in (_TRIAL, _RESULT, _STEP, _INSIGHT)}
_LAST_NUMBER = {t.name: t.select().with_only_columns(func.max(t.c.number)).where(
    t.c.study_id == bindparam("study")) for t in (_TRIAL, _STEP)}


@dataclass(frozen=True)
class Driver:
    """One process's attachment to a study (`Store.driving`): the token its trials carry,
    and its seat, the lowest free among live drivers (the agent's checkpoint thread)."""

    token: str
    seat: int


@dataclass(frozen=True)
class StudyRecord:
    name: str
    task_name: str
    task_path: str
    task: dict
    budget: str
    budget_gpu_hours: float
    strategy: str
    seed: int
    created: float
    task_hash: str = ""
    reasoner: str = ""
    draws: dict[tuple, int] | None = None
    """The samples its runs draw of each arm (`planner.draws`); None before its first run."""


@dataclass(frozen=True)
class TrialRecord:
    """One trial as stored: what was asked, what it cost, what it scored."""

    number: int
    allocation: Allocation
    status: TrialStatus
    score: float | None
    subtask_scores: Mapping[str, float]
    cost: Cost
    subtask_costs: Mapping[str, Cost] = field(default_factory=dict)
    measured: Mapping[str, float] = field(default_factory=dict)
    source: str = ""
    started: float = 0.0
    duration_s: float | None = None
    error: str | None = None
    driver: str = ""  # the token of the driver that ran it (`Driver`)
    fidelity: float = 1.0  # the share of validation items evaluated (< 1: a screen; on a live
    # task also the share of its fine-tunes' steps trained: `planner.env.screens_training`)
    on_screen_items: ScreenScores | None = None  # a full trial's scores on a screen's items

    @property
    def screen(self) -> bool:
        """Evaluated on a share of the validation items only: its score is an estimate,
        never the study's best."""
        return self.fidelity < 1.0

    @property
    def final(self) -> bool:
        """Finished, scored, and on every validation item: a result that may be the best."""
        return self.status is TrialStatus.OK and self.score is not None and not self.screen


@dataclass(frozen=True)
class StepRecord:
    number: int
    node: str
    payload: dict
    created: float


@dataclass(frozen=True)
class InsightRecord:
    """One statement of the agent's insight memory, with the step that produced it."""

    step: int
    subtask: str
    kind: str
    text: str
    data: dict
    created: float


class OutdatedStoreError(StudyError):
    """A planner database an older planner made, opened read-only (so not brought up to
    date)."""


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        with contextlib.suppress(sqlite3.OperationalError):  # read-only: left as it is
            cur.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL: a commit survives a crash of the process (the WAL is written
        # before it returns); only an OS crash or power cut can lose the last commits
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


class Store:
    """A study database.

    Args:
        url: any SQLAlchemy URL.
        create: create the database and its tables if missing (commands that write);
            False opens an existing planner database only, and changes nothing (commands
            that read), so a mistyped --db neither creates a file nor adds tables to a
            foreign database.
    """

    def __init__(self, url: str = "sqlite:///planner.db", *, create: bool = True) -> None:
        self.url = url
        self._ids: dict[str, int] = {}  # study name -> row id
        self._next: dict[tuple[str, str], int] = {}  # (table, study) -> its next number
        parsed = self._parse_url(url)
        shown = parsed.render_as_string(hide_password=True)
        sqlite = parsed.drivername.startswith("sqlite")
        # an in-memory SQLite database lives in one connection, shared by every session
        memory = sqlite and parsed.database in (None, "", ":memory:")
        if sqlite and not memory:
            path = self._check_sqlite_file(shown, Path(parsed.database or ""), create)
            if not create:  # read-only: no new file, schema or journal mode
                url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
        self.engine = self._engine(shown, url, memory)
        try:
            self._open(shown, create)
        except (SQLAlchemyError, TypeError, ValueError) as e:  # the driver refused to connect
            reason = redact(str(getattr(e, "orig", None) or e).splitlines()[0][:200])
            raise StudyError(f"--db {shown}: cannot open the database ({reason}); check the "
                             "URL, and that the server runs and the file is a database") from None

    _SQLITE_HEADER = b"SQLite format 3\x00"

    def _open(self, shown: str, create: bool) -> None:
        """Check that every study row can be read, then create planner's tables (or, read
        only, check that they exist)."""
        tables = set(inspect(self.engine).get_table_names())
        if "study" in tables:
            with self.engine.connect() as conn:
                rows = conn.exec_driver_sql("SELECT name, task_json, budget, strategy, seed, "
                                            "budget_gpu_hours, created FROM study")
                for row in rows.mappings():
                    if problem := self._damaged(row):
                        raise StudyError(f"--db {shown}: study {row['name']!r} is damaged "
                                         f"({problem}); delete its row, or pass another --db")
        if create:
            _migrate(self.engine)
        elif "study" not in tables or "trial" not in tables:
            raise StudyError(f"--db {shown}: not a planner database (no table 'study'); "
                             "pass the --db `planner optimize` used")
        elif set(SQLModel.metadata.tables) - tables or _missing_columns(self.engine):
            raise OutdatedStoreError(f"--db {shown}: made by an older planner; run `planner "
                                     "optimize TASK --resume` on one of its studies once to "
                                     "bring it up to date (this command changes nothing)")

    @staticmethod
    def _parse_url(url: str) -> URL:
        """`url` parsed; a `StudyError` if it is no SQLAlchemy URL."""
        try:
            return make_url(url)
        except ArgumentError:
            shown = url if len(url) <= 60 else url[:60] + "..."
            raise StudyError(f"--db {shown!r}: not a database URL; use e.g. "
                             "sqlite:///planner.db or postgresql://USER@HOST/DB") from None

    @classmethod
    def _check_sqlite_file(cls, shown: str, path: Path, create: bool) -> Path:
        """A SQLite file `Store` may open: an existing regular file holding a SQLite
        database, or (`create`) a new one in an existing, writable folder."""
        if not path.exists():
            if not create:
                raise StudyError(f"--db {shown}: no such database file; run `planner "
                                 "optimize` first, or pass the --db it used")
            if not path.parent.is_dir():
                raise StudyError(f"--db {shown}: folder {str(path.parent)!r} does not exist; "
                                 "create it, or pass another --db")
        elif not path.is_file():  # a directory, or a FIFO that would block the read
            raise StudyError(f"--db {shown}: not a regular file (a directory, FIFO or "
                             "device); pass the path of a database file")
        else:
            with path.open("rb") as f:
                header = f.read(len(cls._SQLITE_HEADER))
            if header and header != cls._SQLITE_HEADER:
                raise StudyError(f"--db {shown}: not a SQLite database file; pass the --db "
                                 "`planner optimize` wrote, or a new file")
            if create and (tables := cls._sqlite_tables(path)) and "study" not in tables:
                raise StudyError(f"--db {shown}: a SQLite file holding {len(tables)} other "
                                 "tables and no planner study; planner adds no tables to it; "
                                 "pass a new file, e.g. --db sqlite:///planner.db")
        if create and not (os.access(path.parent, os.W_OK)
                           and (not path.exists() or os.access(path, os.W_OK))):
            raise StudyError(f"--db {shown}: read-only (the file, or its folder where SQLite "
                             "keeps its journal); pass a --db in a writable folder")
        return path

    @staticmethod
    def _sqlite_tables(path: Path) -> set[str]:
        """The tables of a SQLite file, read without changing it (not even its journal
        mode)."""
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE "
                                               "type = 'table'")}
        except sqlite3.DatabaseError:
            return set()  # unreadable: opening it says why
        finally:
            conn.close()

    @staticmethod
    def _engine(shown: str, url: str, memory: bool) -> Engine:
        """An engine for `url`; a `StudyError` naming a missing driver or unknown dialect."""
        try:
            return create_engine(url, poolclass=StaticPool if memory else None,
                                 connect_args={"check_same_thread": False} if memory else {})
        except NoSuchModuleError:
            raise StudyError(f"--db {shown}: unknown kind of database; use e.g. "
                             "sqlite:///planner.db or postgresql://USER@HOST/DB") from None
        except ImportError as e:
            raise StudyError(f"--db {shown}: its driver ({e.name or 'a module'}) is not "
                             "installed; install it, or use sqlite:///planner.db") from None

    @staticmethod
    def _damaged(row: Mapping[str, Any]) -> str | None:
        """What makes a study row unreadable, or None."""
        try:
            task = json.loads(row["task_json"])
        except (TypeError, ValueError):
            return "its task is not JSON"
        if not isinstance(task, dict):
            return "its task is not a mapping"
        for name, kind in (("budget", str), ("strategy", str), ("seed", int),
                           ("budget_gpu_hours", float | int), ("created", float | int)):
            if not isinstance(row[name], kind):
                return f"its {name} has the wrong type"
        return None

    # studies -----------------------------------------------------------------------------
    def create_study(self, *, name: str, task_name: str, task_path: str, task: dict,
                     budget: str, budget_gpu_hours: float, strategy: str,
                     seed: int, task_hash: str = "", reasoner: str = "") -> StudyRecord:
        exists = StudyError(f"study {name!r} exists; pass --resume to continue it or "
                            "--study NEW_NAME to start another")
        with Session(self.engine) as s:
            if s.exec(select(_StudyRow).where(_StudyRow.name == name)).first():
                raise exists
            row = _StudyRow(name=name, task_name=task_name, task_path=task_path,
                            task_json=json.dumps(task), budget=budget,
                            budget_gpu_hours=budget_gpu_hours, strategy=strategy, seed=seed,
                            created=time.time(), task_hash=task_hash, reasoner=reasoner)
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # another process created it meanwhile
                raise exists from None
            s.refresh(row)
            return _study_record(row)

    def set_identity(self, name: str, *, task_hash: str, reasoner: str) -> None:
        """Record the task hash and reasoner a study goes on with."""
        with Session(self.engine) as s:
            s.exec(update(_StudyRow).where(_StudyRow.name == name)
                   .values(task_hash=task_hash, reasoner=reasoner))
            s.commit()

    def get_study(self, name: str) -> StudyRecord | None:
        with Session(self.engine) as s:
            row = s.exec(select(_StudyRow).where(_StudyRow.name == name)).first()
            return _study_record(row) if row else None

    def keep_draws(self, study: str, draws: Mapping[tuple, int]) -> dict[tuple, int]:
        """The study's draws (`planner.draws`): those stored, or else `draws`, stored now, so
        every later run and every other driver of the study draws the same samples."""
        with self.engine.begin() as conn:
            study_id = self._study_id(conn, study)
            conn.execute(update(_StudyRow).where(_StudyRow.id == study_id,
                                                 _StudyRow.draws_json == "")
                         .values(draws_json=json.dumps([[list(a), n] for a, n in draws.items()])))
            return _draws(conn.scalar(select(_StudyRow.draws_json)
                                      .where(_StudyRow.id == study_id)))

    def require_study(self, name: str) -> StudyRecord:
        study = self.get_study(name)
        if study is None:
            known = [st.name for st in self.studies()]
            raise StudyError(f"no study {name!r} in {self.url}; known studies: {known or 'none'}")
        return study

    def studies(self) -> list[StudyRecord]:
        with Session(self.engine) as s:
            return [_study_record(r) for r in s.exec(select(_StudyRow).order_by(_StudyRow.id))]

    def delete_study(self, name: str) -> None:
        """Delete a study with its trials, subtask results, agent steps, insights and
        drivers, in one transaction."""
        with Session(self.engine) as s:
            study_id = self._study_id(s, name)
            trial_ids = select(_TrialRow.id).where(_TrialRow.study_id == study_id)
            s.exec(delete(_SubtaskResultRow).where(_SubtaskResultRow.trial_id.in_(trial_ids)))
            for table in (_TrialRow, _StepRow, _InsightRow, _DriverRow):
                s.exec(delete(table).where(table.study_id == study_id))
            s.exec(delete(_StudyRow).where(_StudyRow.id == study_id))
            s.commit()
        self._ids.pop(name, None)
        self._next = {k: v for k, v in self._next.items() if k[1] != name}

    # trials ------------------------------------------------------------------------------
    def start_trial(self, study: str, allocation: Allocation, cost: Cost, *,
                    source: str = "", driver: str = "", max_trials: int | None = None,
                    fidelity: float = 1.0) -> int | None:
        """Claim the study's next trial number for `allocation` at `fidelity` and record
        the trial as running; return its number. None when the allocation is claimed
        already at that fidelity (a trial of it is running or finished other than failed)
        or the study holds `max_trials` trials. Atomic across processes: the unique (study,
        number) and (study, claim) indexes refuse a lost race, which looks again. The
        claim is looked up only then: a first insert that a taken claim refuses costs a
        retry, a look-up before every insert a query per trial."""
        key = allocation.key() if fidelity == 1.0 else f"{allocation.key()}@{fidelity!r}"
        claim = hashlib.sha256(key.encode()).hexdigest()
        allocation_json = json.dumps(allocation.to_dict())
        tries = 0

        def row(conn: Connection, study_id: int, number: int) -> dict | None:
            nonlocal tries
            tries += 1
            if max_trials is not None and number >= max_trials:
                return None
            if tries > 1 and conn.execute(_CLAIMED, {"study": study_id,
                                                     "claim": claim}).first() is not None:
                return None
            return {"allocation_json": allocation_json, "status": TrialStatus.RUNNING.value,
                    "train_gpu_hours": cost.train_gpu_hours,
                    "inference_gpu_hours": cost.inference_gpu_hours, "measured_json": "{}",
                    "source": source, "started": time.time(), "claim": claim,
                    "driver": driver, "fidelity": fidelity}

        return self._numbered(study, _TRIAL, row)

    def adopt_trial(self, study: str, number: int, driver: str) -> bool:
        """Make `driver` the owner of a running trial whose driver is gone (crashed); False
        when that driver lives, the trial finished, or another driver adopted it first."""
        with Session(self.engine) as s:
            row = self._trial_row(s, study, number)
            if row.status != TrialStatus.RUNNING or row.driver in self._live(s, row.study_id):
                return False
            taken = s.exec(update(_TrialRow).where(
                _TrialRow.id == row.id, _TrialRow.driver == row.driver,
                _TrialRow.status == TrialStatus.RUNNING).values(driver=driver))
            s.commit()
            return taken.rowcount == 1

    def finish_trial(self, study: str, number: int, status: TrialStatus, *,
                     observation: Observation | None = None,
                     subtask_costs: Mapping[str, Cost] | None = None,
                     error: str | None = None) -> None:
        """Store a trial's outcome and its per-subtask results in one transaction."""
        with self.engine.begin() as conn:
            study_id = self._study_id(conn, study)
            values: dict[str, Any] = {"status": status.value,
                                      "error": None if error is None else redact(error)}
            if status is TrialStatus.FAILED:
                values["claim"] = None  # a failed allocation may be tried again
            if observation is not None:
                values["score"] = observation.score
                values["measured_json"] = json.dumps(dict(observation.measured))
                if (on := observation.on_screen_items) is not None:
                    values["on_screen_items_json"] = json.dumps(asdict(on))
            trial_id = conn.execute(_FINISH, {**values, "study": study_id, "at": number,
                                              "now": time.time()}).scalar_one()
            if observation is not None:
                costs = subtask_costs or {}
                results = [{"trial_id": trial_id, "subtask": name, "score": score,
                            "train_gpu_hours": c.train_gpu_hours,
                            "inference_gpu_hours": c.inference_gpu_hours}
                           for name, score in observation.subtask_scores.items()
                           for c in [costs.get(name, Cost(0.0, 0.0))]]
                if results:
                    conn.execute(_INSERT[_RESULT.name], results)

    def trials(self, study: str, start: int = 0) -> list[TrialRecord]:
        """The study's trials numbered `start` or more, in number order."""
        with self.engine.connect() as conn:
            params = {"study": self._study_id(conn, study), "start": start}
            rows = conn.execute(_TRIALS_FROM, params).all()
            results: dict[int, list[Any]] = {}
            if rows:
                for r in conn.execute(_RESULTS_FROM, params):
                    results.setdefault(r.trial_id, []).append(r)
            return [_trial_record(r, results.get(r.id, [])) for r in rows]

    # agent steps -------------------------------------------------------------------------
    def add_step(self, study: str, node: str, payload: dict,
                 insights: Sequence[dict] = ()) -> int:
        """Store an agent step, and the `insights` it made (as `add_insights`), in one
        transaction; return the step's number."""
        def row(conn: Connection, study_id: int, number: int) -> dict:
            if insights:
                conn.execute(_INSERT[_INSIGHT.name], _insight_rows(study_id, number, insights))
            return {"node": node, "payload_json": redact_json(payload), "created": time.time()}

        number = self._numbered(study, _STEP, row)
        assert number is not None  # the row above is never None
        return number

    def steps(self, study: str) -> list[StepRecord]:
        with Session(self.engine) as s:
            study_id = self._study_id(s, study)
            rows = s.exec(select(_StepRow).where(_StepRow.study_id == study_id)
                          .order_by(_StepRow.number))
            return [StepRecord(r.number, r.node, json.loads(r.payload_json), r.created)
                    for r in rows]

    # insights ----------------------------------------------------------------------------
    def add_insights(self, study: str, step: int, insights: list[dict]) -> None:
        """Store insights (`subtask`, `kind`, `text`, optional `data`) made at `step`."""
        with self.engine.begin() as conn:
            conn.execute(_INSERT[_INSIGHT.name],
                         _insight_rows(self._study_id(conn, study), step, insights))

    def insights(self, study: str) -> list[InsightRecord]:
        with Session(self.engine) as s:
            study_id = self._study_id(s, study)
            rows = s.exec(select(_InsightRow).where(_InsightRow.study_id == study_id)
                          .order_by(_InsightRow.id))
            return [InsightRecord(r.step, r.subtask, r.kind, r.text, json.loads(r.data_json),
                                  r.created) for r in rows]

    # drivers -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def driving(self, study: str) -> Iterator[Driver]:
        """Attach this process to the study for the block: a seat, and a heartbeat that
        tells other drivers its running trials are not a crash's leftovers."""
        driver = self._attach(study)
        stop = threading.Event()
        # one shared connection (in-memory SQLite) is never written from two threads
        beat = None if isinstance(self.engine.pool, StaticPool) else threading.Thread(
            target=self._beat, args=(driver.token, stop), daemon=True)
        if beat:
            beat.start()
        try:
            yield driver
        finally:
            stop.set()
            if beat:
                beat.join()
            with Session(self.engine) as s:
                s.exec(delete(_DriverRow).where(_DriverRow.token == driver.token))
                s.commit()

    def live_drivers(self, study: str) -> set[str]:
        """The tokens of the drivers attached to the study and alive."""
        with Session(self.engine) as s:
            return self._live(s, self._study_id(s, study))

    def _attach(self, study: str) -> Driver:
        """Take the lowest seat no live driver holds (a dead driver's row is removed)."""
        token = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        seat = 0
        for _ in range(_CLAIM_TRIES):
            with Session(self.engine) as s:
                study_id = self._study_id(s, study)
                holder = s.exec(select(_DriverRow).where(_DriverRow.study_id == study_id,
                                                         _DriverRow.seat == seat)).first()
                if holder is not None and _alive(holder):
                    seat += 1
                    continue
                if holder is not None:
                    s.exec(delete(_DriverRow).where(_DriverRow.id == holder.id))
                s.add(_DriverRow(study_id=study_id, token=token, seat=seat, host=_HOST,
                                 pid=os.getpid(), heartbeat=time.time()))
                try:
                    s.commit()
                except IntegrityError:  # another driver took the seat: look again
                    s.rollback()
                    continue
                return Driver(token, seat)
        raise StudyError(f"study {study!r}: no free driver seat after {_CLAIM_TRIES} tries")

    def _beat(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(_HEARTBEAT_S):
            # a failed beat (database busy) is retried at the next one
            with contextlib.suppress(SQLAlchemyError), Session(self.engine) as s:
                s.exec(update(_DriverRow).where(_DriverRow.token == token)
                       .values(heartbeat=time.time()))
                s.commit()

    # helpers -----------------------------------------------------------------------------
    def _numbered(self, study: str, table: Table,
                  row: Callable[[Connection, int, int], dict | None]) -> int | None:
        """Insert the values `row(connection, study_id, number)` gives under the study's
        next number in `table`, in one transaction with whatever `row` wrote; return the
        number, or None when `row` gives None. A number (or claim) another process took
        meanwhile fails the insert, which rolls back and looks again.

        The number is first guessed as one past the last this store inserted: numbers are
        dense, so the guess is free exactly when it is the next one, and a taken guess
        fails like a lost race (which reads the last number) instead of costing a query
        on every insert."""
        key = (table.name, study)
        for _ in range(_CLAIM_TRIES):
            guess = self._next.pop(key, None)
            try:
                with self.engine.begin() as conn:
                    study_id = self._study_id(conn, study)
                    number = guess
                    if number is None:
                        last = conn.execute(_LAST_NUMBER[table.name],
                                            {"study": study_id}).scalar()
                        number = 0 if last is None else last + 1
                    values = row(conn, study_id, number)
                    if values is None:
                        return None
                    conn.execute(_INSERT[table.name], {**values, "study_id": study_id,
                                                  "number": number})
            except IntegrityError:
                if guess is None:
                    time.sleep(random.uniform(0.0, 0.01))  # let the winner finish
                continue
            self._next[key] = number + 1
            return number
        raise StudyError(f"study {study!r}: no free {table.name} number after "
                         f"{_CLAIM_TRIES} tries; is something else writing to {self.url}?")

    def _live(self, s: Session, study_id: int) -> set[str]:
        rows = s.exec(select(_DriverRow).where(_DriverRow.study_id == study_id))
        return {r.token for r in rows if _alive(r)}

    def _study_id(self, s: Session | Connection, name: str) -> int:
        """The study's row id (remembered: a study keeps its id until deleted)."""
        if name not in self._ids:
            row = s.scalar(select(_StudyRow.id).where(_StudyRow.name == name))
            if row is None:
                raise StudyError(f"no study {name!r} in {self.url}")
            self._ids[name] = row
        return self._ids[name]

    def _trial_row(self, s: Session, study: str, number: int) -> _TrialRow:
        study_id = self._study_id(s, study)
        return s.exec(select(_TrialRow).where(_TrialRow.study_id == study_id,
                                              _TrialRow.number == number)).one()


_ADDED_COLUMNS = {  # columns newer than the first planner databases, as DDL
    "study": {"task_hash": "VARCHAR NOT NULL DEFAULT ''",
              "reasoner": "VARCHAR NOT NULL DEFAULT ''",
              "draws_json": "VARCHAR NOT NULL DEFAULT ''"},
    "trial": {"claim": "VARCHAR", "driver": "VARCHAR NOT NULL DEFAULT ''",
              "fidelity": "FLOAT NOT NULL DEFAULT 1.0",
              "on_screen_items_json": "VARCHAR NOT NULL DEFAULT ''"},
}


def _missing_columns(bind: Engine | Connection) -> list[tuple[str, str]]:
    """(table, column) of each of `_ADDED_COLUMNS` the database lacks."""
    tables = inspect(bind)
    missing = []
    for table, columns in _ADDED_COLUMNS.items():
        have = {c["name"] for c in tables.get_columns(table)}
        missing += [(table, name) for name in columns if name not in have]
    return missing


def _migrate(engine: Engine) -> None:
    """Create the tables, or bring a database an older planner made up to date: add the
    columns and unique indexes it lacks (old rows keep no claim: their allocations are in
    every driver's history). One process at a time, so drivers starting together on a new
    database do not race."""
    with engine.begin() as conn:
        _lock_schema(conn)
        SQLModel.metadata.create_all(conn)
        for table, name in _missing_columns(conn):
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} "
                                 f"{_ADDED_COLUMNS[table][name]}")
        for table in (_TrialRow, _StepRow):
            for index in table.__table__.indexes:
                index.create(conn, checkfirst=True)


def _lock_schema(conn: Connection) -> None:
    """Hold the database's schema for the transaction: an advisory lock on PostgreSQL, a
    write lock on SQLite."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7436351)")  # planner's schema
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _alive(driver: _DriverRow) -> bool:
    """Heard of lately and, on this host, its process still there."""
    if time.time() - driver.heartbeat >= _STALE_S:
        return False
    if driver.host != _HOST:
        return True
    try:
        os.kill(driver.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _insight_rows(study_id: int, step: int, insights: Sequence[dict]) -> list[dict]:
    """Insight rows to insert, their text and data redacted."""
    now = time.time()
    # one pass of `redact_data` over every text and data (each pass reads the environment)
    clean = redact_data([[i["text"], i.get("data", {})] for i in insights])
    return [{"study_id": study_id, "step": step, "subtask": i["subtask"], "kind": i["kind"],
             "text": text, "data_json": json.dumps(data, default=lambda o: redact(str(o))),
             "created": now} for i, (text, data) in zip(insights, clean, strict=True)]


def _study_record(r: _StudyRow) -> StudyRecord:
    return StudyRecord(r.name, r.task_name, r.task_path, json.loads(r.task_json), r.budget,
                       r.budget_gpu_hours, r.strategy, r.seed, r.created, r.task_hash,
                       r.reasoner, _draws(r.draws_json) if r.draws_json else None)


def _draws(text: str) -> dict[tuple, int]:
    return {tuple(arm): n for arm, n in json.loads(text)}


def _trial_record(r: Any, results: list[Any]) -> TrialRecord:
    """A trial row (and its subtask result rows) as a record."""
    return TrialRecord(
        number=r.number,
        allocation=Allocation.from_dict(json.loads(r.allocation_json)),
        status=TrialStatus(r.status),
        score=r.score,
        subtask_scores={x.subtask: x.score for x in results},
        cost=Cost(r.train_gpu_hours, r.inference_gpu_hours),
        subtask_costs={x.subtask: Cost(x.train_gpu_hours, x.inference_gpu_hours)
                       for x in results},
        measured=json.loads(r.measured_json),
        source=r.source,
        started=r.started,
        duration_s=r.duration_s,
        error=r.error,
        driver=r.driver,
        fidelity=r.fidelity,
        on_screen_items=(_screen_scores(json.loads(r.on_screen_items_json))
                         if r.on_screen_items_json else None),
    )


def _screen_scores(stored: dict | list) -> ScreenScores:
    """A trial's scores on a screen's items as stored: named fields, or the positional list
    [fidelity, score, subtask scores] that stores written before 2026-12-05 10:38 hold."""
    return ScreenScores(*stored) if isinstance(stored, list) else ScreenScores(**stored)
