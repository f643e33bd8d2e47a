"""A reasoner backed by any OpenAI-compatible chat endpoint (vLLM, llama.cpp, OpenAI ...).

Requests ask for structured output: a JSON schema whose enums are each subtask's valid
values (`response_format` json_schema for vLLM and OpenAI, json_object with a schema for
llama.cpp's server), so even a small model can only answer with plans that exist; a server
that takes neither is asked plainly. Transport failures (timeouts, rate limits, 5xx) are retried
with backoff by the `openai` client; a reply that is not usable JSON, or proposes invalid,
over-budget or already evaluated allocations, gets a repair message quoting the errors
(bounded rounds). The builtin's score model vetoes a proposal whose optimistic predicted
end score is under `SCREEN` of the best candidate's: the model may pick among near-best
candidates, or explore where the prediction is uncertain (optimism rewards that), but a weak
model cannot steer the search to plans the evidence rates poorly. When the endpoint keeps
failing the built-in reasoner answers, and the proposal says why.

The API key is read from OPENAI_API_KEY by the client; replies and error messages are
redacted (`planner.secrets`) as they arrive, so the key is never part of a trace or of the
graph's checkpointed state, even when a server echoes it.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import openai
from openai.types.chat import ChatCompletion

from planner.errors import SpaceError
from planner.search._base import SearchContext, seen_keys
from planner.search.agent import prompts
from planner.search.agent.analysis import Analysis
from planner.search.agent.combine import best_allocations
from planner.search.agent.memory import ALL, Insight
from planner.search.agent.reasoners.base import Attempt, Proposal, Reflection
from planner.search.agent.reasoners.builtin import MAX_NOTES, BuiltinReasoner
from planner.secrets import redact, redact_data, register
from planner.space import Allocation
from planner.store import TrialRecord

_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_HINTS = 5
T = TypeVar("T")
SCREEN = 0.9  # a proposal must promise this fraction of the best candidate's score
_FORMS = ("json_schema", "json_object")  # structured-output forms, tried in this order


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask (no credentials: the key comes from the environment)."""

    base_url: str
    model: str
    timeout_s: float = 60.0
    max_retries: int = 3  # transport retries, with the client's exponential backoff
    repairs: int = 2  # extra rounds after an unusable reply
    temperature: float = 0.2
    max_tokens: int = 512  # a reply is 60-150 tokens; a small model may ramble for thousands
    structured: bool = True  # ask for JSON matching the space's schema, where the server can
    nodes: tuple[str, ...] = ("reflect", "propose")  # where the model acts (else the builtin)


class ReplyError(ValueError):
    """A reply that is not the JSON object the prompt asks for."""


def _json_object(text: str, key: str) -> dict:
    """The first JSON object in a reply (bare, in a fenced block, or between the outer
    braces) that holds a list under `key`."""
    candidates = [text.strip(), *(m.strip() for m in _FENCED.findall(text))]
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    for c in candidates:
        try:
            data = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get(key), list):
            return data
    raise ReplyError(f'no JSON object with a "{key}" list found in the reply')


def parse_reply(text: str) -> tuple[list[str], list]:
    """(insights, proposals) from a propose reply."""
    data = _json_object(text, "proposals")
    insights = data.get("insights") or []
    return [str(i) for i in insights] if isinstance(insights, list) else [], data["proposals"]


def parse_insights(text: str) -> list[str]:
    """The statements of a reflect reply (at most `prompts.MAX_INSIGHTS`, 200 characters)."""
    data = _json_object(text, "insights")
    return [str(i)[:200] for i in data["insights"] if str(i).strip()][:prompts.MAX_INSIGHTS]


class LLMReasoner:
    """Proposes by prompting a chat model; validates everything it says."""

    name = "llm"

    def __init__(self, ctx: SearchContext, config: LLMConfig, builtin: BuiltinReasoner) -> None:
        self.ctx = ctx
        self.config = config
        self.builtin = builtin
        api_key = os.environ.get("OPENAI_API_KEY")
        register(api_key)  # masked even if the environment changes while the search runs
        self.client = openai.OpenAI(base_url=config.base_url, api_key=api_key or "not-needed",
                                    timeout=config.timeout_s, max_retries=config.max_retries)
        self.form = 0 if config.structured else len(_FORMS)  # index into _FORMS
        self.form_works = False  # the server has answered in that form
        self.nodes = config.nodes

    def initial(self, history: Sequence[TrialRecord]) -> Proposal:
        """The builtin's probes: before any trial there is no evidence to reason over, and
        the probes are the controlled experiments the later steps read."""
        return self.builtin.initial(history)

    def reflect(self, history: Sequence[TrialRecord], memory: Sequence[Insight]) -> Reflection:
        """The builtin's derived insights, then the model's own statements (kept as notes,
        the latest `MAX_NOTES`); the builtin's whole reflection when the model fails."""
        base = self.builtin.reflect(history, memory)
        derived = [i for i in base.insights if i.kind != "note"]
        messages = [{"role": "system", "content": prompts.REFLECT_SYSTEM},
                    {"role": "user", "content": prompts.reflect_message(
                        self.ctx.space, history, base.insights)}]
        def read(text: str) -> tuple[list[str] | None, list, list[str]]:
            try:
                return redact_data(parse_insights(text)), [], []
            except ReplyError as e:
                return None, [], [str(e)]

        said, attempts, failed = self._converse(
            messages, prompts.reflect_schema(), read,
            lambda errors: prompts.reflect_repair(errors[0]), "insights")
        if said is None:
            return Reflection(base.insights, "builtin", attempts, failed)
        notes = [i for i in memory if i.kind == "note"] + [Insight(ALL, "note", n)
                                                           for n in said]
        return Reflection(derived + notes[-MAX_NOTES:], self.name, attempts)

    def propose(self, history: Sequence[TrialRecord], memory: Sequence[Insight],
                k: int) -> Proposal:
        analysis = self.builtin.analyse(history)
        seen = seen_keys(history)
        values = analysis.plan_values(self.builtin.kappa)
        hints = best_allocations(analysis.tables, values, self.ctx.budget_gpu_hours,
                                 self.ctx.cost_model, seen, _HINTS)
        predicted = [self._predicted(analysis, a) for a in hints]
        floor = _value(analysis, values, hints[0]) + math.log(SCREEN) if hints else -math.inf
        messages = [{"role": "system", "content": prompts.SYSTEM},
                    {"role": "user", "content": prompts.user_message(
                        self.ctx.space, self.ctx.cost_model, self.ctx.budget_gpu_hours,
                        history, memory, list(zip(hints, predicted, strict=True)), k)}]

        def read(text: str) -> tuple[tuple[list[Allocation], list[str]] | None, list,
                                     list[str]]:
            try:
                notes, raw = redact_data(parse_reply(text))  # a key written with \u escapes
            except ReplyError as e:
                return None, [], [str(e)]
            valid, errors = self._validate(raw, seen,
                                           lambda a: _value(analysis, values, a) >= floor)
            return (valid, notes) if valid else None, [r for r in raw if isinstance(r, dict)], \
                errors

        found, attempts, failed = self._converse(
            messages, prompts.schema(self.ctx.space, k), read, prompts.repair_message,
            "proposal")
        if found is None:
            return self._fallback(history, memory, k, attempts, failed or "")
        valid, notes = found
        return Proposal(valid[:k], self.name, notes, attempts)

    def _converse(self, messages: list[dict], schema: dict,
                  read: Callable[[str], tuple[T | None, list, list[str]]],
                  repair: Callable[[list[str]], str], what: str
                  ) -> tuple[T | None, list[Attempt], str | None]:
        """Ask, and ask again with a repair message quoting the errors, until `read` makes
        something of a reply (`read` gives it, the proposals it parsed, and the errors).
        Returns (it or None, every exchange, why nothing came of them)."""
        attempts: list[Attempt] = []
        for _ in range(1 + self.config.repairs):
            start = time.perf_counter()
            try:
                reply = self._ask(messages, schema)
            except openai.OpenAIError as e:
                attempts.append(Attempt(list(messages), errors=[_describe(e)],
                                        latency_s=time.perf_counter() - start))
                return None, attempts, _describe(e)
            latency = time.perf_counter() - start
            text, tokens = _content(reply)
            result, parsed, errors = read(text)
            attempts.append(Attempt(list(messages), text, parsed, errors, tokens, latency))
            if result is not None:
                return result, attempts, None
            messages = [*messages, {"role": "assistant", "content": text},
                        {"role": "user", "content": repair(errors)}]
        return None, attempts, f"no usable {what} after {len(attempts)} replies"

    def _ask(self, messages: list[dict], schema: dict) -> ChatCompletion:
        """One chat completion, constrained to `schema` in the first form the server
        accepts: OpenAI's `json_schema`, then `json_object` with
        a schema (llama.cpp's server), then none. Until a form has worked, a refusal (HTTP
        400, 422 or 500) moves to the next form without the client's retries."""
        request = {"model": self.config.model, "messages": messages,
                   "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        first = self.form
        while self.form < len(_FORMS):
            response_format = (
                {"type": "json_schema",
                 "json_schema": {"name": "proposals", "schema": schema, "strict": True}}
                if _FORMS[self.form] == "json_schema" else
                {"type": "json_object", "schema": schema})
            client = self.client if self.form_works else self.client.with_options(max_retries=0)
            try:
                reply = client.chat.completions.create(**request,
                                                       response_format=response_format)
            except (openai.BadRequestError, openai.UnprocessableEntityError,
                    openai.InternalServerError):
                if self.form_works:  # it worked before: a server error, not a refusal
                    raise
                self.form += 1
                continue
            self.form_works = True
            return reply
        try:
            return self.client.chat.completions.create(**request)
        except openai.APIStatusError:
            if not self.form_works:  # refused without any form too: not a form refusal
                self.form = first
            raise

    def _validate(self, raw: list, seen: set[str], promising: Callable[[Allocation], bool]
                  ) -> tuple[list[Allocation], list[str]]:
        """Allocations that fit the space and budget, are new and `promising`; an error for
        each other."""
        valid, errors, keys = [], [], set(seen)
        for i, item in enumerate(raw):
            data = item.get("allocation", item) if isinstance(item, dict) else item
            try:
                alloc = self.ctx.space.coerce(data)
            except SpaceError as e:
                errors.append(f"proposal {i}: {e}")
                continue
            cost = self.ctx.cost_model.estimate(alloc).total_gpu_hours
            if cost > self.ctx.budget_gpu_hours:
                errors.append(f"proposal {i}: costs {cost:.4g} GPU-h, over the budget of "
                              f"{self.ctx.budget_gpu_hours:.4g} GPU-h")
            elif alloc.key() in keys:
                errors.append(f"proposal {i}: already evaluated or proposed; propose a new one")
            elif not promising(alloc):
                errors.append(f"proposal {i}: the trials so far predict it far below the best "
                              f"candidate (under {SCREEN:.0%} of its score, even optimistically)"
                              "; pick a listed candidate, or a plan the trials rate higher")
            else:
                keys.add(alloc.key())
                valid.append(alloc)
        if not raw:
            errors.append("the proposals list is empty")
        return valid, errors

    def _fallback(self, history: Sequence[TrialRecord], memory: Sequence[Insight], k: int,
                  attempts: list[Attempt], why: str) -> Proposal:
        found = self.builtin.propose(history, memory, k)
        return Proposal(found.allocations, "builtin", [], attempts, why)

    @staticmethod
    def _predicted(analysis: Analysis, alloc: Allocation) -> float:
        """Mean predicted end score (weighted product of stage scores)."""
        total = 1.0
        for t, p, w in zip(analysis.tables, analysis.predictions, analysis.weights,
                           strict=True):
            total *= float(p.score()[t.index[alloc[t.subtask]]]) ** w
        return total


def _content(reply: ChatCompletion) -> tuple[str, dict[str, int]]:
    """A reply's text (redacted) and its token usage."""
    text = redact((reply.choices[0].message.content or "") if reply.choices else "")
    tokens = ({"prompt": reply.usage.prompt_tokens,
               "completion": reply.usage.completion_tokens} if reply.usage else {})
    return text, tokens


def _value(analysis: Analysis, values: Sequence[np.ndarray], alloc: Allocation) -> float:
    """An allocation's optimistic log end score (`Analysis.plan_values`)."""
    return float(sum(v[t.index[alloc[t.subtask]]]
                     for t, v in zip(analysis.tables, values, strict=True)))


def _describe(e: Exception) -> str:
    """An error's type and message, redacted before it is cut (a cut key is not masked)."""
    status = getattr(e, "status_code", None)
    return f"{type(e).__name__}" + (f" (HTTP {status})" if status else "") + \
        f": {redact(str(e))}"[:300]
