"""The `llm` reasoner end to end against a real OpenAI-compatible server on 127.0.0.1.

The server answers /v1/chat/completions from a script: valid plans, malformed JSON, an
over-budget plan, a reply slower than the client's timeout, and HTTP 500.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from envs import make_environment
from planner.cli import app
from planner.report import reasoner_fallbacks
from planner.search import AgentOptions
from planner.search.agent import LLMConfig
from planner.search.agent.reasoners.llm import ReplyError, parse_reply
from planner.spec import load_spec
from planner.store import Store
from planner.study import optimize
from tests.conftest import write_tiny_task

SECRET = "sk-test-must-never-be-stored-0123456789"


class ScriptedServer:
    """Pops one scripted behaviour per request: ("reply", text), ("slow", s, text),
    ("status", code); when the script is empty, HTTP 500."""

    def __init__(self) -> None:
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization", ""))
                action = server.script.pop(0) if server.script else ("status", 500)
                if action[0] == "status":
                    self._send(action[1], {"error": {"message": "scripted failure"}})
                    return
                if action[0] == "slow":
                    time.sleep(action[1])
                text = action[-1]
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20,
                              "total_tokens": 120}})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def spec(tmp_path: Path):
    return load_spec(write_tiny_task(tmp_path, budget="20gpu-h"))


def _plan(model: str, method: str, n: int) -> dict:
    return {"model": model, "method": method, "samples": n, "aggregator": "oracle"}


def _reply(*allocs: dict, insights: tuple[str, ...] = ("extract likes the large model",)) -> str:
    return json.dumps({"insights": list(insights), "proposals": list(allocs)})


GOOD = {"extract": _plan("large", "ckpt-a", 16), "solve": _plan("small", "ckpt-b", 16)}
GOOD2 = {"extract": _plan("small", "ckpt-a", 2), "solve": _plan("large", "ckpt-a", 8)}
OVER = {"extract": _plan("large", "ckpt-b", 16), "solve": _plan("large", "ckpt-b", 16)}


def _n_init(spec) -> int:
    """How many probes the agent's init node proposes for this task."""
    store = Store("sqlite://")
    optimize(spec, make_environment(spec), store=store, budget=spec.budget, strategy="agent",
             n_trials=1, study="probe")
    return len(store.steps("probe")[0].payload["proposals"])


def _optimize(spec, server: ScriptedServer, n_extra: int, store: Store | None = None, **llm):
    """Run the agent until `n_extra` trials past its init probes."""
    config = LLMConfig(server.url, "scripted", **{"timeout_s": 2.0, "max_retries": 0,
                                                   "repairs": 2, "nodes": ("propose",), **llm})
    store = store or Store("sqlite://")
    result = optimize(spec, make_environment(spec), store=store, budget=spec.budget,
                      strategy="agent", n_trials=_n_init(spec) + n_extra, study="llm",
                      agent=AgentOptions(reasoner="llm", llm=config, patience=None))
    proposes = [s.payload for s in store.steps("llm") if s.node == "propose"]
    return result, proposes, store


def test_valid_plans_are_evaluated_with_tokens_recorded(spec, server) -> None:
    server.script = [("reply", _reply(GOOD, GOOD2))]
    result, proposes, store = _optimize(spec, server, 1)
    step = proposes[0]
    assert step["reasoner"] == "llm" and step["fallback"] is None
    assert step["tokens"] == {"prompt": 100, "completion": 20} and step["latency_s"] > 0
    last = result.trials[-1]
    assert last.source == "agent-llm" and last.allocation.to_dict()["extract"]["model"] == "large"
    prompt = server.requests[0]["messages"][1]["content"]
    assert "Trials" in prompt and "Candidates" in prompt and "ckpt-b" in prompt
    notes = [i for i in store.insights("llm") if i.kind == "note"]
    assert notes and notes[0].text == "extract likes the large model"


def test_requests_constrain_replies_to_the_spaces_values(spec, server) -> None:
    server.script = [("reply", _reply(GOOD))]
    _optimize(spec, server, 1)
    form = server.requests[0]["response_format"]
    assert form["type"] == "json_schema" and form["json_schema"]["strict"] is True
    allocation = form["json_schema"]["schema"]["properties"]["proposals"]["items"]
    assert allocation["required"] == ["extract", "solve"]
    plan = allocation["properties"]["extract"]["properties"]
    assert plan["model"] == {"enum": ["small", "large"]}
    assert plan["samples"] == {"enum": [1, 2, 4, 8, 16]}
    assert plan["method"] == {"enum": ["ckpt-a", "ckpt-b"]}


def test_llama_cpp_style_server_gets_a_json_object_schema(spec, server) -> None:
    # llama.cpp's server answers json_schema with HTTP 500 and honours json_object + schema
    server.script = [("status", 500), ("reply", _reply(GOOD)), ("reply", _reply(GOOD2))]
    result, proposes, _ = _optimize(spec, server, 2, max_retries=2)
    forms = [r["response_format"]["type"] for r in server.requests]
    assert forms == ["json_schema", "json_object", "json_object"]  # no retries of the 500
    assert server.requests[1]["response_format"]["schema"]["required"] == [
        "insights", "proposals"]
    assert [p["reasoner"] for p in proposes] == ["llm", "llm"]
    assert [t.source for t in result.trials[-2:]] == ["agent-llm", "agent-llm"]


def test_a_server_without_structured_output_is_asked_plainly(spec, server) -> None:
    server.script = [("status", 400), ("status", 400), ("reply", _reply(GOOD)),
                     ("reply", _reply(GOOD2))]
    result, proposes, _ = _optimize(spec, server, 2)
    assert [r.get("response_format", {}).get("type") for r in server.requests] == [
        "json_schema", "json_object", None, None]
    assert [t.source for t in result.trials[-2:]] == ["agent-llm", "agent-llm"]


def test_malformed_then_fenced_json_is_repaired(spec, server) -> None:
    server.script = [("reply", "Sure! {proposals: [oops"),
                     ("reply", "Here you go:\n```json\n" + _reply(GOOD) + "\n```")]
    result, proposes, _ = _optimize(spec, server, 1)
    attempts = proposes[0]["attempts"]
    assert len(attempts) == 2 and "no JSON object" in attempts[0]["errors"][0]
    repair = server.requests[1]["messages"][-1]["content"]
    assert "no JSON object" in repair
    assert result.trials[-1].source == "agent-llm"


def test_over_budget_and_duplicate_plans_are_refused(spec, server) -> None:
    server.script = [("reply", _reply(OVER)), ("reply", _reply(GOOD)),
                     ("reply", _reply(GOOD)), ("reply", _reply(GOOD2))]
    result, proposes, _ = _optimize(spec, server, 2)
    first = proposes[0]["attempts"]
    assert "over the budget" in first[0]["errors"][0]
    assert "over the budget" in server.requests[1]["messages"][-1]["content"]
    second = proposes[1]["attempts"]
    assert "already evaluated" in second[0]["errors"][0]
    assert [t.source for t in result.trials[-2:]] == ["agent-llm", "agent-llm"]
    assert all(t.cost.total_gpu_hours <= 20 for t in result.trials)


def test_timeout_falls_back_to_builtin(spec, server) -> None:
    server.script = [("slow", 1.5, _reply(GOOD))]
    result, proposes, _ = _optimize(spec, server, 1, timeout_s=0.3)
    step = proposes[0]
    assert step["reasoner"] == "builtin" and "Timeout" in step["fallback"]
    assert result.trials[-1].source == "agent-builtin"


def test_persistent_500_rests_the_model_then_asks_again(spec, server) -> None:
    result, proposes, _ = _optimize(spec, server, 4, max_retries=1)
    assert "HTTP 500" in proposes[0]["fallback"]
    # each asked step: json_schema and json_object once each, then plain (1 try + 1 retry);
    # failing plainly too means the server is down, not refusing a form. After 2 failed
    # steps the model rests 1 step, then is asked again (and fails: rests 2)
    assert len(server.requests) == 12
    assert [r.get("response_format", {}).get("type") for r in server.requests[4:6]] == [
        "json_schema", "json_object"]
    assert proposes[2]["fallback"] == ("language model failed 2 steps in a row; resting it, "
                                       "it is asked again in 1 step")
    assert proposes[2]["attempts"] == [] and proposes[3]["attempts"]
    assert all(t.source == "agent-builtin" for t in result.trials[-4:])


def test_a_resumed_run_asks_a_resting_model_at_once(spec, server, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'resume.db'}")  # the graph's state is kept there
    _, proposes, _ = _optimize(spec, server, 3, max_retries=0, store=store)
    assert "resting it" in proposes[-1]["fallback"]
    asked = len(server.requests)
    server.script = [("reply", _reply(GOOD))]
    result, proposes, _ = _optimize(spec, server, 4, max_retries=0, store=store)
    assert len(server.requests) == asked + 1
    assert result.trials[-1].source == "agent-llm"


def test_parse_reply_forms() -> None:
    assert parse_reply('{"proposals": [], "insights": ["a"]}') == (["a"], [])
    assert parse_reply('text {"proposals": [{"x": 1}]} more')[1] == [{"x": 1}]
    with pytest.raises(ReplyError):
        parse_reply('{"plans": []}')


def test_cli_llm_secret_never_stored(tmp_path: Path, server, monkeypatch) -> None:
    task = write_tiny_task(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.script = [("reply", _reply(GOOD))]
    db_file = tmp_path / "cli.db"
    runner = CliRunner()
    trials = str(_n_init(load_spec(task)) + 1)
    res = runner.invoke(app, ["optimize", str(task), "--db", f"sqlite:///{db_file}",
                              "--trials", trials, "--reasoner", "llm", "--llm-base-url",
                              server.url, "--llm-model", "scripted",
                              "--llm-nodes", "propose"])
    assert res.exit_code == 0, res.output
    assert server.auth[0] == f"Bearer {SECRET}"  # the key was used ...
    shown = runner.invoke(app, ["trace", "tiny-agent", "--db", f"sqlite:///{db_file}",
                                "--json"]).stdout
    assert "agent-llm" in shown
    for path in tmp_path.glob("cli.db*"):  # ... but is nowhere in the database files
        assert SECRET.encode() not in path.read_bytes()
    assert SECRET not in shown and SECRET not in res.output


def test_fallbacks_are_reported_by_optimize(tmp_path: Path, server) -> None:
    task = write_tiny_task(tmp_path)
    server.script = [("status", 400), ("status", 400), ("reply", "no json here"),
                     ("reply", "still none"), ("reply", "nope")]
    trials = str(_n_init(load_spec(task)) + 1)
    res = CliRunner().invoke(app, ["optimize", str(task), "--db", "sqlite://", "--json",
                                   "--trials", trials, "--reasoner", "llm", "--llm-base-url",
                                   server.url, "--llm-model", "scripted",
                                   "--llm-nodes", "propose"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["llm_fallbacks"]
    assert report["propose_steps"] == 1 and report["fallbacks"] == 1
    assert report["reasons"] == ["no usable proposal after 3 replies"]


def test_the_prompt_stays_bounded_as_trials_grow() -> None:
    from planner.cost import CostModel
    from planner.search.agent import prompts
    from planner.space import SearchSpace

    spec = load_spec(Path(__file__).parents[1] / "envs/replay/tasks/monkeys_gsm8k.yaml")
    store = Store("sqlite://")
    trials = optimize(spec, make_environment(spec), store=store, budget=spec.budget,
                      strategy="random", n_trials=120, study="r").trials
    space, cost = SearchSpace(spec), CostModel(spec)

    def message(n: int) -> str:
        return prompts.user_message(space, cost, 2000.0, trials[:n], [], [], 1)

    short, long, longer = message(prompts.MAX_TRIALS), message(60), message(120)
    assert all(f"- {t.number}: " in short for t in trials[:prompts.MAX_TRIALS])  # verbatim
    assert len(longer) < 1.1 * len(long) < 1.5 * len(short)
    best = max(trials, key=lambda t: t.score or 0.0)
    assert f"- {best.number}: {best.score:.4f}" in longer  # the best is always shown
    assert "Best stage score per served model" in longer


POOR = {"extract": _plan("large", "ckpt-a", 2), "solve": _plan("large", "ckpt-a", 2)}


def test_a_plan_the_trials_rate_far_below_the_best_is_vetoed(spec, server) -> None:
    server.script = [("reply", _reply(POOR)), ("reply", _reply(GOOD))]
    result, proposes, _ = _optimize(spec, server, 1)
    first = proposes[0]["attempts"][0]["errors"][0]
    assert "far below the best candidate" in first
    assert "far below the best candidate" in server.requests[1]["messages"][-1]["content"]
    assert result.trials[-1].allocation.to_dict()["extract"]["samples"] == 16
    assert result.trials[-1].source == "agent-llm"


def test_the_model_reflects_and_its_insights_reach_the_next_proposal(spec, server) -> None:
    said = "solve saturates early; extract gains from the large model"
    server.script = [("reply", "no json"), ("reply", json.dumps({"insights": [said]})),
                     ("reply", _reply(GOOD))]
    result, proposes, store = _optimize(spec, server, 1, nodes=("reflect", "propose"))
    reflects = [s.payload for s in store.steps("llm") if s.node == "reflect"]
    first = reflects[0]
    assert first["reasoner"] == "llm" and first["fallback"] is None
    assert "no JSON object" in first["attempts"][0]["errors"][0]  # then repaired
    assert {"subtask": "*", "kind": "note", "text": said, "data": {}} in first["insights_after"]
    assert any(i["kind"] == "model" for i in first["insights_after"])  # the builtin's too
    assert said in server.requests[2]["messages"][1]["content"]  # the propose prompt
    assert said in [i.text for i in store.insights("llm")]
    assert result.trials[-1].source == "agent-llm"


def test_a_failing_reflect_falls_back_to_the_builtins_insights(spec, server) -> None:
    server.script = [("status", 500), ("status", 500), ("status", 500),
                     ("reply", _reply(GOOD))]
    result, _, store = _optimize(spec, server, 1, nodes=("reflect", "propose"))
    reflect = next(s.payload for s in store.steps("llm") if s.node == "reflect")
    assert reflect["reasoner"] == "builtin" and "HTTP 500" in reflect["fallback"]
    assert any(i["kind"] == "model" for i in reflect["insights_after"])
    assert result.trials[-1].source == "agent-llm"
    said = reasoner_fallbacks(store.steps("llm"))  # what the console and --json report
    assert said["reflect_steps"] == 1 and said["fallbacks"] == 1
    assert "HTTP 500" in said["reasons"][0]
