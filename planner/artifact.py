"""What a plan trains, as an identity that the cost model, the live cache and export share:
equal artifacts are trained once, cached once and paid once.

An artifact is a base model, the method's settings (its kind and options, not its catalogue
name) and, for a method that trains on task data, the mixture's weights over qualified
sources (`subtask/source`). A fine-tune on one subtask's own data is private to it; one
trained on a mixture that several subtasks name alike (a multi-task model) serves them all;
a base model or a released checkpoint is the same artifact wherever it is used.

A merge (method kind `merge`) is the base, the merge's settings and its parts: the
component fine-tunes, each the artifact a plan of its subtask with its LoRA method and
mixture serves from, and their weights. A component is therefore trained, cached and paid
once, whether a merge or a plan alone uses it.

A verifier (`VerifierArtifact`, aggregators `verifier` and `verifier_best`) is trained for
one subtask on samples of one generator artifact: it is keyed by that generator and the
verifier's settings, so plans of the subtask that differ only in n share it. A sequential
verifier (Liu et al. 2023's sequential multi-task fine-tuning) is no second model: the plan
serves the generator's continuation (`Artifact.continues`), the generator trained further
on that verification data, which both generates and scores; it is keyed by the generator
and the verifier, so it is cached apart from the generator, which it trains first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.methods import Merge, Method
from planner.space import Plan
from planner.spec import VERIFIER_AGGREGATORS, TaskSpec


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
    parts: tuple[tuple[Artifact, float], ...] = ()
    """A merge's component fine-tunes and their weights, in a canonical order; empty
    for any other method."""
    continues: VerifierArtifact | None = None
    """A sequential verifier's continuation: its generator (`continues.generator`) trained
    further by `method` on the verification data that verifier describes; None: trained
    from `model`'s weights."""

    @property
    def sources(self) -> dict[str, float]:
        return dict(self.data)

    @property
    def trains(self) -> tuple[Artifact, ...]:
        """What producing it trains: a merge's components, or a continuation's generator (and
        what that trains), then itself."""
        first = self.continues.generator.trains if self.continues is not None else ()
        return (*(part for part, _ in self.parts), *first, self)

    @property
    def exported(self) -> Artifact:
        """What another tool's training config can reproduce: a continuation's generator
        (its verification data is sampled from the generator as it trains), else itself."""
        return self.continues.generator if self.continues is not None else self


Generators = dict[tuple[str, str, str, str], "Artifact"]
"""A memo of generator artifacts by subtask, model, method and mixture: all a generator
depends on, so the plans that differ in n, aggregator or verifier share one (a cost model
prices thousands of plans of a few hundred generators)."""


def artifact_of(spec: TaskSpec, subtask: str, plan: Plan,
                generators: Generators | None = None) -> Artifact:
    """The artifact a subtask's plan serves from: the generator its model, method and
    mixture train, or where its verifier is sequential that generator's continuation."""
    verifier = verifier_of(spec, subtask, plan, generators)
    if verifier is not None and verifier.sequential:
        return Artifact(verifier.model, verifier.settings, (), verifier.method,
                        continues=verifier)
    return _generator(spec, subtask, plan, generators)


def _generator(spec: TaskSpec, subtask: str, plan: Plan,
               generators: Generators | None = None) -> Artifact:
    """The artifact the plan's model, method and mixture train (kept in `generators`)."""
    key = (subtask, plan.model, plan.method, plan.mixture)
    if generators is not None and key in generators:
        return generators[key]
    method = spec.method(plan.method)
    if isinstance(method, Merge):
        parts = [(_served(spec, c.subtask, plan.model, c.method,
                          c.mixture or next(iter(spec.subtask(c.subtask).mixtures))), c.weight)
                 for c in method.components]
        parts.sort(key=lambda p: (p[0].settings, p[0].data, p[1]))
        found = Artifact(plan.model, method.settings(), (), method, tuple(parts))
    else:
        found = _served(spec, subtask, plan.model, plan.method, plan.mixture)
    if generators is not None:
        generators[key] = found
    return found


def _served(spec: TaskSpec, subtask: str, model: str, method_name: str,
            mixture: str) -> Artifact:
    method = spec.method(method_name)
    data = spec.mixture_weights(subtask, mixture) if method.fine_tunes else {}
    return Artifact(model, method.settings(), tuple(data.items()), method)


@dataclass(frozen=True)
class VerifierArtifact:
    """A verifier (Liu et al. 2023) of one subtask's samples from one generator: `model`
    fine-tuned by a method of `settings` on `samples` generator samples of each of `items`
    training items, each labelled by the subtask's metric."""

    subtask: str
    generator: Artifact
    model: str
    settings: str
    """The verifier method's canonical settings (`Method.settings`)."""
    items: int
    samples: int
    method: Method = field(default=None, compare=False)  # type: ignore[assignment]
    name: str = field(default="", compare=False)
    """The subtask's name for this verifier (`verifiers:`)."""
    sequential: bool = False
    """Trained from the generator's weights (`model` is the generator's), not a model of its
    own: the plan serves it (`Artifact.continues`), and it generates too."""


def verifier_of(spec: TaskSpec, subtask: str, plan: Plan,
                generators: Generators | None = None) -> VerifierArtifact | None:
    """The verifier a plan re-ranks its samples with; None where its aggregator uses none,
    or n = 1 (one sample is the answer whatever its score)."""
    name = plan.get("verifier")
    if plan.aggregator not in VERIFIER_AGGREGATORS or plan.samples < 2 or name is None:
        return None
    v = spec.subtask(subtask).verifiers[str(name)]
    method, generator = spec.method(v.method), _generator(spec, subtask, plan, generators)
    return VerifierArtifact(subtask, generator, generator.model if v.sequential else str(v.model),
                            method.settings(), v.items, v.samples, method, str(name),
                            v.sequential)


def tokens_per_example(spec: TaskSpec, artifact: Artifact) -> float:
    """Mean prompt + output tokens of the examples the artifact trains on: each source's
    subtask's declared lengths, weighted by the mixture (a continuation: its verifier's
    subtask's, the examples being its solutions)."""
    if artifact.continues is not None:
        s = spec.subtask(artifact.continues.subtask)
        return s.prompt_tokens + s.output_tokens
    total = 0.0
    for source, weight in artifact.data:
        s = spec.subtask(source.split("/", 1)[0])
        total += weight * (s.prompt_tokens + s.output_tokens)
    return total
