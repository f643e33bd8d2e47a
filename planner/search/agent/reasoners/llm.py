"""A reasoner backed by any OpenAI-compatible chat endpoint (vLLM, llama.cpp, OpenAI ...).

It answers the graph nodes named in `LLMConfig.nodes` (init, reflect, propose); the
builtin answers the others, and any the model fails. Each request is the system prompt,
the conversation so far (the graph's checkpointed `messages` channel: the model's recent
answers, bounded) and the node's prompt.

Tool calling: requests offer the functions of `tools.Tools` (predict, price, frontier,
trial; enums from the search space) and the model may call them for up to
`LLMConfig.tool_rounds` replies before it answers: each call is run (bad arguments answer
an error the model reads) and its result sent back, and every call is recorded in the
exchange's `Attempt`. Once the rounds are spent, or its first answer needs a repair, it is
asked in structured form. A server that refuses `tools` before they ever worked (HTTP 400,
422, 500) is asked without them from then on, with the frontier written into the prompt.

Structured output: the answer is asked for with a JSON schema whose enums are each
subtask's valid values (`response_format` json_schema for vLLM and OpenAI, json_object with
a schema for llama.cpp's server), so even a small model can only answer with plans that
exist; a server that takes neither is asked plainly, and replies are parsed leniently. A
tool-offering request carries no schema (a constrained decoder could not call a tool).
Transport failures (timeouts, rate limits, 5xx) are retried with backoff by the `openai`
client; a reply that is not usable JSON, or proposes invalid, over-budget or already
evaluated allocations, gets a repair message quoting the errors (bounded rounds). The
builtin's score model vetoes a proposal whose optimistic predicted end score is under
`SCREEN` of the builtin's own pick's: the model may pick among near-best candidates, or
explore where the prediction is uncertain (optimism rewards that), but a weak model cannot
steer the search to plans the evidence rates poorly; and a step with a near-sure gain (a
recombination of evaluated stage plans whose known scores beat the best trial) is the
builtin's, the model not asked. With `guard` on (the default) the graph asks the model to
propose only once the search stalls, and each pick of its own outside the builtin's top
candidates is a bet on scoring what the builtin's own pick was predicted to: while its bets
lose, the builtin proposes (`state.LLM_CREDIT`). The candidates it is shown (in the
prompt, or by the `frontier` tool) are the builtin's, ranked as the builtin ranks them (the
plans its memory rules out last: `BuiltinReasoner.ranking`). Probes it proposes at init
are validated the same way (in the space, in budget, unseen), with no veto: there is no
evidence yet; with `guard` the builtin's design runs whole, after the one probe the model
is asked for.
When the endpoint keeps failing the built-in reasoner answers, and the answer says why.

The API key is read from OPENAI_API_KEY by the client; replies, tool arguments and error
messages are redacted (`planner.secrets`) as they arrive, so the key is never part of a
trace or of the graph's checkpointed state, even when a server echoes it.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import openai
from openai.types.chat import ChatCompletion

from planner.errors import SpaceError
from planner.search._base import SearchContext
from planner.search._runner import best_trial
from planner.search.agent import prompts
from planner.search.agent.analysis import Analysis
from planner.search.agent.combine import frontier
from planner.search.agent.memory import ALL, Insight
from planner.search.agent.options import LLMConfig
from planner.search.agent.reasoners.base import Attempt, Proposal, Reflection, ToolCall
from planner.search.agent.reasoners.builtin import MAX_NOTES, BuiltinReasoner
from planner.search.agent.screening import settled
from planner.search.agent.surrogate import allocation_value
from planner.search.agent.tools import Tools
from planner.secrets import redact, redact_data, register
from planner.space import Allocation
from planner.store import TrialRecord

_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_HINTS = 5
T = TypeVar("T")
SCREEN = 0.9  # a proposal must promise this fraction of the best candidate's score
_FORMS = ("json_schema", "json_object")  # structured-output forms, tried in this order
MAX_CALLS = 4  # tool calls run per reply; further ones are answered with an error
_ANSWER_NOW = "No more tool calls: reply with the JSON object now."
_REFUSED = (openai.BadRequestError, openai.UnprocessableEntityError,
            openai.InternalServerError)  # how servers refuse a request field they lack
OWN_PROBE = "chosen by the language model"  # the rationale of a probe not the design's


class ReplyError(ValueError):
    """A reply that is not the JSON object the prompt asks for."""


class _ToolsRefused(Exception):
    """The server refused a request offering tools, before tools ever worked."""
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
    """Answers its nodes by prompting a chat model; validates everything it says."""

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
        self.tool_mode = config.tool_rounds > 0  # offer tools (until the server refuses them)
        self.tools_work = False  # the server has answered a request offering tools
        self.nodes = config.nodes

    def initial(self, history: Sequence[TrialRecord],
                conversation: Sequence[dict] = ()) -> Proposal:
        """Probes the model picks, shown the builtin's probe design (as many as it has);
        the builtin's probes when it fails. With `guard` the design is kept whole and the
        model is asked for one probe to run before it (none if it picks one of the
        design's): one probe more, where a model answering one probe for the design shrank
        it to that probe."""
        base = self.builtin.initial(history)
        guard = self.config.guard
        k = 1 if guard else max(1, len(base.allocations))
        why = {a.key(): r for a, r in zip(base.allocations, base.rationale, strict=True)}

        def messages(tools: bool) -> list[dict]:
            return self._messages(prompts.SYSTEM, prompts.init_message(
                self.ctx.space, self.ctx.cost_model, self.ctx.budget_gpu_hours,
                list(zip(base.allocations, base.rationale, strict=True)), k, adds=guard),
                conversation, tools)

        found, attempts, failed, exchange = self._converse(
            "init", history, (), messages, prompts.schema(self.ctx.space, k),
            self._proposals(settled(history, self.ctx.cost_model), lambda _: True),
            prompts.repair_message, "probes")
        if found is None:
            return Proposal(base.allocations, "builtin", [], attempts, failed,
                            base.rationale)
        valid, notes = found
        chosen = ([a for a in valid if a.key() not in why][:1] + list(base.allocations)
                  if guard else valid[:k])
        return Proposal(chosen, self.name, notes, attempts, rationale=[
            why.get(a.key(), OWN_PROBE) for a in chosen],
            exchange=exchange)

    def reflect(self, history: Sequence[TrialRecord], memory: Sequence[Insight],
                conversation: Sequence[dict] = ()) -> Reflection:
        """The builtin's derived insights, then the model's own statements (kept as notes,
        the latest `MAX_NOTES`); the builtin's whole reflection when the model fails."""
        base = self.builtin.reflect(history, memory)
        derived = [i for i in base.insights if i.kind != "note"]

        def messages(tools: bool) -> list[dict]:
            return self._messages(prompts.REFLECT_SYSTEM, prompts.reflect_message(
                self.ctx.space, history, base.insights), conversation, tools)

        def read(text: str) -> tuple[list[str] | None, list, list[str]]:
            try:
                return redact_data(parse_insights(text)), [], []
            except ReplyError as e:
                return None, [], [str(e)]

        said, attempts, failed, exchange = self._converse(
            "reflect", history, memory, messages, prompts.reflect_schema(), read,
            lambda errors: prompts.reflect_repair(errors[0]), "insights")
        if said is None:
            return Reflection(base.insights, "builtin", attempts, failed)
        notes = [i for i in memory if i.kind == "note"] + [Insight(ALL, "note", n)
                                                           for n in said]
        return Reflection(derived + notes[-MAX_NOTES:], self.name, attempts,
                          exchange=exchange)

    def propose(self, history: Sequence[TrialRecord], memory: Sequence[Insight], k: int,
                conversation: Sequence[dict] = ()) -> Proposal:
        """Up to `k` allocations the model picks (with the builtin's candidates in its
        prompt, or its tools to look), vetoed where the trials rate them far below the
        builtin's own pick. A step with a near-sure gain (`BuiltinReasoner.near_sure`: a
        recombination of evaluated stage plans whose known scores beat the best trial) is
        the builtin's: the model is not asked to weigh a known gain against hopes."""
        if self.builtin.near_sure(history, memory) is not None:
            return self.builtin.propose(history, memory, k)
        analysis = self.builtin.analyse(history)
        seen = settled(history, self.ctx.cost_model)
        hints = frontier(analysis, self._ranked(analysis, memory), self.ctx.budget_gpu_hours,
                         self.ctx.cost_model, seen, _HINTS)
        values = analysis.plan_values(self.builtin.optimism(analysis))
        floor = (allocation_value(analysis.tables, values, hints[0]) + math.log(SCREEN)
                 if hints else -math.inf)

        def messages(tools: bool) -> list[dict]:
            shown = None if tools else [(a, analysis.predicted(a)[0]) for a in hints]
            return self._messages(prompts.SYSTEM, prompts.user_message(
                self.ctx.space, self.ctx.cost_model, self.ctx.budget_gpu_hours, history,
                memory, shown, k), conversation, tools)

        found, attempts, failed, exchange = self._converse(
            "propose", history, memory, messages, prompts.schema(self.ctx.space, k),
            self._proposals(seen, lambda a: allocation_value(analysis.tables, values, a)
                            >= floor),
            prompts.repair_message, "proposal")
        if found is None:
            fallback = self.builtin.propose(history, memory, k)
            return Proposal(fallback.allocations, "builtin", [], attempts, failed or "")
        valid, notes = found
        bets = _bets(valid[:k], hints[:k], analysis, history)
        return Proposal(valid[:k], self.name, notes, attempts, exchange=exchange, bets=bets,
                        rationale=[
                            "the model's pick, one of the builtin's top candidates"
                            if bet is None else f"the model's own pick, outside the builtin's "
                            f"top candidates: it bets on scoring at least {bet:.4f} (what the "
                            "builtin's first was predicted to score, or the best so far)"
                            for bet in bets])

    def _ranked(self, analysis: Analysis, memory: Sequence[Insight]) -> list[np.ndarray]:
        """Per subtask, each plan's value as the builtin ranks it: its optimistic log score,
        lowered where the memory rules it out (`BuiltinReasoner.ranking`)."""
        return self.builtin.ranked_values(analysis, self.builtin.ranking(memory)[0])

    def _messages(self, system: str, user: str, conversation: Sequence[dict],
                  tools: bool) -> list[dict]:
        """The system prompt (with the tools paragraph where tools are offered, and the
        conversation's note on what it dropped), the conversation, then the node's prompt."""
        earlier = [m["content"] for m in conversation if m["role"] == "system"]
        head = "\n\n".join([system, *([prompts.TOOLS] if tools else []), *earlier])
        return [{"role": "system", "content": head},
                *(dict(m) for m in conversation if m["role"] != "system"),
                {"role": "user", "content": user}]

    def _proposals(self, seen: set[str], promising: Callable[[Allocation], bool]
                   ) -> Callable[[str], tuple[tuple[list[Allocation], list[str]] | None,
                                              list, list[str]]]:
        """A reader of proposal replies for `_converse`: (valid allocations, notes) or
        None, the proposals parsed, and the errors."""
        def read(text: str) -> tuple[tuple[list[Allocation], list[str]] | None, list,
                                     list[str]]:
            try:
                notes, raw = redact_data(parse_reply(text))  # a key written with \u escapes
            except ReplyError as e:
                return None, [], [str(e)]
            valid, errors = self._validate(raw, seen, promising)
            return (valid, notes) if valid else None, [r for r in raw if isinstance(r, dict)], \
                errors
        return read

    def _converse(self, node: str, history: Sequence[TrialRecord],
                  memory: Sequence[Insight],
                  messages: Callable[[bool], list[dict]], schema: dict,
                  read: Callable[[str], tuple[T | None, list, list[str]]],
                  repair: Callable[[list[str]], str], what: str
                  ) -> tuple[T | None, list[Attempt], str | None, list[dict]]:
        """Ask (`messages(tools offered)`), run the tools the model calls and send their
        results back (at most `tool_rounds` replies, until its first answer), and ask again
        with a repair message quoting the errors until `read` makes something of a reply
        (`read` gives it, the proposals it parsed, and the errors). Returns (it or None,
        every exchange, why nothing came of them, the exchange for the conversation)."""
        offered = self.tool_mode
        analysis = self.builtin.analyse(history)
        tools = Tools(self.ctx, analysis, self._ranked(analysis, memory), history) \
            if offered else None
        sent = messages(offered)
        attempts: list[Attempt] = []
        rounds = replies = 0
        refused = False
        while replies <= self.config.repairs:
            # tools until the model first answers: its repairs are asked in structured form
            # (a server that ignores `tools` costs one unconstrained reply, no more)
            calling = tools is not None and rounds < self.config.tool_rounds and not replies
            start = time.perf_counter()
            try:
                reply = (self._ask_tools(sent, tools.specs()) if tools is not None and calling
                         else self._ask(sent, schema))
            except _ToolsRefused:
                refused, tools, self.tool_mode = True, None, False
                sent = messages(False)
                continue
            except openai.OpenAIError as e:
                if refused and not self.form_works:  # refused everything: down, not refusing
                    self.tool_mode = True
                attempts.append(Attempt(list(sent), errors=[_describe(e)],
                                        latency_s=time.perf_counter() - start))
                return None, attempts, _describe(e), []
            latency = time.perf_counter() - start
            text, tokens = _content(reply)
            calls = _tool_calls(reply) if calling else []
            if tools is not None and calls:
                rounds += 1
                done = [ToolCall(name, args, tools.call(name, args) if i < MAX_CALLS else
                                 {"error": f"at most {MAX_CALLS} calls per reply"})
                        for i, (_, name, args) in enumerate(calls)]
                attempts.append(Attempt(list(sent), text, tokens=tokens, latency_s=latency,
                                        tool_calls=done))
                sent = [*sent, {"role": "assistant", "content": text or None, "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in calls]},
                    *({"role": "tool", "tool_call_id": i, "content": json.dumps(c.result)}
                      for (i, _, _), c in zip(calls, done, strict=True))]
                if rounds == self.config.tool_rounds:
                    sent.append({"role": "user", "content": _ANSWER_NOW})
                continue
            replies += 1
            result, parsed, errors = read(text)
            attempts.append(Attempt(list(sent), text, parsed, errors, tokens, latency))
            if result is not None:
                return result, attempts, None, [
                    {"role": "user", "content": prompts.exchange_line(node, history)},
                    {"role": "assistant", "content": text}]
            sent = [*sent, {"role": "assistant", "content": text},
                    {"role": "user", "content": repair(errors)}]
        return None, attempts, f"no usable {what} after {replies} replies", []

    def _request(self, messages: list[dict]) -> dict:
        return {"model": self.config.model, "messages": messages,
                "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}

    def _ask_tools(self, messages: list[dict], tools: list[dict]) -> ChatCompletion:
        """One chat completion offering `tools`, without a response schema (a constrained
        decoder could not call them). Until tools have worked, a refusal (HTTP 400, 422 or
        500) raises `_ToolsRefused` without the client's retries."""
        client = self.client if self.tools_work else self.client.with_options(max_retries=0)
        try:
            reply = client.chat.completions.create(**self._request(messages), tools=tools,
                                                   tool_choice="auto")
        except _REFUSED:
            if self.tools_work:  # they worked before: a server error, not a refusal
                raise
            raise _ToolsRefused from None
        self.tools_work = True
        return reply

    def _ask(self, messages: list[dict], schema: dict) -> ChatCompletion:
        """One chat completion, constrained to `schema` in the first form the server
        accepts: OpenAI's `json_schema`, then `json_object` with
        a schema (llama.cpp's server), then none. Until a form has worked, a refusal (HTTP
        400, 422 or 500) moves to the next form without the client's retries."""
        request = self._request(messages)
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
            except _REFUSED:
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


def _tool_calls(reply: ChatCompletion) -> list[tuple[str, str, str]]:
    """The function calls a reply asks for: (id, name, arguments redacted)."""
    message = reply.choices[0].message if reply.choices else None
    calls = [c for c in (message.tool_calls or []) if c.type == "function"] if message else []
    return [(c.id or f"call_{i}", c.function.name, redact(c.function.arguments or ""))
            for i, c in enumerate(calls)]


def _content(reply: ChatCompletion) -> tuple[str, dict[str, int]]:
    """A reply's text (redacted) and its token usage."""
    text = redact((reply.choices[0].message.content or "") if reply.choices else "")
    tokens = ({"prompt": reply.usage.prompt_tokens,
               "completion": reply.usage.completion_tokens} if reply.usage else {})
    return text, tokens


def _bets(picks: Sequence[Allocation], top: Sequence[Allocation], analysis: Analysis,
          history: Sequence[TrialRecord]) -> list[float | None]:
    """Per pick, None if it is one of the builtin's `top` candidates, else the score it must
    reach to count as a good pick: what the score model predicts for the builtin's own first
    candidate (its mean), or the best score so far if that is higher."""
    keys = {a.key() for a in top}
    best = best_trial(history)
    bar = max(analysis.predicted(top[0])[0] if top else 0.0, best.score if best else 0.0)
    return [None if a.key() in keys else bar for a in picks]


def _describe(e: Exception) -> str:
    """An error's type and message, redacted before it is cut (a cut key is not masked)."""
    status = getattr(e, "status_code", None)
    return f"{type(e).__name__}" + (f" (HTTP {status})" if status else "") + \
        f": {redact(str(e))}"[:300]
