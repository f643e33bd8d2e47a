"""OpenAISampler against a real HTTP server on 127.0.0.1 whose completions come from a
TransformersSampler on the tiny model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tools.infer import OpenAISampler, TransformersSampler

PROMPTS = ["12+345=", "7+8=", "kim got 3 pens, then 4. sum:"]


class CompletionsServer(ThreadingHTTPServer):
    """POST /v1/completions; can fail the first requests with 500 and cap choices per answer."""

    def __init__(self, sampler: TransformersSampler, *, failures: int = 0, max_choices: int = 99):
        super().__init__(("127.0.0.1", 0), CompletionsHandler)
        self.sampler = sampler
        self.failures = failures
        self.max_choices = max_choices
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
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
            self.server.auth_headers.append(self.headers["Authorization"])
            if self.path != "/v1/completions":
                return self._reply(404, {"error": {"message": f"no route {self.path}"}})
            if self.server.failures > 0:
                self.server.failures -= 1
                return self._reply(500, {"error": {"message": "overloaded"}})
            n = min(body.get("n", 1), self.server.max_choices)
            samples = self.server.sampler.sample(
                [body["prompt"]],
                n,
                max_new_tokens=body["max_tokens"],
                temperature=body["temperature"],
                top_p=body["top_p"],
                seed=body["seed"],
            )
        choices = [
            {"index": i, "text": text, "finish_reason": "stop", "logprobs": None}
            for i, text in enumerate(samples.texts[0])
        ]
        usage = {
            "prompt_tokens": samples.prompt_tokens,
            "completion_tokens": samples.completion_tokens,
            "total_tokens": samples.prompt_tokens + samples.completion_tokens,
        }
        self._reply(
            200,
            {
                "id": "cmpl-0",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": choices,
                "usage": usage,
            },
        )

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def local_sampler(tiny_base: Path) -> TransformersSampler:
    return TransformersSampler(tiny_base)


def serve(sampler: TransformersSampler, **kwargs: int) -> Iterator[CompletionsServer]:
    server = CompletionsServer(sampler, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(local_sampler: TransformersSampler) -> Iterator[CompletionsServer]:
    yield from serve(local_sampler)


@pytest.fixture
def flaky_server(local_sampler: TransformersSampler) -> Iterator[CompletionsServer]:
    yield from serve(local_sampler, failures=1)


@pytest.fixture
def one_choice_server(local_sampler: TransformersSampler) -> Iterator[CompletionsServer]:
    yield from serve(local_sampler, max_choices=1)  # like llama.cpp


def test_n_choices_come_back_in_prompt_order(
    server: CompletionsServer, local_sampler: TransformersSampler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    remote = OpenAISampler("tiny", base_url=server.base_url)
    samples = remote.sample(PROMPTS, 4, max_new_tokens=6, temperature=1.0, seed=5)
    direct = [local_sampler.sample([p], 4, max_new_tokens=6, seed=5) for p in PROMPTS]
    assert samples.texts == [d.texts[0] for d in direct]
    assert samples.prompt_tokens == sum(d.prompt_tokens for d in direct)
    assert samples.completion_tokens == sum(d.completion_tokens for d in direct)
    assert len(server.requests) == len(PROMPTS)
    assert set(server.auth_headers) == {"Bearer EMPTY"}


def test_a_server_error_is_retried(flaky_server: CompletionsServer) -> None:
    remote = OpenAISampler("tiny", base_url=flaky_server.base_url, concurrency=1)
    samples = remote.sample(PROMPTS, 2, max_new_tokens=4, seed=0)
    assert [len(texts) for texts in samples.texts] == [2] * len(PROMPTS)
    assert len(flaky_server.requests) == len(PROMPTS) + 1


def test_missing_choices_are_requested_again(one_choice_server: CompletionsServer) -> None:
    remote = OpenAISampler("tiny", base_url=one_choice_server.base_url, api_key="secret")
    samples = remote.sample(PROMPTS[:2], 3, max_new_tokens=4, temperature=1.0, seed=10)
    assert [len(texts) for texts in samples.texts] == [3, 3]
    requests = sorted((r["prompt"], r["n"], r["seed"]) for r in one_choice_server.requests)
    assert requests == sorted((p, 3 - i, 10 + i) for p in PROMPTS[:2] for i in range(3))
    assert set(one_choice_server.auth_headers) == {"Bearer secret"}
