"""Where trials run: in the driver's process, one subprocess per trial, or one Ray task each.

An executor evaluates allocations and hands back outcomes; it never writes the store (the
driver's `Runner` does, in `complete`). Every executor has `slots` (trials it runs at once),
`start(number, allocation, fidelity)`, `running()` and `wait()`, which blocks until at least one
started trial has an outcome, and `close()`, which cancels what is still running.

- `local`: evaluates in the driver's process, one trial after another (replay's default: a
  replayed trial takes microseconds).
- `process`: one fresh Python process per trial (`planner.worker`), so the GPU memory a
  trial's model or vLLM engine held is returned when it exits, whatever the library leaks.
  A worker that dies (kill -9, the kernel's out-of-memory killer) is seen at once (its
  output pipe closes with no outcome); one that outlives `timeout_s` is killed; a worker
  whose driver died exits by itself.
- `ray`: one Ray task per trial (`max_calls=1`: a fresh worker process each), with its CPU
  and GPU request; `ray.wait` collects results, and `close` cancels the rest (interrupt).

A worker builds its environment from a picklable factory (`functools.partial(
make_environment, spec)`), so nothing but the task spec and the allocation crosses over.
"""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Protocol

from planner.draws import Draws
from planner.env import Environment, Observation
from planner.errors import PlannerError
from planner.space import Allocation

EnvFactory = Callable[[], Environment]
EXECUTORS = ("local", "process", "ray")

# Errors a second attempt may not meet again: out of device memory (another trial held it),
# a model server or network that was briefly unreachable. Matched by class name along the
# exception's MRO, so torch and openai need not be imported to recognise theirs.
_TRANSIENT = {"OutOfMemoryError", "ConnectionError", "TimeoutError", "APIConnectionError",
              "APITimeoutError", "RateLimitError", "InternalServerError"}


@dataclass(frozen=True)
class Outcome:
    """How one attempt at a trial ended: an observation, or an error and whether another
    attempt might succeed (`transient`)."""

    number: int
    observation: Observation | None = None
    error: str | None = None
    transient: bool = False


def is_transient(error: BaseException) -> bool:
    """Whether a trial that raised `error` is worth another attempt."""
    return any(cls.__name__ in _TRANSIENT for cls in type(error).__mro__)


def evaluate(factory: EnvFactory, allocation: Allocation, fidelity: float = 1.0,
             draws: Draws | None = None, screen: float | None = None) -> tuple:
    """Build the environment and evaluate the allocation at `fidelity`, drawing `draws`
    samples per arm (and scoring it on a `screen`'s items too: `Environment.evaluate`); in
    a worker, so every error comes back as data: (observation, None, False) or (None,
    error line, transient)."""
    try:
        return factory().evaluate(allocation, fidelity, draws, screen), None, False
    except Exception as e:  # recorded as the trial's error, like Optuna's _run_trial
        return None, "".join(traceback.format_exception_only(e)).strip(), is_transient(e)


class Executor(Protocol):
    slots: int

    def start(self, number: int, allocation: Allocation, fidelity: float = 1.0,
              draws: Draws | None = None, screen: float | None = None) -> None:
        """Begin evaluating trial `number` (on a `fidelity` share of the validation items,
        drawing `draws` samples per arm: `planner.draws`; a full one scored on a `screen`'s
        items too: `Environment.evaluate`)."""
        ...

    def running(self) -> int:
        """Trials started whose outcome `wait` has not handed back yet."""
        ...

    def wait(self) -> list[Outcome]:
        """Outcomes of finished trials: at least one while any is running, else none."""
        ...

    def close(self) -> None:
        """Stop every running trial (their outcomes are dropped)."""
        ...


class LocalExecutor:
    """Evaluates trials in this process, one after another, when `wait` is called. With
    `slots` > 1 the strategy asks for a batch before it hears any result, as it would with
    that many workers: how a benchmark measures what batching costs a strategy."""

    def __init__(self, env: Environment, slots: int = 1) -> None:
        self.env = env
        self.slots = slots
        self._started: list[tuple[int, Allocation, float, Draws | None, float | None]] = []

    def start(self, number: int, allocation: Allocation, fidelity: float = 1.0,
              draws: Draws | None = None, screen: float | None = None) -> None:
        self._started.append((number, allocation, fidelity, draws, screen))

    def running(self) -> int:
        return len(self._started)

    def wait(self) -> list[Outcome]:
        started, self._started = self._started, []
        return [Outcome(number, *evaluate(lambda: self.env, *request))
                for number, *request in started]

    def close(self) -> None:
        self._started = []


@dataclass
class _Worker:
    process: subprocess.Popen
    deadline: float
    device: str | None


class ProcessExecutor:
    """One fresh Python process per trial (`planner.worker`), at most `slots` at once;
    `timeout_s` per trial. With `devices` (GPU ids), each worker sees one of them
    (`CUDA_VISIBLE_DEVICES`), the one the fewest running workers use, so eight workers on
    an 8-GPU box use all eight."""

    def __init__(self, factory: EnvFactory, slots: int, timeout_s: float | None = None,
                 devices: Sequence[str] = ()) -> None:
        if slots < 1:
            raise ValueError(f"workers must be at least 1, got {slots}")
        self.factory = factory
        self.slots = slots
        self.timeout_s = timeout_s
        self.devices = list(devices)
        self._workers: dict[int, _Worker] = {}

    def start(self, number: int, allocation: Allocation, fidelity: float = 1.0,
              draws: Draws | None = None, screen: float | None = None) -> None:
        device = min(self.devices, default=None, key=lambda d: sum(
            w.device == d for w in self._workers.values()))
        env = dict(os.environ) if device is None else {**os.environ,
                                                       "CUDA_VISIBLE_DEVICES": device}
        process = subprocess.Popen([sys.executable, "-m", "planner.worker"], env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        with process.stdin:
            pickle.dump(sys.path, process.stdin)
            pickle.dump((self.factory, allocation, fidelity, draws, screen, os.getpid()),
                        process.stdin)
        deadline = math.inf if self.timeout_s is None else time.monotonic() + self.timeout_s
        self._workers[number] = _Worker(process, deadline, device)

    def running(self) -> int:
        return len(self._workers)

    def wait(self) -> list[Outcome]:
        if not self._workers:
            return []
        deadline = min(w.deadline for w in self._workers.values())
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        ready = set(wait([w.process.stdout for w in self._workers.values()], timeout))
        now = time.monotonic()
        done = []
        for number, w in list(self._workers.items()):
            if w.process.stdout in ready:  # its outcome, or EOF: it is done either way
                done.append(self._collect(number, w.process))
            elif w.deadline <= now:
                _stop(w.process)
                done.append(Outcome(number, error=f"TimeoutError: the trial ran past its "
                                                  f"limit of {self.timeout_s:g} s; killed"))
            else:
                continue
            del self._workers[number]
        return done

    def _collect(self, number: int, process: subprocess.Popen) -> Outcome:
        """The outcome a finished worker sent, or why it sent none (it died)."""
        with process.stdout:
            sent = process.stdout.read()
        code = process.wait()
        try:
            observation, error, transient = pickle.loads(sent)
            return Outcome(number, observation, error, transient)
        except (EOFError, pickle.UnpicklingError):  # nothing, or cut off: it died
            pass
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return Outcome(number, error=f"WorkerLost: the trial's worker process {how} before "
                                     "it reported (killed, or out of memory)", transient=True)

    def close(self) -> None:
        for w in self._workers.values():
            _stop(w.process)
        self._workers.clear()


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stdout.close()


class RayExecutor:
    """One Ray task per trial on a Ray cluster (`address`; None starts a local instance),
    each asking for `cpus` CPUs and `gpus` GPUs; `slots` trials in flight at once."""

    def __init__(self, factory: EnvFactory, slots: int, *, address: str | None = None,
                 cpus: float = 1, gpus: float | None = 0,
                 timeout_s: float | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise PlannerError("--executor ray needs Ray: pip install 'planner[ray]'") from None
        self._owns = not ray.is_initialized()  # a local instance this executor started
        if self._owns:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PlannerError(f"--ray-address {address}: cannot join the Ray cluster "
                                   f"({first}); start it with `ray start --head`, or leave "
                                   "--ray-address out for a local instance") from None
        if gpus is None:  # one GPU per trial where the cluster has GPUs
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self._ray = ray
        self.factory = factory
        self.slots = slots
        self.timeout_s = timeout_s
        # a fresh worker per task (GPU memory returned), and planner's own retry policy
        self._task = ray.remote(max_calls=1, max_retries=0, num_cpus=cpus,
                                num_gpus=gpus)(evaluate)
        self._refs: dict[object, tuple[int, float]] = {}  # ref -> (trial, deadline)

    def start(self, number: int, allocation: Allocation, fidelity: float = 1.0,
              draws: Draws | None = None, screen: float | None = None) -> None:
        deadline = math.inf if self.timeout_s is None else time.monotonic() + self.timeout_s
        ref = self._task.remote(self.factory, allocation, fidelity, draws, screen)
        self._refs[ref] = (number, deadline)

    def running(self) -> int:
        return len(self._refs)

    def wait(self) -> list[Outcome]:
        if not self._refs:
            return []
        deadline = min(d for _, d in self._refs.values())
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        now = time.monotonic()
        done = []
        for ref in list(self._refs):
            number, limit = self._refs[ref]
            if ref in ready:
                done.append(self._collect(number, ref))
            elif limit <= now:
                self._ray.cancel(ref, force=True)
                done.append(Outcome(number, error=f"TimeoutError: the trial ran past its "
                                                  f"limit of {self.timeout_s:g} s; cancelled"))
            else:
                continue
            del self._refs[ref]
        return done

    def _collect(self, number: int, ref: object) -> Outcome:
        from ray.exceptions import RayError

        try:
            observation, error, transient = self._ray.get(ref)
        except RayError as e:  # the worker or its node died: another attempt may succeed
            return Outcome(number, error=f"WorkerLost: {type(e).__name__}: "
                                         f"{str(e).splitlines()[0] if str(e) else ''}",
                           transient=True)
        return Outcome(number, observation, error, transient)

    def close(self) -> None:
        for ref in self._refs:
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns:
            self._ray.shutdown()


def make_executor(kind: str, env: Environment, factory: EnvFactory, *, workers: int = 1,
                  timeout_s: float | None = None, ray_address: str | None = None,
                  cpus: float = 1, gpus: float | None = 0) -> Executor:
    """The executor `kind` names (`EXECUTORS`), running up to `workers` trials at once, each
    with `gpus` GPUs (None: one per trial where there are GPUs, else none)."""
    if kind == "local":
        return LocalExecutor(env)
    if kind == "process":
        return ProcessExecutor(factory, workers, timeout_s, visible_gpus() if gpus != 0 else ())
    if kind == "ray":
        return RayExecutor(factory, workers, address=ray_address, cpus=cpus, gpus=gpus,
                           timeout_s=timeout_s)
    raise ValueError(f"unknown executor {kind!r}; choose from {', '.join(EXECUTORS)}")


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ids for `CUDA_VISIBLE_DEVICES`."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]
