"""Persistence: studies, trials, per-subtask results, agent steps and insights (SQLModel).

Only this module imports sqlmodel; callers get frozen records back. SQLite (WAL, busy
timeout) by default; any SQLAlchemy URL works. Every write commits at once, so a crash
loses at most the trial that was running, which a resumed study runs again.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, UniqueConstraint, create_engine, select

from planner.cost import Cost
from planner.env import Observation
from planner.errors import StudyError
from planner.space import Allocation


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


class _TrialRow(SQLModel, table=True):
    __tablename__ = "trial"
    __table_args__ = (UniqueConstraint("study_id", "number"),)
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


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        with contextlib.suppress(sqlite3.OperationalError):  # read-only: left as it is
            cur.execute("PRAGMA journal_mode=WAL")
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
        # an in-memory SQLite database lives in one connection, shared by every session
        memory = url in ("sqlite://", "sqlite:///:memory:")
        parsed = make_url(url)
        sqlite_file = parsed.drivername.startswith("sqlite") and not memory
        if sqlite_file and not create:  # read-only: no new file, schema or journal mode
            path = Path(parsed.database or "")
            if not path.is_file():
                raise StudyError(f"--db {url}: no such database file; run `planner optimize` "
                                 "first, or pass the --db it used")
            url = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
        self.engine = create_engine(url, poolclass=StaticPool if memory else None,
                                    connect_args={"check_same_thread": False} if memory else {})
        if create:
            SQLModel.metadata.create_all(self.engine)
            return
        missing = sorted(set(SQLModel.metadata.tables)
                         - set(inspect(self.engine).get_table_names()))
        if missing:
            raise StudyError(f"--db {self.url}: not a planner database (no table "
                             f"{missing[0]!r}); pass the --db `planner optimize` used")

    # studies -----------------------------------------------------------------------------
    def create_study(self, *, name: str, task_name: str, task_path: str, task: dict,
                     budget: str, budget_gpu_hours: float, strategy: str,
                     seed: int) -> StudyRecord:
        with Session(self.engine) as s:
            if s.exec(select(_StudyRow).where(_StudyRow.name == name)).first():
                raise StudyError(f"study {name!r} exists; pass --resume to continue it or "
                                 "--study NEW_NAME to start another")
            row = _StudyRow(name=name, task_name=task_name, task_path=task_path,
                            task_json=json.dumps(task), budget=budget,
                            budget_gpu_hours=budget_gpu_hours, strategy=strategy, seed=seed,
                            created=time.time())
            s.add(row)
            s.commit()
            s.refresh(row)
            return _study_record(row)

    def get_study(self, name: str) -> StudyRecord | None:
        with Session(self.engine) as s:
            row = s.exec(select(_StudyRow).where(_StudyRow.name == name)).first()
            return _study_record(row) if row else None

    def require_study(self, name: str) -> StudyRecord:
        study = self.get_study(name)
        if study is None:
            known = [st.name for st in self.studies()]
            raise StudyError(f"no study {name!r} in {self.url}; known studies: {known or 'none'}")
        return study

    def studies(self) -> list[StudyRecord]:
        with Session(self.engine) as s:
            return [_study_record(r) for r in s.exec(select(_StudyRow).order_by(_StudyRow.id))]

    # trials ------------------------------------------------------------------------------
    def start_trial(self, study: str, allocation: Allocation, cost: Cost, *,
                    source: str = "") -> int:
        """Record a trial as running; return its number."""
        with Session(self.engine) as s:
            study_id = self._study_id(s, study)
            last = s.exec(select(_TrialRow.number).where(_TrialRow.study_id == study_id)
                          .order_by(_TrialRow.number.desc())).first()
            number = 0 if last is None else last + 1
            s.add(_TrialRow(study_id=study_id, number=number,
                            allocation_json=json.dumps(allocation.to_dict()),
                            status=TrialStatus.RUNNING, train_gpu_hours=cost.train_gpu_hours,
                            inference_gpu_hours=cost.inference_gpu_hours, source=source,
                            started=time.time()))
            s.commit()
            return number

    def finish_trial(self, study: str, number: int, status: TrialStatus, *,
                     observation: Observation | None = None,
                     subtask_costs: Mapping[str, Cost] | None = None,
                     error: str | None = None) -> None:
        """Store a trial's outcome and its per-subtask results in one transaction."""
        with Session(self.engine) as s:
            row = self._trial_row(s, study, number)
            row.status = status
            row.duration_s = time.time() - row.started
            row.error = error
            if observation is not None:
                row.score = observation.score
                row.measured_json = json.dumps(dict(observation.measured))
                costs = subtask_costs or {}
                for name, score in observation.subtask_scores.items():
                    c = costs.get(name, Cost(0.0, 0.0))
                    s.add(_SubtaskResultRow(trial_id=row.id, subtask=name, score=score,
                                            train_gpu_hours=c.train_gpu_hours,
                                            inference_gpu_hours=c.inference_gpu_hours))
            s.add(row)
            s.commit()

    def trials(self, study: str) -> list[TrialRecord]:
        with Session(self.engine) as s:
            study_id = self._study_id(s, study)
            rows = s.exec(select(_TrialRow).where(_TrialRow.study_id == study_id)
                          .order_by(_TrialRow.number)).all()
            results: dict[int, list[_SubtaskResultRow]] = {}
            ids = [r.id for r in rows]
            if ids:
                for r in s.exec(select(_SubtaskResultRow)
                                .where(_SubtaskResultRow.trial_id.in_(ids))):
                    results.setdefault(r.trial_id, []).append(r)
            return [_trial_record(r, results.get(r.id, [])) for r in rows]

    # agent steps -------------------------------------------------------------------------
    def add_step(self, study: str, node: str, payload: dict) -> int:
        with Session(self.engine) as s:
            study_id = self._study_id(s, study)
            last = s.exec(select(_StepRow.number).where(_StepRow.study_id == study_id)
                          .order_by(_StepRow.number.desc())).first()
            number = 0 if last is None else last + 1
            s.add(_StepRow(study_id=study_id, number=number, node=node,
                           payload_json=json.dumps(payload, default=str), created=time.time()))
            s.commit()
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
        with Session(self.engine) as s:
            study_id = self._study_id(s, study)
            now = time.time()
            for i in insights:
                s.add(_InsightRow(study_id=study_id, step=step, subtask=i["subtask"],
                                  kind=i["kind"], text=i["text"],
                                  data_json=json.dumps(i.get("data", {}), default=str),
                                  created=now))
            s.commit()

    def insights(self, study: str) -> list[InsightRecord]:
        with Session(self.engine) as s:
            study_id = self._study_id(s, study)
            rows = s.exec(select(_InsightRow).where(_InsightRow.study_id == study_id)
                          .order_by(_InsightRow.id))
            return [InsightRecord(r.step, r.subtask, r.kind, r.text, json.loads(r.data_json),
                                  r.created) for r in rows]

    # helpers -----------------------------------------------------------------------------
    def _study_id(self, s: Session, name: str) -> int:
        row = s.exec(select(_StudyRow.id).where(_StudyRow.name == name)).first()
        if row is None:
            raise StudyError(f"no study {name!r} in {self.url}")
        return row

    def _trial_row(self, s: Session, study: str, number: int) -> _TrialRow:
        study_id = self._study_id(s, study)
        return s.exec(select(_TrialRow).where(_TrialRow.study_id == study_id,
                                              _TrialRow.number == number)).one()


def _study_record(r: _StudyRow) -> StudyRecord:
    return StudyRecord(r.name, r.task_name, r.task_path, json.loads(r.task_json), r.budget,
                       r.budget_gpu_hours, r.strategy, r.seed, r.created)


def _trial_record(r: _TrialRow, results: list[_SubtaskResultRow]) -> TrialRecord:
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
    )
