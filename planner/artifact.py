"""What a plan trains, as an identity that the cost model, the live cache and export share:
equal artifacts are trained once, cached once and paid once.

An artifact is a base model, the method's settings (its kind and options, not its catalogue
name) and, for a method that trains on task data, the mixture's weights over qualified
sources (`subtask/source`). A fine-tune on one subtask's own data is private to it; one
trained on a mixture that several subtasks name alike (a multi-task model) serves them all;
a base model or a released checkpoint is the same artifact wherever it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.methods import Method
from planner.space import Plan
from planner.spec import TaskSpec


@dataclass(frozen=True)
class Artifact:
    """One trained (or untrained: method `none`) model."""

    model: str
    settings: str
    """The method's canonical settings (`Method.settings`)."""
    data: tuple[tuple[str, float], ...] = ()
    """Qualified source -> weight (sum 1); empty when the method does not train on task data."""
    method: Method = field(default=None, compare=False)  # type: ignore[assignment]
    """The catalogue entry that trains it (one of those with these settings)."""

    @property
    def sources(self) -> dict[str, float]:
        return dict(self.data)


def artifact_of(spec: TaskSpec, subtask: str, plan: Plan) -> Artifact:
    """The artifact a subtask's plan serves from."""
    method = spec.method(plan.method)
    data = spec.mixture_weights(subtask, plan.mixture) if method.fine_tunes else {}
    return Artifact(plan.model, method.settings(), tuple(data.items()), method)


def tokens_per_example(spec: TaskSpec, artifact: Artifact) -> float:
    """Mean prompt + output tokens of the examples the artifact trains on: each source's
    subtask's declared lengths, weighted by the mixture."""
    total = 0.0
    for source, weight in artifact.data:
        s = spec.subtask(source.split("/", 1)[0])
        total += weight * (s.prompt_tokens + s.output_tokens)
    return total
