"""The API key is found nowhere planner stores, traces or prints, even when a server echoes it.

A real HTTP server on 127.0.0.1 answers every request with the request's Authorization
header echoed back: in an HTTP 401 (OpenAI's error form) or 500 (vLLM's) error, or in a 200
chat reply (insights and a proposal naming it). `planner optimize` runs the agent on a small
replay task with the `llm` reasoner against it through the real CLI, then `planner trace`
and `planner show`; every output and the raw bytes of the SQLite database and its WAL (where
LangGraph also checkpoints the graph's state) are searched for the key.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from envs import make_environment
from planner.cli import app
from planner.search.agent.reasoners.llm import _describe
from planner.secrets import MASK, redact, redact_data, redact_json, register
from planner.spec import load_spec
from planner.store import Store
from planner.study import optimize
from tests.conftest import write_tiny_task
from tools.infer import OpenAISampler

# a quote and a backslash, so that JSON, repr and URL escaping each change how it looks
KEY = 'sk-proj-Zq8vN2"k\\Lx7Wp4Rt9Yb3-end'
FRAGMENTS = ("Zq8vN2", "Lx7Wp4Rt9Yb3")  # what survives any of those escapings
STUDY = "echo"


def _leaks(data: str | bytes) -> list[str]:
    """The key's fragments found in `data`."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [f for f in FRAGMENTS if f in text]


def _chat_reply(auth: str) -> str:
    """An assistant message that quotes `auth` in an insight and in a proposal's model,
    then allocations of the tiny task that fit its budget (some already probed)."""
    plan = {"model": "small", "method": "ckpt-a", "samples": 1, "aggregator": "oracle"}
    proposals = [{"extract": plan, "solve": {**plan, "model": auth}}]
    proposals += [{"extract": {**plan, "samples": a}, "solve": {**plan, "samples": b}}
                  for a in (1, 2, 4) for b in (1, 2, 4)]
    return json.dumps({"insights": [f"the server saw {auth}"], "proposals": proposals})


class EchoServer:
    """Answers every POST with its Authorization header: `status` 401 (OpenAI's error
    form), 500 (vLLM's) or 200 (a chat completion whose message is
    `_chat_reply`)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.auth: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                self.rfile.read(int(self.headers["Content-Length"]))
                auth = self.headers.get("Authorization", "")
                server.auth.append(auth)
                if server.status == 401:
                    body = json.dumps({"error": {"message": f"invalid header {auth}",
                                                 "authorization": auth}})
                    self._send(401, body, "application/json")
                elif server.status == 500:
                    body = json.dumps({"object": "error", "code": 500,
                                       "message": f"upstream failed for Authorization: {auth}"})
                    self._send(500, body, "application/json")
                else:
                    self._send(200, json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": "x",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": _chat_reply(auth)}}]}),
                        "application/json")

            def _send(self, code: int, body: str, kind: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-should-retry", "false")  # fast: no client backoff
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def echo() -> Iterator[Callable[[int], EchoServer]]:
    servers: list[EchoServer] = []

    def start(status: int) -> EchoServer:
        s = EchoServer(status)
        threading.Thread(target=s.httpd.serve_forever, daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.httpd.shutdown()
        s.httpd.server_close()


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def task(tmp_path: Path) -> Path:
    return write_tiny_task(tmp_path)


def _n_init(task: Path) -> int:
    """How many probes the agent's init node proposes for the task."""
    spec = load_spec(task)
    store = Store("sqlite://")
    optimize(spec, make_environment(spec), store=store, budget=spec.budget, strategy="agent",
             n_trials=1, study="probe")
    return len(store.steps("probe")[0].payload["proposals"])


def _db_bytes(db: Path) -> list[tuple[str, bytes]]:
    """The database file and its -wal / -journal companions, raw."""
    return [(p.name, p.read_bytes()) for p in sorted(db.parent.glob(db.name + "*"))]


@pytest.mark.parametrize("status", [401, 500, 200])
def test_echoed_key_is_nowhere(tmp_path: Path, task: Path, echo, status: int) -> None:
    server = echo(status)
    db = tmp_path / "x.db"
    url = f"sqlite:///{db}"
    runner = CliRunner()
    ran = runner.invoke(app, [
        "optimize", str(task), "--trials", str(_n_init(task) + 3), "--study", STUDY, "--db", url,
        "--strategy", "agent", "--reasoner", "llm", "--llm-base-url", server.url,
        "--llm-model", "x", "--llm-timeout", "5",
        "--no-llm-guard"])  # every propose step asks the model, so every path sees the echo
    assert ran.exit_code == 0, ran.output
    assert server.auth and all(a == f"Bearer {KEY}" for a in server.auth)  # the key was sent
    outputs = {"optimize": ran.output}
    for name, args in (("trace", []), ("trace --json", ["--json"]),
                       ("show --json", ["--json"])):
        command = name.split()[0]
        res = runner.invoke(app, [command, STUDY, "--db", url, *args])
        assert res.exit_code == 0, res.output
        outputs[name] = res.output
    steps = json.loads(outputs["trace --json"])
    proposes = [e for e in steps if e["kind"] == "step" and e["node"] == "propose"]
    assert proposes
    for e in proposes:  # each propose step in full, as the console shows it
        res = runner.invoke(app, ["trace", STUDY, "--db", url, "--step", str(e["number"])])
        outputs[f"step {e['number']}"] = res.output
    if status == 200:  # the reply reached the trace and the memory, masked
        assert MASK in proposes[0]["payload"]["attempts"][0]["response"]
        assert any(MASK in i.text for i in Store(url).insights(STUDY))
    else:
        assert f"HTTP {status}" in proposes[0]["payload"]["fallback"]
        assert MASK in proposes[0]["payload"]["fallback"]
    for name, text in outputs.items():
        assert not _leaks(text), name
    files = _db_bytes(db)
    assert any(b"checkpoints" in data for _, data in files)  # LangGraph's state is in there
    for name, data in files:
        assert not _leaks(data), name


def test_store_redacts_trial_errors_and_insights(tmp_path: Path, task: Path) -> None:
    """A failing evaluation whose error quotes the key, and insights holding it."""

    class FailingEnv:
        def __init__(self) -> None:
            self.inner = make_environment(load_spec(task))
            self.spec = self.inner.spec

        def calibration(self):
            return self.inner.calibration()

        def validation_items(self):
            return self.inner.validation_items()

        def evaluate(self, allocation, fidelity=1.0, draws=None, screen=None):
            raise RuntimeError(f"server said {json.dumps({'auth': f'Bearer {KEY}'})}")

    db = tmp_path / "t.db"
    store = Store(f"sqlite:///{db}")
    spec = load_spec(task)
    trials = optimize(spec, FailingEnv(), store=store, budget=spec.budget, strategy="random",
                      n_trials=2, study=STUDY).trials
    assert trials[0].error and MASK in trials[0].error
    store.add_insights(STUDY, 0, [{"subtask": "*", "kind": "note", "text": f"saw {KEY}",
                                   "data": {KEY: [KEY, 1]}}])
    assert store.insights(STUDY)[0].data == {MASK: [MASK, 1]}
    for name, data in _db_bytes(db):
        assert not _leaks(data), name


def test_openai_sampler_errors_do_not_carry_the_key(echo) -> None:
    for status in (401, 500):
        sampler = OpenAISampler("x", base_url=echo(status).url, max_retries=0, timeout=5)
        with pytest.raises(RuntimeError, match=f"HTTP {status}") as failed:
            sampler.sample(["1+1="], 1)
        shown = "".join(traceback.format_exception(failed.value))
        assert MASK in shown and not _leaks(shown)


def test_redact_masks_every_quoted_form(monkeypatch: pytest.MonkeyPatch) -> None:
    escaped = json.dumps(KEY)[1:-1]
    for text in (KEY, f"Bearer {KEY}", escaped, json.dumps(escaped), repr(KEY),
                 json.dumps({"a": [f"x {KEY} y"]})):
        assert not _leaks(redact(text)) and MASK in redact(text), text
    assert redact(f"a{KEY}b{KEY}") == f"a{MASK}b{MASK}"
    assert json.loads(redact_json({KEY: [KEY, 1.5, None]})) == {MASK: [MASK, 1.5, None]}
    assert redact_data((KEY, {"k": KEY})) == [MASK, {"k": MASK}]
    # short values and names that only look like secrets are left alone
    monkeypatch.setenv("MY_TOKEN", "short")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "definitely")
    monkeypatch.setenv("PIP_KEYRING_PROVIDER", "subprocess")
    assert redact("short definitely subprocess") == "short definitely subprocess"
    monkeypatch.setenv("PGPASSWORD", "hunter2hunter2")
    assert redact("password hunter2hunter2") == f"password {MASK}"
    # the environment is read again whenever it changed since the last call
    monkeypatch.setenv("PGPASSWORD", "swordfish-1234")
    assert redact("hunter2hunter2 swordfish-1234") == f"hunter2hunter2 {MASK}"
    monkeypatch.delenv("PGPASSWORD")
    assert redact("swordfish-1234") == "swordfish-1234"
    register("registered-in-code-42")
    assert redact("k=registered-in-code-42") == f"k={MASK}"


def test_a_long_error_is_redacted_before_it_is_cut() -> None:
    described = _describe(RuntimeError("x" * 280 + KEY))  # the cut falls inside the key
    assert described.endswith(MASK)
