"""The `llm` reasoner end to end against a real OpenAI-compatible server on 127.0.0.1.

The server answers /v1/chat/completions from a script: valid plans, malformed JSON, an
over-budget plan, tool calls, a reply slower than the client's timeout, and HTTP 500; or
it refuses every request that offers tools, as a server without tool calling does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from envs import make_environment
from planner.cli import app
from planner.cost import CostModel
from planner.report import reasoner_fallbacks
from planner.search import AgentOptions, SearchContext
from planner.search.agent import LLMConfig, prompts
from planner.search.agent.graph import SPENT, _settle, build_graph
from planner.search.agent.reasoners.builtin import BuiltinReasoner
from planner.search.agent.reasoners.llm import LLMReasoner, ReplyError, parse_reply
from planner.search.agent.state import EARLIER, LLM_CREDIT, MAX_EXCHANGES
from planner.search.agent.steps import InitStep, read_step
from planner.search.agent.strategy import checkpointer, thread_id
from planner.space import Allocation, SearchSpace
from planner.spec import load_spec
from planner.store import Store, TrialStatus
from planner.study import optimize
from tests.agent_tasks import cascades_trials
from tests.conftest import write_tiny_task

SECRET = "sk-test-must-never-be-stored-0123456789"


class ScriptedServer:
    """Pops one scripted behaviour per request: ("reply", text), ("slow", s, text),
    ("status", code), ("tools", [(name, arguments), ...]); when the script is empty, HTTP
    500, or with `pick_last` the last candidate the prompt lists (a weak model's answer).
    With `refuse_tools`, a request offering tools gets HTTP 400 (the script waits)."""

    def __init__(self) -> None:
        self.script: list[tuple] = []
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.refuse_tools = False
        self.pick_last = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.auth.append(self.headers.get("Authorization", ""))
                if server.refuse_tools and "tools" in body:
                    self._send(400, {"error": {"message": "tools are not supported"}})
                    return
                action = (server.script.pop(0) if server.script else
                          ("reply", _last_candidate(body)) if server.pick_last else
                          ("status", 500))
                if action[0] == "status":
                    self._send(action[1], {"error": {"message": "scripted failure"}})
                    return
                if action[0] == "slow":
                    time.sleep(action[1])
                message = {"role": "assistant", "content": action[-1]}
                if action[0] == "tools":
                    message = {"role": "assistant", "content": None, "tool_calls": [
                        {"id": f"call_{i}", "type": "function",
                         "function": {"name": name, "arguments": arguments}}
                        for i, (name, arguments) in enumerate(action[1])]}
                self._send(200, {
                    "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if action[0] == "tools"
                                 else "stop"}],
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


def _last_candidate(request: dict) -> str:
    """A reply proposing the last candidate a propose prompt lists (none if it lists none)."""
    prompt = request["messages"][-1]["content"] or ""
    listed = [json.loads(line.split(": ", 1)[1])
              for line in prompt.split("predicted end score):")[-1].splitlines()
              if "predicted end score):" in prompt and line.startswith("- ") and "{" in line]
    return json.dumps({"insights": [], "proposals": listed[-1:]})


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
GOOD2 = {"extract": _plan("small", "ckpt-b", 16), "solve": _plan("large", "ckpt-a", 16)}
OVER = {"extract": _plan("large", "ckpt-b", 16), "solve": _plan("large", "ckpt-b", 16)}


def _n_init(spec) -> int:
    """How many probes the agent's init node proposes for this task."""
    store = Store("sqlite://")
    optimize(spec, make_environment(spec), store=store, budget=spec.budget, strategy="agent",
             n_trials=1, study="probe")
    return len(store.steps("probe")[0].payload["proposals"])


def _optimize(spec, server: ScriptedServer, n_extra: int, store: Store | None = None, **llm):
    """Run the agent until `n_extra` trials past its init probes; the model is asked at
    every propose step (`guard` off) unless `llm` says otherwise."""
    config = LLMConfig(server.url, "scripted", **{"timeout_s": 2.0, "max_retries": 0,
                                                   "repairs": 2, "nodes": ("propose",),
                                                   "tool_rounds": 0, "guard": False, **llm})
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
                              "--llm-nodes", "propose", "--no-llm-guard"])
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
                                   "--llm-nodes", "propose", "--llm-tool-rounds", "0",
                                   "--no-llm-guard"])
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
FEWEST = {"extract": _plan("large", "ckpt-a", 1), "solve": _plan("large", "ckpt-a", 1)}


def test_a_plan_the_trials_rate_far_below_the_best_is_vetoed(spec, server) -> None:
    # the first pick (n=1) is taken: nothing rated few samples yet; after it scored, n=2
    # is rated far below the best candidate and the model is asked again
    server.script = [("reply", _reply(FEWEST)), ("reply", _reply(POOR)),
                     ("reply", _reply(GOOD))]
    result, proposes, _ = _optimize(spec, server, 2)
    assert result.trials[-2].allocation.to_dict() == {
        s: {**plan, "mixture": "default"} for s, plan in FEWEST.items()}
    first = proposes[1]["attempts"][0]["errors"][0]
    assert "far below the best candidate" in first
    assert "far below the best candidate" in server.requests[2]["messages"][-1]["content"]
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
    propose = server.requests[2]["messages"]
    assert said in propose[-1]["content"]  # the propose prompt's insight memory ...
    assert said in propose[2]["content"] and propose[2]["role"] == "assistant"  # ... and chat
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


def _key(data: dict, spec) -> str:
    return SearchSpace(spec).coerce(data).key()


def test_the_model_calls_tools_and_reads_their_results(spec, server, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tools.db'}"
    server.script = [("tools", [("frontier", '{"k": 3}'),
                                ("predict", json.dumps({"allocation": GOOD})),
                                ("price", json.dumps({"allocation": OVER}))]),
                     ("reply", _reply(GOOD))]
    result, proposes, store = _optimize(spec, server, 1, store=Store(db), tool_rounds=3)
    first, second = server.requests
    assert [t["function"]["name"] for t in first["tools"]] == [
        "predict", "price", "frontier", "trial"]
    assert "response_format" not in first  # a constrained decoder could not call a tool
    allocation = first["tools"][0]["function"]["parameters"]["properties"]["allocation"]
    assert allocation["properties"]["extract"]["properties"]["model"] == {
        "enum": ["small", "large"]}
    prompt = first["messages"][-1]["content"]
    assert "call frontier(k)" in prompt and "Candidates a statistical model" not in prompt
    answers = [m for m in second["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answers] == ["call_0", "call_1", "call_2"]
    frontier, predict, price = (json.loads(m["content"]) for m in answers)
    run = {t.allocation.key() for t in result.trials[:-1]}
    candidates = [Allocation.from_dict(c["allocation"]) for c in frontier["candidates"]]
    assert len(candidates) == 3 and not run & {a.key() for a in candidates}
    # the builtin's ranking: its memory has large/ckpt-a flat from a small n in both stages
    # (this task's scores are near 1), so more samples of it rank last
    caps = {i.subtask: i.data["saturates_at"] for i in store.insights("llm")
            if i.kind == "saturation" and i.data["arm"]["model"] == "large"
            and i.data["arm"]["method"] == "ckpt-a"}  # the last insight of each stage wins
    assert set(caps) == {"extract", "solve"} and max(caps.values()) < 16
    assert not any(a[s].model == "large" and a[s].method == "ckpt-a" and a[s].samples > caps[s]
                   for a in candidates for s in ("extract", "solve"))
    assert all(c["gpu_hours"] <= 20 for c in frontier["candidates"])
    stage = predict["stages"]["extract"]
    assert stage["low"] <= stage["mean"] <= stage["high"] and 0 < predict["end_score"] < 1
    assert price["fits"] is False and price["gpu_hours"] > price["budget"] == 20
    step = proposes[0]
    calls = step["attempts"][0]["tool_calls"]
    assert [c["name"] for c in calls] == ["frontier", "predict", "price"]
    assert calls[2]["result"] == price and step["reasoner"] == "llm"
    assert step["tokens"] == {"prompt": 200, "completion": 40}  # both replies counted
    last = result.trials[-1]
    assert last.source == "agent-llm" and last.allocation.key() == _key(GOOD, spec)
    number = next(s.number for s in store.steps("llm") if s.node == "propose")
    shown = CliRunner().invoke(app, ["trace", "llm", "--db", db, "--step", str(number)])
    assert shown.exit_code == 0 and 'tool frontier({"k": 3}) -> {"candidates"' in shown.stdout


def test_bad_tool_calls_are_answered_with_errors_and_rounds_are_bounded(spec, server) -> None:
    server.script = [
        ("tools", [("predict", json.dumps({"allocation": {"extract": {"model": "huge"}}})),
                   ("price", "not json"), ("trial", '{"number": 999}'), ("nope", "{}"),
                   ("frontier", '{"k": 1}')]),
        ("tools", [("frontier", '{"k": 0}'), ("trial", '{"n": 1}')]),
        ("reply", _reply(GOOD))]
    result, proposes, _ = _optimize(spec, server, 1, tool_rounds=2)
    answers = [json.loads(m["content"])["error"] for m in server.requests[1]["messages"]
               if m["role"] == "tool"]
    assert len(answers) == 5
    assert "extract.model: 'huge' is not allowed" in answers[0]
    assert "not JSON" in answers[1] and "no trial 999" in answers[2]
    assert "unknown tool 'nope'" in answers[3] and "at most 4 calls" in answers[4]
    last = server.requests[2]  # rounds spent: the answer is asked in structured form
    assert "tools" not in last and last["response_format"]["type"] == "json_schema"
    assert last["messages"][-1]["content"].startswith("No more tool calls")
    late = [json.loads(m["content"])["error"] for m in last["messages"] if m["role"] == "tool"]
    assert "from 1 to 8" in late[-2] and "takes ['number']" in late[-1]
    assert len(proposes[0]["attempts"]) == 3 and proposes[0]["reasoner"] == "llm"
    assert result.trials[-1].source == "agent-llm"


def test_a_server_refusing_tools_gets_the_frontier_in_the_prompt(spec, server) -> None:
    server.refuse_tools = True
    server.script = [("reply", _reply(GOOD)), ("reply", _reply(GOOD2))]
    result, proposes, _ = _optimize(spec, server, 2, tool_rounds=3)
    assert ["tools" in r for r in server.requests] == [True, False, False]  # refused once
    assert [r["response_format"]["type"] for r in server.requests[1:]] == ["json_schema"] * 2
    system, prompt = (server.requests[1]["messages"][i]["content"] for i in (0, -1))
    assert "Candidates a statistical model rates highest" in prompt
    assert prompts.TOOLS not in system
    assert [(p["reasoner"], p["fallback"]) for p in proposes] == [("llm", None)] * 2
    assert [t.source for t in result.trials[-2:]] == ["agent-llm", "agent-llm"]


def _checkpointed(store: Store, study: str) -> dict:
    """The graph state the study's checkpoint holds."""
    with checkpointer(store.url) as saver:
        graph = build_graph().compile(checkpointer=saver)
        return graph.get_state({"configurable": {"thread_id": thread_id(study, 0)}}).values


def test_the_conversation_is_checkpointed_bounded_and_resumed(spec, server,
                                                             tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'chat.db'}")
    said = [json.dumps({"insights": [f"insight {i}"]}) for i in range(7)]
    server.script = [("reply", s) for s in said[:5]]
    _optimize(spec, server, 5, store=store, nodes=("reflect",))
    assert len(server.requests) == 5  # a reflect step after each evaluation but the last
    messages = _checkpointed(store, "llm")["messages"]
    assert messages[0] == {"role": "system", "content": EARLIER}  # the first one folded
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * MAX_EXCHANGES
    assert [m["content"] for m in messages[2::2]] == said[1:5]
    assert messages[1]["content"].startswith("[reflect after")
    second = server.requests[1]["messages"]  # the conversation reaches the next request
    assert second[1]["content"].startswith("[reflect after") and second[2]["content"] == said[0]
    server.script = [("reply", s) for s in said[5:]]
    _optimize(spec, server, 7, store=store, nodes=("reflect",))
    resumed = server.requests[5]["messages"]
    assert EARLIER in resumed[0]["content"]
    assert resumed[-2] == {"role": "assistant", "content": said[4]}
    assert max(len(r["messages"]) for r in server.requests) == 2 + 2 * MAX_EXCHANGES
    assert [m["content"] for m in _checkpointed(store, "llm")["messages"][2::2]] == said[3:7]


def _init_run(spec, server: ScriptedServer, n_trials: int,
              guard: bool = False) -> tuple[list, InitStep, Store]:
    """The agent with the model answering init (its probes as given, unless `guard`)."""
    store = Store("sqlite://")
    config = LLMConfig(server.url, "scripted", timeout_s=2.0, max_retries=0, nodes=("init",),
                       tool_rounds=0, guard=guard)
    result = optimize(spec, make_environment(spec), store=store, budget=spec.budget,
                      strategy="agent", n_trials=n_trials, study="llm",
                      agent=AgentOptions(reasoner="llm", llm=config, patience=None))
    init = read_step(store.steps("llm")[0])
    assert isinstance(init, InitStep)
    return result.trials, init, store


def test_the_model_answers_init_and_its_probes_are_validated(spec, server) -> None:
    server.script = [("reply", _reply(OVER, GOOD, GOOD, GOOD2, insights=("probe both",)))]
    trials, init, store = _init_run(spec, server, 2)
    assert init.reasoner == "llm" and init.fallback is None and init.summary == "llm: 2 probes"
    errors = init.attempts[0].errors
    assert "over the budget" in errors[0] and "already evaluated or proposed" in errors[1]
    assert [t.allocation.key() for t in trials] == [_key(GOOD, spec), _key(GOOD2, spec)]
    assert all(t.source == "agent-init" for t in trials)
    request = server.requests[0]
    assert "No trial has run yet" in request["messages"][-1]["content"]
    schema = request["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["proposals"]["maxItems"] == _n_init(spec)
    insights = schema["properties"]["insights"]  # bounded: a constrained reply must end
    assert insights["maxItems"] == 3 and insights["items"]["maxLength"] == 200
    assert "probe both" in [i.text for i in store.insights("llm")]


def test_the_guard_keeps_the_probe_design_beside_one_probe_of_the_models(spec,
                                                                          server) -> None:
    design = [Allocation.from_dict(p) for p in _init_run(spec, server, 1)[1].proposals]
    server.requests.clear()
    # a model answering one of the design's probes: the design, whole, and nothing else
    server.script = [("reply", _reply(design[-1].to_dict()))]
    trials, init, _ = _init_run(spec, server, _n_init(spec) + 1, guard=True)
    assert len(server.requests) == 1 and init.reasoner == "llm"
    assert [Allocation.from_dict(p) for p in init.proposals] == design
    request = server.requests[0]
    assert request["response_format"]["json_schema"]["schema"]["properties"]["proposals"][
        "maxItems"] == 1
    assert "The design runs in full" in request["messages"][-1]["content"]
    # one answering two probes of its own: the first of them, then the design
    server.script = [("reply", _reply(GOOD, GOOD2))]
    trials, init, _ = _init_run(spec, server, _n_init(spec) + 1, guard=True)
    assert [Allocation.from_dict(p).key() for p in init.proposals] == [
        _key(GOOD, spec), *(a.key() for a in design)]
    assert init.rationale[0] == "chosen by the language model"
    assert [t.allocation.key() for t in trials][:2] == [_key(GOOD, spec), design[0].key()]


def test_a_failing_init_falls_back_to_the_builtins_probes(spec, server) -> None:
    server.script = [("reply", _reply(OVER))] * 3
    trials, init, store = _init_run(spec, server, _n_init(spec))
    assert init.reasoner == "builtin" and init.fallback == "no usable probes after 3 replies"
    assert len(trials) == len(init.proposals) == len(init.rationale) == _n_init(spec)
    assert reasoner_fallbacks(store.steps("llm"))["init_steps"] == 1


def test_a_repair_after_a_tool_offering_request_is_structured(spec, server) -> None:
    # a server that ignores `tools` answers unconstrained once; the repair is constrained
    server.script = [("reply", "I would pick the large model"), ("reply", _reply(GOOD))]
    result, proposes, _ = _optimize(spec, server, 1, tool_rounds=3)
    first, second = server.requests
    assert "tools" in first and "response_format" not in first
    assert "tools" not in second and second["response_format"]["type"] == "json_schema"
    assert "no JSON object" in second["messages"][-1]["content"]
    assert proposes[0]["reasoner"] == "llm" and result.trials[-1].source == "agent-llm"


def test_a_near_sure_gain_is_taken_without_asking_the_model(server) -> None:
    """On cascades-mmlu-gsm8k the optimum joins stage plans evaluated apart; once their known
    scores beat the best trial, the step is the builtin's: a weak model once passed such a
    gain over for a plan the veto let through."""
    spec = load_spec(Path(__file__).parents[1] / "envs/replay/tasks/cascades_mmlu_gsm8k.yaml")
    env = make_environment(spec)
    cost_model = CostModel(spec, env.calibration())
    ctx = SearchContext(SearchSpace(spec), cost_model, spec.hardware.gpu_hours(spec.budget))
    trials = cascades_trials(env, cost_model)  # the gain: trial 8's MMLU, trial 5's GSM8K
    builtin = BuiltinReasoner(ctx)
    llm = LLMReasoner(ctx, LLMConfig(server.url, "scripted", max_retries=0), builtin)
    sure = builtin.near_sure(trials)
    assert sure is not None and sure["mmlu"] == trials[8].allocation["mmlu"]
    assert sure["gsm8k"] == trials[5].allocation["gsm8k"]
    proposal = llm.propose(trials, [], 1)
    assert proposal.allocations == [sure] and proposal.reasoner == "builtin"
    assert proposal.attempts == [] and server.requests == []


def test_the_guard_asks_a_weak_model_on_stalls_until_its_picks_stop_paying(
        server, tmp_path: Path) -> None:
    """A model that always answers the last candidate listed: the guard asks it only after a
    proposal that did not raise the best score, each pick of its own outside the builtin's
    top candidates bets the builtin's predicted score (+1 credit if reached, -1 if not),
    and with no credit left the builtin proposes without asking it, after a resume too (the
    run stops at 15 trials, its credit spent since trial 13, and resumes to 20)."""
    spec = load_spec(Path(__file__).parents[1] / "envs/replay/tasks/tutor_mmlu_gsm8k_math.yaml")
    server.pick_last = True
    store = Store(f"sqlite:///{tmp_path / 'guard.db'}")
    config = LLMConfig(server.url, "scripted", max_retries=0, nodes=("propose",),
                       tool_rounds=0)
    for n_trials in (15, 20):
        optimize(spec, make_environment(spec), store=store, budget=spec.budget,
                 strategy="agent", n_trials=n_trials, study="g",
                 agent=AgentOptions(reasoner="llm", llm=config, patience=None))
    credit, bets, asked, spent = LLM_CREDIT, 0, 0, 0
    for step in store.steps("g"):
        p = step.payload
        if step.node == "evaluate":
            scores = {json.dumps(t["allocation"], sort_keys=True): t["score"]
                      for t in p["trials"]}
            for item in p["inputs"]["pending"]:
                if "bet" in item:
                    bets += 1
                    score = scores[json.dumps(item["allocation"], sort_keys=True)]
                    credit += 1 if score >= item["bet"] else -1
        elif step.node == "propose":
            assert p["inputs"]["llm_credit"] == credit
            if credit <= 0:
                spent += 1
                assert p["fallback"] == SPENT and not p["attempts"]
            elif p["inputs"]["stale"] == 0:
                assert p["fallback"] is None and not p["attempts"]
            else:
                asked += 1
                assert p["attempts"]
    assert bets >= 1 and asked >= 1 and spent >= 1
    assert len(server.requests) == sum(
        len(s.payload["attempts"]) for s in store.steps("g") if s.node == "propose")


def test_a_bet_settles_on_the_score_its_trial_got_a_screens_included(spec) -> None:
    """+1 for a pick of the model's own that scored its bet (a screen on its share of the
    items: it never is a full trial), -1 for one below it or failed, 0 for other trials."""
    trial = optimize(spec, make_environment(spec), store=Store("sqlite://"),
                     budget=spec.budget, strategy="agent", n_trials=1, study="s").trials[0]
    bets = {trial.allocation.key(): 0.5}
    assert _settle(replace(trial, score=0.5), bets) == 1
    assert _settle(replace(trial, score=0.6, fidelity=0.25), bets) == 1
    assert _settle(replace(trial, score=0.4), bets) == -1
    assert _settle(replace(trial, score=None, status=TrialStatus.FAILED), bets) == -1
    assert _settle(replace(trial, score=0.4), {}) == 0
