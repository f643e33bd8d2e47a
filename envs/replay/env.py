"""Replay environment: answers allocations from recorded per-item results.

Each replay subtask points at a table (CSV, TSV, JSON Lines or JSON, any gzipped, or Parquet) with
one row per (choice, item) holding sample counts (`n_samples`, `n_correct`), or one row per
sample holding `correct` (1 or 0, or a score between for partial credit) and, optionally,
the sample's final `answer`. A choice is a (model, method, mixture) of the search space;
its rows are those whose `choices` columns hold its values. A plan's subtask score is the
mean over the choice's items of the expected score of its aggregator with n samples, each
from N recorded samples:

- `oracle` (best-of-n with a perfect verifier, i.e. pass@n): 1 - C(N-c, n)/C(N, n), the
  unbiased estimator of Chen et al. 2021 with c of the N samples correct; with partial
  credit, the expected best score of n of the N samples (`expected_best_of_k`);
- `majority` (the most frequent answer of n, ties broken at random; needs `answer`): its
  exact expectation over the n-subsets of the N samples (`tools.evaluate.
  expected_majority_at_k`); answers are compared as text, and a sample with no answer (an
  empty cell) abstains, as in a live vote: it never wins (n such samples score as the
  table marks them);
- `first` (one answer, whatever n): c/N.

Inference cost per sample comes from the choice's own rows where the table has cost
columns (FLOPs; tokens, priced at 2N each; USD, converted at the hardware's price per
GPU-hour), else from the cost model (2N per prompt and output token declared in task.yaml).

A query must pass every stage, so the end-to-end score is the product of stage scores
(stages are drawn from independent item sets).

A screen (`fidelity` < 1) scores each stage on the first ceil(fidelity * N) of its items in
a fixed shuffled order (seeded by the subtask's name), the same items for every choice; a
choice recorded on none of them (pythia-12b on 2M tokens has 9 of MATH's 128 problems) on
the first ceil(fidelity * M) of its own M in that order.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import stat
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from planner.cost import Calibration
from planner.draws import Draws
from planner.env import Observation, ScreenScores, check_fidelity, check_screen, screened
from planner.errors import SpecError
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import ReplaySpec, SubtaskSpec, TaskSpec
from tools.evaluate import expected_best_of_k, expected_majority_at_k, pass_at_k

AGGREGATORS = ("oracle", "first", "majority")
USES_N = ("oracle", "majority")  # aggregators whose score depends on n
FIELDS = ("model", "method", "mixture")  # the plan fields that pick a table's rows
MAX_RECORDED = 10**7  # samples recorded per item (the largest table has 3 million)
NO_ANSWER = -1  # the code of a sample with no answer (an empty cell): it abstains in a vote


@dataclass(frozen=True)
class _Choice:
    model: str
    method: str
    mixture: str

    def label(self) -> str:
        return f"{self.model}/{self.method}/{self.mixture}"


@dataclass(frozen=True)
class _Outcomes:
    """One choice's recorded outcomes, per item (`items`, the item column as text): N
    samples, c correct (their summed scores) and, where the table has answers, every
    sample's (answer, score) for the vote, the answers coded as integers (equal codes: equal
    text)."""

    items: np.ndarray
    n: np.ndarray
    c: np.ndarray
    votes: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    scores: tuple[np.ndarray, ...] = ()  # each sample's score, where some has partial credit


class _Curves:
    """One choice's scores under each aggregator and n: each item's expected score and
    their mean, computed when first asked for (a majority vote's exact expectation costs
    about a millisecond per item at n = 64, and a search reads few of a table's choices),
    with each item's place in the screening order (`rank`)."""

    def __init__(self, outcomes: _Outcomes, rank: np.ndarray) -> None:
        self.outcomes = outcomes
        self.rank = rank
        self._per_item: dict[tuple[str, int], np.ndarray] = {}

    def per_item(self, aggregator: str, n: int) -> np.ndarray:
        """(items,) each item's expected score with n samples (module docstring)."""
        key = (aggregator, n)
        if key not in self._per_item:
            self._per_item[key] = _item_scores(aggregator, n, self.outcomes)
        return self._per_item[key]

    def mean(self, aggregator: str, n: int) -> float:
        return float(np.mean(self.per_item(aggregator, n)))


_DELIMITED = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
_JSON = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
_FORMATS = (*_DELIMITED, *_JSON, ".parquet")


def read_table(path: Path, text: Sequence[str] = (), samples: Sequence[str] = (),
               columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a CSV, TSV, JSON Lines or JSON table (each optionally gzipped) or a Parquet one;
    `text` columns as strings (a missing value is the empty string). In JSON and Parquet, the
    `samples` columns may hold a list per row, a value per sample: such a table comes back
    with a row per sample (`_per_sample_rows`). Where `columns` are given, no others are
    kept (a Parquet file reads no others: an item's completions beside their correctness
    can be most of a dump), and one the file lacks is a `SpecError` naming the file's. A
    file that cannot be read is a `SpecError` saying what is wrong in words: it never
    quotes the file's contents."""
    if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or device would block the read
        raise SpecError(f"{path}: not a regular file; point the table at a file")
    name = path.name.lower()
    columns = None if columns is None else list(dict.fromkeys(columns))
    if name.endswith(".parquet"):
        table = _per_sample_rows(path, _read_parquet(path, columns), samples)
    elif name.endswith(_DELIMITED):
        table = _kept(path, _read_csv(path, text), columns)
    elif name.endswith(_JSON):
        table = _per_sample_rows(path, _kept(path, _read_json(path), columns), samples)
    else:
        raise SpecError(f"{path}: unknown table format; save it as {', '.join(_FORMATS[:-1])} "
                        f"or {_FORMATS[-1]}")
    if table.empty:
        raise SpecError(f"{path}: the table has no rows; record one row per choice and item")
    for column in text:
        if column in table.columns:
            table[column] = table[column].fillna("").astype(str)
    return table


def _read_csv(path: Path, text: Sequence[str]) -> pd.DataFrame:
    """A comma-separated table, or tab-separated where the name says `.tsv`."""
    gz = path.name.lower().endswith(".gz")
    form, sep = ("TSV", "\t") if path.name.lower().endswith((".tsv", ".tsv.gz")) else ("CSV", ",")
    try:
        with warnings.catch_warnings():  # a value past the header's fields would be dropped
            warnings.simplefilter("error", pd.errors.ParserWarning)
            # no index inferred from rows longer than the header: a trailing separator on
            # each row reads as it is meant, an extra value is refused below
            return pd.read_csv(path, dtype=dict.fromkeys(text, str), encoding="utf-8",
                               sep=sep, index_col=False,
                               compression="gzip" if gz else None)
    except pd.errors.ParserWarning:
        raise SpecError(f"{path}: {_longer_than_header(path, sep)}; quote a text that holds "
                        "the separator, or fix the table") from None
    except pd.errors.EmptyDataError:
        raise SpecError(f"{path}: the table is empty; write a header and one row per choice "
                        "and item") from None
    except pd.errors.ParserError as e:
        ragged = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
        what = (f"line {ragged[2]} has {ragged[3]} fields but the header has {ragged[1]}"
                if ragged else f"not a well-formed {form} table")
        raise SpecError(f"{path}: {what}; fix the table") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text (a binary file, or another encoding); save "
                        f"the table as UTF-8 {form}") from None
    except (OSError, EOFError, zlib.error) as e:
        if not gz:
            raise SpecError(f"{path}: cannot be read ({e.__class__.__name__}); check the "
                            "file") from None
        raise SpecError(f"{path}: not valid gzip data; a .{form.lower()}.gz table must be "
                        f"gzip-compressed {form} (rename a plain {form} to .{form.lower()})"
                        ) from None


def _longer_than_header(path: Path, sep: str) -> str:
    """Which row is longer than the header, in words."""
    longer = "a row has more fields than the header"
    try:
        gz = path.name.lower().endswith(".gz")
        with (gzip.open(path, "rt", encoding="utf-8", newline="") if gz
              else path.open(encoding="utf-8", newline="")) as f:
            rows = csv.reader(f, delimiter=sep)
            header = len(next(rows))
            return next((f"line {rows.line_num} has {len(row)} fields but the header has "
                         f"{header}" for row in rows if len(row) > header), longer)
    except (csv.Error, UnicodeDecodeError, OSError, EOFError, zlib.error):  # a field past
        return longer  # the csv module's size limit, say: the row stays unnamed


def _kept(path: Path, table: pd.DataFrame, columns: Sequence[str] | None) -> pd.DataFrame:
    """`table`'s `columns` alone (all where None); one it lacks is a `SpecError`. An empty
    table (a JSON `[]` has no columns either) is left to be refused for its rows."""
    if columns is None or table.empty:
        return table
    _require(path, columns, table.columns)
    return table[list(columns)]


def _require(path: Path, columns: Sequence[str], names: Sequence[str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise SpecError(f"{path}: the table lacks columns {missing}; {_columns(names)}")


def _parquet_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=list(columns))
    except ValueError:  # a column it lacks, or no Parquet at all: read it whole to tell
        _require(path, columns, pd.read_parquet(path).columns)
        raise


def _per_sample_rows(path: Path, table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`table` with a row per sample where its `columns` hold a list per row (an item's
    samples, as Large Language Monkeys' release keeps them: `is_corrects: [true, false, ...]`
    beside `samples: [...]`); the lists of one row must be equally long. Each sample's row
    keeps its file row as its index, which errors name. Other lists and objects are read
    as their JSON text (`_nested_as_text`), once per row before its samples multiply it."""
    lists = [c for c in columns if c in table.columns and table[c].map(_is_list).any()]
    if not lists:
        return _nested_as_text(table, table.columns)
    for column in lists:
        _refuse(path, table, column, ~table[column].map(_is_list).to_numpy(),
                "holds no list, where other rows hold one (a list per row, a value per "
                "sample)")
    size = table[lists[0]].map(len).to_numpy()
    for column in lists[1:]:
        _refuse(path, table, column, table[column].map(len).to_numpy() != size,
                f"holds a list of another length than column {lists[0]!r} (a value per "
                "sample in each)")
    table = _nested_as_text(table, [c for c in table.columns if c not in lists])
    return _nested_as_text(table.explode(lists), lists)


def _is_list(value: object) -> bool:
    return isinstance(value, list | np.ndarray)


def _nested_as_text(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Cells of `columns` holding lists or objects (a harness's `"resps": [["42"]]`, an item
    id written as `{"doc_id": 3}`) as their JSON text, which compares and groups as
    written."""
    def as_text(value: object) -> object:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, list | dict):
            return json.dumps(value, sort_keys=True, default=str)
        return value

    for column in columns:
        if pd.api.types.is_object_dtype(table[column]):
            table[column] = table[column].map(as_text)
    return table


def _read_json(path: Path) -> pd.DataFrame:
    """JSON Lines (one object per line: an evaluation harness's per-sample log) or, for
    `.json`, one array of such objects (or pandas' `to_json` column form); values as written:
    no guessed types, every float to its last digit."""
    lines = path.name.lower().endswith((".jsonl", ".jsonl.gz"))
    form = "JSON Lines" if lines else "JSON"
    gz = path.name.lower().endswith(".gz")
    try:
        return pd.read_json(path, lines=lines, dtype=False, precise_float=True,
                            encoding="utf-8-sig",  # a byte-order mark, as some editors write
                            compression="gzip" if gz else None)
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text (a binary file, or another encoding); save "
                        f"the table as UTF-8 {form}") from None
    except (OSError, EOFError, zlib.error) as e:
        suffix = ".jsonl.gz" if lines else ".json.gz"
        what = (f"not valid gzip data; a {suffix} table must be gzip-compressed {form}"
                if gz else f"cannot be read ({e.__class__.__name__}); check the file")
        raise SpecError(f"{path}: {what}") from None
    except ValueError:
        shape = ("one JSON object per line, the same keys in each" if lines else
                 "an array of objects, one per row, with the same keys")
        raise SpecError(f"{path}: not well-formed {form} ({shape}); fix the table") from None


def _read_parquet(path: Path, columns: Sequence[str] | None) -> pd.DataFrame:
    """The file's `columns` (all where None), and no others read."""
    try:
        return pd.read_parquet(path) if columns is None else _parquet_columns(path, columns)
    except ImportError:
        raise SpecError(f"{path}: reading Parquet needs pyarrow, which is not installed; "
                        "`pip install pyarrow`, or save the table as .csv.gz") from None
    except (ValueError, OSError, TypeError):
        raise SpecError(f"{path}: not a readable Parquet file; save the table as Parquet or "
                        ".csv.gz") from None


class ReplayEnvironment:
    """Looks allocations up in recorded tables; a choice's scores are computed when first
    asked for."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.space = SearchSpace(spec)
        self._scores: dict[tuple[str, _Choice], _Curves] = {}
        # (subtask, model, method, mixture) -> FLOPs per sample
        self._flops: dict[tuple[str, str, str, str], float] = {}
        self.items: dict[str, int] = {}  # subtask -> recorded items (the validation set size)
        for s in spec.subtasks:
            assert s.replay is not None  # guaranteed by spec validation for replay tasks
            self._load(s.name, s.replay)

    def _load(self, subtask: str, rs: ReplaySpec) -> None:
        where = f"{self.spec.source}: subtasks.{subtask}.replay"
        sub = self.spec.subtask(subtask)
        _check_aggregators(where, sub, rs)
        path = self.spec.path(rs.table)
        outcome = [rs.correct] if rs.correct else [rs.n_samples, rs.n_correct]
        costs = [rs.flops_per_sample, rs.input_tokens, rs.output_tokens, rs.usd_per_sample]
        needed = [c for c in (*rs.choices.values(), rs.item, *outcome, rs.answer, *costs) if c]
        table = read_table(path, [rs.answer] if rs.answer else [],
                           [c for c in (rs.correct, rs.answer) if c], needed)
        _refuse(path, table, rs.item, table[rs.item].isna().to_numpy(),
                "is empty (each row names the item it scores)")
        if rs.correct:
            table[rs.correct] = _truths_as_numbers(table[rs.correct])
        _check_numbers(path, table, rs)
        choices = list(self._choices(subtask))
        _check_choice_columns(where, rs, choices)
        ids = np.sort(table[rs.item].astype(str).unique())
        self.items[subtask] = len(ids)
        order = np.random.default_rng(zlib.crc32(subtask.encode())).permutation(len(ids))
        rank = dict(zip(ids[order], range(len(ids)), strict=True))  # item -> place in a screen
        by_choice = _rows_by_choice(table, rs)
        for choice in choices:
            rows = by_choice.get(tuple(getattr(choice, field) for field in rs.choices))
            if rows is None:
                raise SpecError(f"{where}: no rows for {choice.label()}; "
                                + _no_rows_fix(table, rs, choice))
            outcomes = _outcomes(where, path, rows, rs)
            top = max(sub.samples)
            if any(a in USES_N for a in sub.aggregators) and top > outcomes.n.min():
                short = int((outcomes.n < top).sum())
                raise SpecError(f"{where}: samples go up to {top} but {choice.label()} has "
                                f"fewer recorded samples for {short} of its "
                                f"{len(outcomes.n)} items (as few as {outcomes.n.min()}); "
                                "lower `samples`, or drop those items from the table")
            self._scores[(subtask, choice)] = _Curves(
                outcomes, np.array([rank[i] for i in outcomes.items]))
            self._price(where, subtask, choice, rows, rs)

    def _price(self, where: str, subtask: str, choice: _Choice, rows: pd.DataFrame,
               rs: ReplaySpec) -> None:
        """Record the choice's inference FLOPs per sample from its own rows' cost columns."""
        flops = self._recorded_flops(rows, rs, choice.model)
        if flops is not None:
            self._flops[(subtask, choice.model, choice.method, choice.mixture)] = flops
        elif self.spec.model(choice.model).params is None:
            raise SpecError(f"{where}: model {choice.model!r} has no `params` and the table no "
                            "cost column; give flops_per_sample, tokens or usd_per_sample")

    def _recorded_flops(self, rows: pd.DataFrame, rs: ReplaySpec, model: str) -> float | None:
        """Mean inference FLOPs per sample from the table's cost columns, in order of
        preference: FLOPs; tokens at 2N each (models with known params); USD converted at
        the hardware's price of a GPU-hour. None: no column applies (the cost model prices)."""
        hw = self.spec.hardware
        params = self.spec.model(model).params
        if rs.flops_per_sample:
            return float(rows[rs.flops_per_sample].mean())
        if rs.input_tokens and rs.output_tokens and params is not None:
            return 2 * params * float((rows[rs.input_tokens] + rows[rs.output_tokens]).mean())
        if rs.usd_per_sample and hw.usd_per_gpu_hour is not None:
            gpu_hours = float(rows[rs.usd_per_sample].mean()) / hw.usd_per_gpu_hour
            return gpu_hours * hw.peak_flops * hw.utilization * 3600
        return None

    def _choices(self, subtask: str) -> Iterator[_Choice]:
        """The distinct (model, method, mixture) of the subtask's canonical plans."""
        seen = set()
        for p in self.space.plans(subtask):
            choice = _Choice(p.model, p.method, p.mixture)
            if choice not in seen:
                seen.add(choice)
                yield choice

    def calibration(self) -> Calibration:
        return dict(self._flops)

    def subtask_score(self, subtask: str, plan: Plan, fidelity: float = 1.0) -> float:
        """Expected score of one stage under `plan`, on a screen's items if `fidelity` < 1."""
        curves = self._scores[(subtask, _Choice(plan.model, plan.method, plan.mixture))]
        if fidelity == 1.0:
            return curves.mean(plan.aggregator, plan.samples)
        kept = curves.rank < screened(self.items[subtask], fidelity)
        if not kept.any():  # recorded on none of the screen's items: its own first ones
            kept = np.argsort(curves.rank)[:screened(len(curves.rank), fidelity)]
        return float(np.mean(curves.per_item(plan.aggregator, plan.samples)[kept]))

    def validation_items(self) -> dict[str, int]:
        return dict(self.items)

    def evaluate(self, allocation: Allocation, fidelity: float = 1.0,
                 draws: Draws | None = None, screen: float | None = None) -> Observation:
        """The table's scores (a replay draws no samples: `draws` is not used)."""
        check_fidelity(fidelity)
        check_screen(fidelity, screen)
        self.space.validate(allocation)
        per = {s: self.subtask_score(s, p, fidelity) for s, p in allocation.items()}
        on_screen = None
        if screen is not None:
            part = {s: self.subtask_score(s, p, screen) for s, p in allocation.items()}
            on_screen = ScreenScores(screen, float(np.prod(list(part.values()))), part)
        return Observation(score=float(np.prod(list(per.values()))), subtask_scores=per,
                           on_screen_items=on_screen)


def _check_aggregators(where: str, sub: SubtaskSpec, rs: ReplaySpec) -> None:
    """Every aggregator can be replayed from this table's form."""
    bad = sorted(set(sub.aggregators) - set(AGGREGATORS))
    if bad:
        raise SpecError(f"{where}: aggregators {bad} cannot be replayed; use "
                        f"{list(AGGREGATORS)}")
    if "majority" in sub.aggregators and not rs.answer:
        raise SpecError(f"{where}.answer: aggregator `majority` votes over each sample's "
                        "answer; give `answer: COLUMN` with the per-sample form (`correct:`), "
                        "or drop `majority` from `aggregators`")


def _check_choice_columns(where: str, rs: ReplaySpec, choices: list[_Choice]) -> None:
    """A plan field whose values the table must tell apart has a column in `choices`: a
    field with several values among choices otherwise alike would score them alike."""
    for field in FIELDS:
        if field in rs.choices:
            continue
        values: dict[tuple[str, ...], set[str]] = {}
        for choice in choices:
            rest = tuple(getattr(choice, f) for f in FIELDS if f != field)
            values.setdefault(rest, set()).add(getattr(choice, field))
        several = next((v for v in values.values() if len(v) > 1), None)
        if several:
            raise SpecError(f"{where}.choices: {field} takes values {sorted(several)} but no "
                            f"column tells them apart (they would score alike); add `{field}: "
                            f"COLUMN` to `choices`, or offer one {field}")


_SHOWN = 8  # column values a "never holds" error lists
_NAME = re.compile(r"[\w.+-][\w .:/+-]{0,63}")  # a value that looks like a choice's name


def _no_rows_fix(table: pd.DataFrame, rs: ReplaySpec, choice: _Choice) -> str:
    """What to do about a choice without rows: where its column never holds one of its
    values (a model named otherwise in the table), that value and the column's own (the
    first `_SHOWN`); else, the values recorded but not together, offer only recorded
    methods."""
    for field, column in rs.choices.items():
        value = getattr(choice, field)
        held = sorted(set(table[column].astype(str)))
        if value not in held:
            shown = held[:_SHOWN]
            listed = (", ".join(shown) + (", ..." if len(held) > _SHOWN else "")
                      if all(_NAME.fullmatch(v) for v in shown)  # never a system file's text
                      else f"{len(held)} other values")
            return (f"column `{column}` (choices.{field}) never holds `{value}`; it holds "
                    f"{listed}: name the {field} as the table does, or add its rows")
    return (f"add the rows, or offer only recorded methods (`models: [{{name: {choice.model}, "
            "methods: [...]}]` in this subtask)")


def _rows_by_choice(table: pd.DataFrame, rs: ReplaySpec) -> dict[tuple[str, ...], pd.DataFrame]:
    """The table's rows per choice (its values of the `choices` columns as text, in their
    order), in table order: one pass over the table and one reordering of it, however many
    choices it holds; each choice's rows are then a slice of the reordered table."""
    keys = [table[column].astype(str).to_numpy() for column in rs.choices.values()]
    groups = pd.Series(np.arange(len(table))).groupby(keys, sort=False).indices
    grouped = table.take(np.concatenate(list(groups.values())))
    ends = np.cumsum([len(rows) for rows in groups.values()])
    return {k if isinstance(k, tuple) else (k,): grouped.iloc[end - len(rows):end]
            for (k, rows), end in zip(groups.items(), ends, strict=True)}


def _outcomes(where: str, path: Path, rows: pd.DataFrame, rs: ReplaySpec) -> _Outcomes:
    """Per-item counts of one choice's rows of table `path` (and votes, where the table has
    answers)."""
    if not rs.correct:
        items = rows[rs.item].astype(str)
        _one_row_per_item(where, path, rows, items, rs)
        return _Outcomes(items.to_numpy(),
                         rows[rs.n_samples].to_numpy().astype(np.int64),
                         rows[rs.n_correct].to_numpy().astype(np.int64))
    scored = rows[rs.correct].astype(float)
    partial = bool(((scored > 0) & (scored < 1)).any())  # some sample has partial credit
    by_item = scored.groupby(rows[rs.item])
    per_item = by_item.agg(["size", "sum"])
    items = per_item.index.astype(str).to_numpy()
    n = per_item["size"].to_numpy().astype(np.int64)
    c = per_item["sum"].to_numpy() if partial else per_item["sum"].to_numpy().astype(np.int64)
    # each row's item as its place in `items` (-1: no item, left out as groupby leaves it);
    # the rows sorted by it, in table order within an item, and split per item
    item = by_item.ngroup().fillna(-1).to_numpy(dtype=np.int64)
    order = np.argsort(item, kind="stable")[int((item < 0).sum()):]
    score = scored.to_numpy()
    scores = _per_item(score[order], n) if partial else ()
    if not rs.answer:
        return _Outcomes(items, n, c, scores=scores)
    answer = rows[rs.answer]
    codes = pd.factorize(answer)[0]
    codes[answer.to_numpy() == ""] = NO_ANSWER
    mixed = _scored_unequally(item, codes, score)
    if mixed.any():
        first = rows.index[mixed][:2]  # two samples of one row, in a table of lists
        at = (f"row {first[0] + 1} gives one item the same answer twice" if first[0] == first[1]
              else f"rows {first[0] + 1} and {first[1] + 1} give one item the same answer")
        raise SpecError(f"{where}.answer: {at}, scored differently (say, right and wrong); "
                        "equal answers must score equally in `correct`")
    # a vote's sample scores: with partial credit the same runs as `scores`, else 1 or 0
    correct = scores if partial else _per_item(
        rows[rs.correct].to_numpy().astype(np.int8)[order], n)
    votes = tuple(zip(_per_item(codes[order], n), correct, strict=True))
    return _Outcomes(items, n, c, votes, scores)


def _per_item(values: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    """`values` (sorted by item) split into runs of `n[i]` each, one per item."""
    return tuple(np.split(values, np.cumsum(n)[:-1])) if len(n) else ()


def _scored_unequally(item: np.ndarray, answer: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(rows,) the rows whose item (-1: none) and answer code some other row shares with
    another score."""
    order = np.lexsort((answer, item))
    pair = np.r_[True, (np.diff(item[order]) != 0) | (np.diff(answer[order]) != 0)]
    starts = np.flatnonzero(pair)
    differ = (np.minimum.reduceat(score[order], starts)
              != np.maximum.reduceat(score[order], starts)) & (item[order][starts] >= 0)
    out = np.zeros(len(item), dtype=bool)
    out[order] = differ[np.cumsum(pair) - 1]
    return out


def _one_row_per_item(where: str, path: Path, rows: pd.DataFrame, items: pd.Series,
                      rs: ReplaySpec) -> None:
    """In the counts form, refuse a choice with two rows for one item (`items`: the rows'
    item column as text): they are most often rows of choices the task does not tell apart
    (several checkpoints of one model, the method's column not in `choices`), whose scores
    would be averaged without a word. The columns they differ in are read again from the
    file, which was read for the task's columns only."""
    twice = items.duplicated(keep=False)
    if not twice.any():
        return
    item = items[twice].iloc[0]
    first = read_table(path).loc[rows.index[(items == item).to_numpy()]]
    outcome = {rs.n_samples, rs.n_correct, rs.flops_per_sample, rs.input_tokens,
               rs.output_tokens, rs.usd_per_sample}
    differ = [str(c) for c in first.columns
              if c not in outcome and first[c].astype(str).nunique() > 1]
    apart = (f"they differ in {differ}: map the one that tells choices apart in `choices`"
             if differ else "map the column that tells them apart in `choices`")
    raise SpecError(f"{where}: rows {first.index[0] + 1} and {first.index[1] + 1} both count "
                    f"item {item!r} for one choice ({apart}), or sum their counts if they are "
                    "one run's samples")


def _columns(columns: Sequence[str]) -> str:
    """A table's columns, named only where they look like column names: a file that is no
    table (say /etc/passwd) must not have its first line quoted."""
    names = [str(c) for c in columns]
    if len(names) <= 50 and all(re.fullmatch(r"[A-Za-z_][\w .-]{0,63}", n) for n in names):
        return f"it has {names}"
    return f"it has {len(names)} columns, none of them named so; is it the right file?"


def _check_numbers(path: Path, table: pd.DataFrame, rs: ReplaySpec) -> None:
    """Outcome and cost columns hold numbers that make sense, row by row (rows numbered
    from 1 after the header)."""
    if rs.correct:
        correct = _numbers(path, table, rs.correct)
        _refuse(path, table, rs.correct, (correct < 0) | (correct > 1),
                "is not a score from 0 to 1 (1 or 0 for right or wrong)")
    else:
        n = _numbers(path, table, rs.n_samples)
        c = _numbers(path, table, rs.n_correct)
        for column, values in ((rs.n_samples, n), (rs.n_correct, c)):
            _refuse(path, table, column, values != np.floor(values), "is not a whole number")
        _refuse(path, table, rs.n_samples, (n < 1) | (n > MAX_RECORDED),
                f"is not a sample count from 1 to {MAX_RECORDED:,}")
        _refuse(path, table, rs.n_correct, c < 0, "is negative")
        _refuse(path, table, rs.n_correct, c > n, f"is more than column {rs.n_samples!r}")
    for column in (rs.flops_per_sample, rs.input_tokens, rs.output_tokens, rs.usd_per_sample):
        if column:
            _refuse(path, table, column, _numbers(path, table, column) < 0, "is negative")


def _truths_as_numbers(column: pd.Series) -> pd.Series:
    """Texts `true` and `false` (any case) as 1 and 0, as a CSV reader takes them: a JSON
    log may write a sample's correctness as the text "True"."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column
    words = {"true": 1, "false": 0}
    return column.map(lambda v: words.get(v.strip().lower(), v) if isinstance(v, str) else v)


def _numbers(path: Path, table: pd.DataFrame, column: str) -> np.ndarray:
    """A column as finite floats; a `SpecError` names the first row that is not one."""
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce").astype(float).to_numpy()
    _refuse(path, table, column, raw.isna().to_numpy(), "is empty")
    unread = np.isnan(values)
    if unread.any():  # say why, read only here: a large table's column has millions of rows
        listed = raw.map(lambda v: isinstance(v, str) and v.lstrip().startswith("["))
        _refuse(path, table, column, unread & listed.to_numpy(dtype=bool),
                "holds a list, which only JSON Lines, JSON and Parquet tables may (a value "
                "per sample): save it as one of those, or write a row per sample")
        _refuse(path, table, column, unread, "is not a number")
    _refuse(path, table, column, ~np.isfinite(values), "is not a finite number")
    return values


def _refuse(path: Path, table: pd.DataFrame, column: str, bad: np.ndarray, what: str) -> None:
    """A `SpecError` naming the first `bad` row of `table` as the file numbers it (from 1
    after the header; a sample's row is its item's row in a table of lists)."""
    if bad.any():
        row = int(table.index[np.argmax(bad)]) + 1
        raise SpecError(f"{path}: row {row}: column {column!r} {what}; fix the table")


def _item_scores(aggregator: str, n: int, o: _Outcomes) -> np.ndarray:
    """(items,) each item's expected score under `aggregator` with n of its N samples."""
    if aggregator == "first":
        return o.c / o.n
    if aggregator == "oracle" and o.scores:  # partial credit: the best of n samples' scores
        return np.array([expected_best_of_k(s, s, n) for s in o.scores])
    if aggregator == "oracle":
        return np.array([pass_at_k(int(ni), int(ci), n) for ni, ci in zip(o.n, o.c, strict=True)])
    return np.array([expected_majority_at_k(a.tolist(), c.tolist(), n, abstain=NO_ANSWER)
                     for a, c in o.votes])
