"""A live subtask's records: read JSONL, check fields, render prompts and labels.

Each record is a JSON object per line. A subtask's prompt template names fields in braces;
a field that names a dependency holds that dependency's gold output in the data and its
actual output when the pipeline runs. The gold output of a subtask sits under its `label`
field (default: the subtask's name).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from planner.errors import SpecError
from planner.spec import SubtaskSpec, TaskSpec, template_fields

Record = dict[str, str]


def render(template: str, record: Mapping[str, str]) -> str:
    """Fill a template from a record (all fields must be present)."""
    return template.format_map(record)


def read_records(path: Path, fields: Sequence[str]) -> list[Record]:
    """Read a JSONL file; raise `SpecError` naming file, line and field if a record lacks one
    of `fields` or a line is not a JSON object. Values are kept as strings."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text (a binary file, or another encoding); save "
                        "it as UTF-8 JSONL") from None
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise SpecError(f"{path}:{i}: expected a JSON object, got {type(record).__name__}")
        missing = [f for f in fields if f not in record]
        if missing:
            raise SpecError(f"{path}:{i}: record lacks field {missing[0]!r}; the prompt "
                            "template and label need " + ", ".join(map(repr, fields)))
        records.append({k: str(v) for k, v in record.items()})
    if not records:
        raise SpecError(f"{path}: no records")
    return records


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class SubtaskData:
    """One subtask's training sources and validation records, checked and loaded."""

    name: str
    template: str
    label: str
    sources: dict[str, list[Record]]
    val: list[Record]
    digests: dict[str, str]
    """Source name -> SHA-256 of its file: what a trained artifact depends on."""

    def prompt(self, record: Mapping[str, str]) -> str:
        return render(self.template, record)

    def examples(self, source: str) -> list[dict[str, str]]:
        """A source as `tools.train` examples (gold inputs, gold completion)."""
        return [{"prompt": self.prompt(r), "completion": r[self.label]}
                for r in self.sources[source]]


def load_subtask(spec: TaskSpec, subtask: SubtaskSpec) -> SubtaskData:
    """Read a live subtask's files; every record must hold the template's fields and label."""
    if subtask.data is None:
        raise SpecError(f"{spec.source}: subtasks.{subtask.name}: a live subtask needs `data:`")
    data = subtask.data
    label = data.label or subtask.name
    fields = [*dict.fromkeys([*template_fields(data.prompt), label])]
    sources = {name: read_records(spec.path(p), fields) for name, p in data.sources.items()}
    return SubtaskData(
        name=subtask.name,
        template=data.prompt,
        label=label,
        sources=sources,
        val=read_records(spec.path(data.val), fields),
        digests={name: file_digest(spec.path(p)) for name, p in data.sources.items()},
    )
