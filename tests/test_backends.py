"""Sampling backends as a task's choice (`sampling:`, `planner optimize --backend`): the live
environment sampling through a real OpenAI-compatible HTTP server on 127.0.0.1 (its
completions drawn by transformers from the same tiny models), samplers loaded once per
artifact, and the refusals (one line each). vLLM cannot run here: its selection and refusals
are tested without it."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from envs import make_environment
from envs.live.backends import Samplers, ServedModel
from envs.live.env import LiveEnvironment
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.errors import SpecError
from planner.executors import evaluate, is_transient
from planner.sampling import Backend, served_name, with_flags
from planner.space import Allocation, Plan
from planner.spec import load_spec, parse_spec
from planner.store import Store
from tests.conftest import write_tiny_task
from tools.infer import ServerUnavailableError, TransformersSampler
from tools.zoo import build_tiny_model, synthetic_corpus

pytestmark = pytest.mark.usefixtures("one_thread")
HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bases")
    corpus = synthetic_corpus(40, seed=0)
    return {name: build_tiny_model("tiny", corpus, folder / name, steps=1, batch_size=4,
                                   seed=seed) for name, seed in (("m1", 0), ("m2", 1))}


def task_data(bases: dict[str, Path], *, temperature: float = 0.8,
              add_methods: tuple[str, ...] = ("none",), sampling: dict | None = None,
              add_sampling: dict | None = None) -> dict:
    """A two-stage live task (parse -> add) on wordsum data, over the tiny bases m1, m2."""
    data = {"sources": {"train": "train.jsonl"}, "val": "val.jsonl"}
    stage = {"prompt_tokens": 10, "output_tokens": 5, "models": ["m1", "m2"],
             "samples": [1, 3], "aggregators": ["first", "majority"],
             "decoding": {"max_new_tokens": 4, "temperature": temperature}}
    add = {"name": "add", "depends_on": ["parse"], **stage, "methods": list(add_methods),
           "data": {**data, "prompt": "{parse}="}}
    if add_sampling is not None:
        add["sampling"] = add_sampling
    task = {
        "name": "backends", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": 1000},
        "models": [{"name": n, "params": 1e5, "source": str(p)} for n, p in bases.items()],
        "methods": [{"name": "none", "kind": "none"},
                    {"name": "full", "kind": "full",
                     "options": {"steps": 2, "batch_size": 4, "lr": 0.01}},
                    {"name": "soft", "kind": "prompt",
                     "options": {"steps": 2, "batch_size": 4, "num_virtual_tokens": 2}}],
        "subtasks": [{"name": "parse", **stage, "methods": ["none"],
                      "data": {**data, "prompt": "{problem} sum:"}}, add],
    }
    if sampling is not None:
        task["sampling"] = sampling
    return task


def write_data(folder: Path) -> Path:
    """The task's data files in `folder` (its root)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", wordsum_records(12, seed=1))
    write_jsonl(folder / "val.jsonl", wordsum_records(6, seed=2))
    return folder


def write_task(folder: Path, task: dict) -> Path:
    path = write_data(folder) / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def alloc(parse: str, add: str, n: int = 3, add_method: str = "none") -> Allocation:
    agg = "majority" if n > 1 else "first"
    return Allocation.of({"parse": Plan(model=parse, method="none", mixture="default",
                                        samples=n, aggregator=agg),
                          "add": Plan(model=add, method=add_method, mixture="default",
                                      samples=n, aggregator=agg)})


class CompletionsServer(ThreadingHTTPServer):
    """POST /v1/completions, answered by a TransformersSampler per served model name, one
    prompt per request under the request's seed (as planner's own sampling does)."""

    def __init__(self, models: dict[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), CompletionsHandler)
        self.samplers = {name: TransformersSampler(path) for name, path in models.items()}
        self.requests: list[dict] = []
        self.replies: list[list[str]] = []
        self.lock = threading.Lock()  # one generate at a time keeps seeded sampling exact

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class CompletionsHandler(BaseHTTPRequestHandler):
    server: CompletionsServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
            sampler = self.server.samplers.get(body["model"])
            if self.path != "/v1/completions" or sampler is None:
                return self._reply(404, {"error": {"message": f"no model {body['model']}"}})
            samples = sampler.sample([body["prompt"]], body.get("n", 1),
                                     max_new_tokens=body["max_tokens"],
                                     temperature=body["temperature"], top_p=body["top_p"],
                                     seed=body["seed"])
            self.server.replies.append(samples.texts[0])
        self._reply(200, {
            "id": "cmpl-0", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None}
                        for i, t in enumerate(samples.texts[0])],
            "usage": {"prompt_tokens": samples.prompt_tokens,
                      "completion_tokens": samples.completion_tokens,
                      "total_tokens": samples.prompt_tokens + samples.completion_tokens}})

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(bases: dict[str, Path]) -> Iterator[CompletionsServer]:
    """Serves m1 and m2 under their names, and m2 again as `add-full` (a fine-tune the task
    says the server serves)."""
    served = CompletionsServer({**bases, "add-full": bases["m2"]})
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


def openai_sampling(server: CompletionsServer, **extra: object) -> dict:
    return {"backend": "openai", "base_url": server.base_url, "served": ["m1", "m2"], **extra}


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_server_of_the_same_models_scores_as_transformers(
        temperature: float, bases: dict[str, Path], server: CompletionsServer,
        tmp_path: Path) -> None:
    """Same models, same per-prompt seeds (the test server honours them): every sample, so
    every stage output, score and token count, is the same through the server as in
    process, greedy or sampled. One cache: the backends' samples are kept apart."""
    root = write_data(tmp_path)
    local = LiveEnvironment(parse_spec(task_data(bases, temperature=temperature), root=root),
                            cache_dir=tmp_path / "cache", progress=False)
    remote = LiveEnvironment(parse_spec(task_data(bases, temperature=temperature,
                                                  sampling=openai_sampling(server)),
                                        root=root),
                             cache_dir=tmp_path / "cache", progress=False)
    before = len(server.requests)
    for allocation in (alloc("m1", "m2"), alloc("m2", "m1", n=1)):
        a, b = local.run(allocation), remote.run(allocation)
        assert a.prompts == b.prompts and a.outputs == b.outputs
        assert a.observation.score == b.observation.score
        assert a.observation.subtask_scores == b.observation.subtask_scores
        for key in ("prompt_tokens", "completion_tokens", "sample_tokens"):
            assert a.observation.measured[key] == b.observation.measured[key], key
    asked = server.requests[before:]
    assert {r["model"] for r in asked} == {"m1", "m2"}
    # the server drew every sample: one request per distinct prompt of each sample set
    assert len(asked) == remote.cache.stats.sample_misses
    assert local.cache.stats.sample_misses == remote.cache.stats.sample_misses
    if temperature == 0:  # greedy: one choice asked for, copied n times
        assert {r["n"] for r in asked} == {1}
    else:  # really sampled: the 3 samples of a prompt differ, and still agree with local
        assert {r["n"] for r in asked} == {3}
        assert any(len(set(texts)) > 1 for texts in server.replies[before:])


def test_a_sampler_is_loaded_once_per_artifact_and_a_stage_samples_in_one_call(
        bases: dict[str, Path], tmp_path: Path) -> None:
    env = LiveEnvironment(parse_spec(task_data(bases), root=write_data(tmp_path)),
                          cache_dir=tmp_path / "cache", progress=False)
    first = env.run(alloc("m1", "m1"))
    m1, m2 = ("transformers", str(bases["m1"])), ("transformers", str(bases["m2"]))
    # both stages sample m1, each its own and its pipeline prompts in one call
    assert env.samplers.calls == {m1: 2} and env.samplers.loads == {m1: 1}
    assert env.cache.stats.sample_misses == len(set(first.prompts["parse"])
                                                | {env.data["parse"].prompt(r)
                                                   for r in env.data["parse"].val}) + len(
        set(first.prompts["add"]) | {env.data["add"].prompt(r) for r in env.data["add"].val})
    env.run(alloc("m2", "m1"))
    env.run(alloc("m1", "m2", n=1))
    env.run(alloc("m2", "m2"))
    assert env.samplers.loads == {m1: 1, m2: 1}  # each loaded once, reused by every trial
    assert sum(env.samplers.calls.values()) <= 2 * 4  # at most one call per stage and trial
    assert env.samplers.loaded() == [m1, m2]


def test_a_sampler_past_the_bound_is_closed_before_another_loads(
        bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("envs.live.backends.CPU_MODELS", 1)  # as a GPU (or vLLM) is held
    samplers, local = Samplers(task="t"), Backend("transformers")
    first = samplers.get(local, bases["m1"])
    assert samplers.get(local, bases["m1"]) is first  # reused, not reloaded
    samplers.get(local, bases["m2"])
    assert samplers.loaded() == [("transformers", str(bases["m2"]))]
    assert not hasattr(first, "model")  # its weights were let go
    samplers.get(local, bases["m1"])
    assert samplers.loads[("transformers", str(bases["m1"]))] == 2
    samplers.close()
    assert samplers.loaded() == []


def test_a_fine_tune_the_server_serves_is_sampled_there_not_trained(
        bases: dict[str, Path], server: CompletionsServer, tmp_path: Path) -> None:
    tuned = {"served": [{"model": m, "method": "full", "mixture": "default",
                         "name": "add-full"} for m in ("m1", "m2")]}
    task = task_data(bases, add_methods=("none", "full"), sampling=openai_sampling(server),
                     add_sampling=tuned)
    env = LiveEnvironment(parse_spec(task, root=write_data(tmp_path)),
                          cache_dir=tmp_path / "cache", progress=False)
    before = len(server.requests)
    obs = env.evaluate(alloc("m1", "m2", add_method="full"))
    assert {r["model"] for r in server.requests[before:]} == {"m1", "add-full"}
    assert env.cache.stats.train_misses == 0 and obs.measured["train_tokens"] == 0
    assert env.samplers.loads == {("openai", server.base_url, "m1"): 1,
                                  ("openai", server.base_url, "add-full"): 1}

    del task["subtasks"][1]["sampling"]  # a fine-tune nobody serves: refused, one line
    with pytest.raises(SpecError) as e:
        LiveEnvironment(parse_spec(task, root=tmp_path), cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("backends: subtasks.add.methods: 'full' fine-tunes 'm1'")
    assert "a server cannot train" in str(e.value) and "--backend transformers" in str(e.value)


def test_an_unreachable_server_fails_the_trial_transiently(
        bases: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    spec = parse_spec(task_data(bases, sampling={"backend": "openai", "base_url": url,
                                                 "served": ["m1", "m2"], "max_retries": 0}),
                      root=write_data(tmp_path))
    env = make_environment(spec)
    with pytest.raises(ServerUnavailableError) as e:
        env.evaluate(alloc("m1", "m2"))
    assert is_transient(e.value) and isinstance(e.value, ConnectionError)
    # as a worker reports it to the runner: one line, transient, so it is attempted again
    observation, error, transient = evaluate(partial(make_environment, spec), alloc("m1", "m2"))
    assert observation is None and transient
    assert "\n" not in error and "APIConnectionError" in error and url in error


def test_an_api_key_is_read_from_the_named_variable_and_never_stored(
        bases: dict[str, Path], server: CompletionsServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVER_CREDENTIAL", "s3cret-value-42")
    task = task_data(bases, sampling=openai_sampling(server, api_key_env="MY_SERVER_CREDENTIAL"))
    spec = parse_spec(task, root=write_data(tmp_path))
    assert "s3cret" not in json.dumps(spec.model_dump(mode="json"))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    sampler = env.samplers.get(env.backends["parse"], ServedModel("m1"))
    assert sampler.client.api_key == "s3cret-value-42"
    before = len(server.requests)
    env.run(alloc("m1", "m2"))
    assert len(server.requests) > before


BAD_TASKS = [  # (change to the task, field named, words in the fix)
    ({"sampling": {"backend": "tgi"}}, "sampling.backend", "'openai'"),
    ({"sampling": {"backend": "openai", "base_url": "127.0.0.1:8000"}}, "sampling.base_url",
     "http://127.0.0.1:8000/v1"),
    ({"sampling": {"api_key_env": "MY KEY"}}, "sampling.api_key_env", "pattern"),
    ({"sampling": {"served": ["m9"]}}, "sampling.served[0]", "unknown model 'm9'"),
    ({"sampling": {"served": [{"model": "m1", "method": "full", "mixture": "default",
                               "name": "x"}]}}, "sampling.served[0]", "that subtask's"),
    ({"sampling": {"served": ["m1", {"model": "m1", "name": "other"}]}}, "sampling.served",
     "listed twice"),
    ({"add_sampling": {"served": [{"model": "m2", "method": "full", "mixture": "mostly",
                                   "name": "x"}]}}, "subtasks[1].sampling.served[0]",
     "give `mixture`, one of ['default']"),
    ({"add_sampling": {"served": [{"model": "m2", "mixture": "default", "name": "x"}]}},
     "subtasks.1.sampling.served.0", "give its `method` too"),
]


@pytest.mark.parametrize(("change", "field", "fix"), BAD_TASKS)
def test_a_bad_sampling_block_is_one_line_naming_file_field_and_fix(
        change: dict, field: str, fix: str, bases: dict[str, Path], tmp_path: Path) -> None:
    task = task_data(bases, add_methods=("none", "full"))
    if "sampling" in change:
        task["sampling"] = change["sampling"]
    if "add_sampling" in change:
        task["subtasks"][1]["sampling"] = change["add_sampling"]
    path = write_task(tmp_path, task)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: {field}"), message
    assert fix in message, message


def test_refusals_at_environment_construction_and_of_flags(
        bases: dict[str, Path], server: CompletionsServer, tmp_path: Path) -> None:
    path = write_task(tmp_path, task_data(bases, add_methods=("none", "soft")))
    spec = load_spec(path)
    cases = [  # (flags, what the one line says)
        ({"backend": "openai"}, f"{path}: sampling.base_url: backend openai (subtask parse) "
         "needs the server's URL"),
        ({"backend": "openai", "base_url": server.base_url},
         f"{path}: subtasks.parse.sampling.served: backend openai does not know the name "
         "the server serves model 'm1' under"),
        ({"backend": "openai", "base_url": server.base_url, "served": ["m1", "m2=m2"]},
         f"{path}: subtasks.add.methods: 'soft' fine-tunes 'm1'"),
        ({"backend": "vllm"}, f"{path}: subtasks.add.sampling.backend: vLLM serves no soft "
         "prompts, and method 'soft' (kind prompt)"),
        ({"backend": "tgi"}, "--backend tgi: not a backend; use one of transformers, vllm, "
         "openai"),
        ({"served": ["m9"]}, f"--served m9: {path} has no model 'm9'"),
        ({"base_url": "ftp://x"}, "--base-url: Value error, 'ftp://x' is not an http(s) URL"),
    ]
    for flags, said in cases:
        with pytest.raises(SpecError) as e:
            with_flags(spec, source=str(path), **flags)
        assert "\n" not in str(e.value) and str(e.value).startswith(said), (flags, e.value)
    replay = load_spec(write_tiny_task(tmp_path))
    with pytest.raises(SpecError, match=r"^--backend: .* is a replay task: it samples nothing"):
        with_flags(replay, source="t.yaml", backend="openai")
    with pytest.raises(SpecError, match=r"sampling: a replay task samples nothing"):
        load_spec(write_tiny_task(tmp_path, sampling={"backend": "vllm"}))


def test_a_merge_is_not_its_base_to_a_server(bases: dict[str, Path], server: CompletionsServer,
                                             tmp_path: Path) -> None:
    """A merge trains nothing itself but makes a new model: a base's served name does not
    stand for it; a served entry naming the merge does."""
    task = task_data(bases, add_methods=("none", "merged"),
                     sampling=openai_sampling(server))
    task["methods"] += [{"name": "lo", "kind": "lora", "options": {"steps": 2, "batch_size": 4}},
                        {"name": "merged", "kind": "merge",
                         "components": [{"method": "lo", "subtask": "add"}]}]
    path = write_task(tmp_path, task)
    with pytest.raises(SpecError) as e:
        with_flags(load_spec(path), source=str(path))
    assert str(e.value).startswith(f"{path}: subtasks.add.methods: 'merged' (kind merge) makes "
                                   "a new model of 'm1', which a server cannot")
    task["sampling"]["served"] += [{"model": m, "method": "merged", "name": f"{m}-merged"}
                                   for m in ("m1", "m2")]
    spec = with_flags(load_spec(write_task(tmp_path, task)), source=str(path))
    backend = LiveEnvironment(spec, cache_dir=tmp_path / "c", progress=False).backends["add"]
    assert served_name(spec, backend, "m2", "merged", "default") == "m2-merged"
    assert served_name(spec, backend, "m2", "none", "default") == "m2"


def test_flags_override_the_file_and_a_task_without_sampling_dumps_as_before(
        bases: dict[str, Path], server: CompletionsServer, tmp_path: Path) -> None:
    add_own = {"backend": "transformers", "served": [{"model": "m2", "name": "m2-chat"}]}
    path = write_task(tmp_path, task_data(bases, add_sampling=add_own))
    spec = load_spec(path)
    plain = load_spec(write_task(tmp_path / "plain", task_data(bases)))
    assert "sampling" not in plain.model_dump() and all(
        "sampling" not in s for s in plain.model_dump()["subtasks"])  # the task hash stays
    flagged = with_flags(spec, source=str(path), backend="openai", base_url=server.base_url,
                         served=["m1", "m2=m2-base"])
    backends = {s.name: LiveEnvironment(flagged, cache_dir=tmp_path / "c",
                                        progress=False).backends[s.name]
                for s in flagged.subtasks}
    assert {b.kind for b in backends.values()} == {"openai"}  # the flag wins over add's own
    assert served_name(flagged, backends["add"], "m2", "none", "default") == "m2-chat"
    assert served_name(flagged, backends["parse"], "m2", "none", "default") == "m2-base"
    assert served_name(flagged, backends["add"], "m1", "none", "default") == "m1"
    assert backends["add"].served_name("m1", "full", base=False, mixture="default") is None
    stored = parse_spec(flagged.model_dump(mode="json"), root=tmp_path)  # as a study keeps it
    assert stored.model_dump() == flagged.model_dump()
    assert with_flags(plain, source="x") is plain  # no flag: the same spec


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_vllm_is_chosen_and_refused_without_it_in_one_line(bases: dict[str, Path],
                                                           tmp_path: Path) -> None:
    path = write_task(tmp_path, task_data(bases, sampling={"backend": "vllm"}))
    spec = load_spec(path)
    with pytest.raises(SpecError) as e:  # what `planner optimize` says before it starts
        with_flags(spec, source=str(path))
    assert str(e.value) == (f"{path}: sampling.backend: backend vllm (subtasks parse, add) "
                            "needs vLLM, which is not installed here; pip install "
                            "'planner[gpu]' (a CUDA machine), or sample with --backend "
                            "transformers")
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    assert {b.kind for b in env.backends.values()} == {"vllm"}
    observation, error, transient = evaluate(lambda: env, alloc("m1", "m2"))
    assert observation is None and not transient
    assert error == ("planner.errors.SpecError: backends: sampling.backend: backend vllm needs "
                     "vLLM, which is not installed here; pip install 'planner[gpu]' (a CUDA "
                     "machine), or sample with --backend transformers")
    samplers = Samplers(task="t")
    with pytest.raises(SpecError, match=r"pip install 'planner\[gpu\]'"):
        samplers.get(Backend("vllm"), bases["m1"])
    assert samplers.loaded() == [] and not samplers.loads


def test_planner_optimize_backend_flags_reach_the_workers(
        bases: dict[str, Path], server: CompletionsServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags are applied to the spec, which the study stores and every worker's
    environment is built from (`partial(make_environment, spec)`, pickled to the worker)."""
    from planner.cli import app

    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    path = write_task(tmp_path, task_data(bases))
    flags = ["--backend", "openai", "--base-url", server.base_url, "--served", "m1",
             "--served", "m2"]
    before, db = len(server.requests), f"sqlite:///{tmp_path / 'p.db'}"
    app(["optimize", str(path), "--strategy", "random", "--trials", "1", "--db", db,
         "--json", "--executor", "local", *flags], standalone_mode=False)
    assert len(server.requests) > before  # sampled through the server
    study = Store(db).get_study("backends-random")
    assert study is not None and study.task["sampling"]["backend"] == "openai"
    assert Store(db).trials("backends-random")[0].error is None

    spec = with_flags(load_spec(path), source=str(path), backend="openai",
                      base_url=server.base_url, served=["m1", "m2"])
    worker = pickle.loads(pickle.dumps(partial(make_environment, spec)))  # as sent to one
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "worker-cache"))  # nothing cached
    before = len(server.requests)
    observation, error, _ = evaluate(worker, alloc("m2", "m1"))
    assert error is None and observation is not None and len(server.requests) > before


def test_a_worker_sampling_through_a_server_loads_no_model_library(
        bases: dict[str, Path], server: CompletionsServer, tmp_path: Path) -> None:
    """A trial whose stages sample through a server loads no model here, so its worker
    imports the OpenAI client and none of torch, peft or transformers (~5 s a trial)."""
    path = write_task(tmp_path, task_data(bases, sampling=openai_sampling(server)))
    script = (
        "import json, sys; from envs.live.env import LiveEnvironment; "
        "from planner.space import Allocation; from planner.spec import load_spec; "
        "env = LiveEnvironment(load_spec(sys.argv[1]), cache_dir=sys.argv[2], progress=False); "
        "obs = env.evaluate(Allocation.from_dict(json.loads(sys.argv[3]))); "
        "print(json.dumps({'score': obs.score, 'loaded': "
        "[m for m in ('torch', 'peft', 'transformers', 'openai') if m in sys.modules]}))"
    )
    before = len(server.requests)
    out = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "cache"),
                          json.dumps(alloc("m1", "m2").to_dict())], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         cwd=Path(__file__).resolve().parents[1])
    assert len(server.requests) > before  # drawn through the server, not from a cache
    assert json.loads(out.stdout)["loaded"] == ["openai"]


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed")
def test_planner_optimize_refuses_vllm_without_it_before_anything_runs(
        bases: dict[str, Path], tmp_path: Path) -> None:
    from planner.cli import app

    path = write_task(tmp_path, task_data(bases))
    db = tmp_path / "p.db"
    with pytest.raises(SpecError) as e:  # `planner` prints it as one line and exits 2
        app(["optimize", str(path), "--backend", "vllm", "--db", f"sqlite:///{db}"],
            standalone_mode=False)
    assert str(e.value).startswith(f"{path}: sampling.backend: backend vllm (subtasks parse, "
                                   "add) needs vLLM") and not db.exists()
