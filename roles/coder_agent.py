"""The coder as an agent: a bounded tool loop in which the model reads, scores, traces, edits and tests
before it submits one edit.

Each turn the model answers with tool calls (chat completions ``tools``), or, on an endpoint that
refuses tools, with one JSON object naming a tool and its arguments (checked against a schema, as
every structured reply is). Tools run through the ``Workbench`` (``roles.coder_tools``): evaluations
and tests only ever run sandboxed, on dev seeds, and never touch the incumbent.

The loop keeps a journal in the coder's transcript: every model turn (``AgentTurn``) and every tool
result with the loop's state after it (``ToolRun``). A loop run again after a kill -9 rebuilds its
conversation and state from the journal and goes on from the first turn or tool run that was not
recorded, so no paid call or tool run is done twice; `heurist replay` answers the turns from a
recorded run's journal and runs the tools again. (The journal is a checkpoint inside the code node,
finer than LangGraph's, whose checkpoints fall between nodes; the role stays a plug-in.)

The loop ends when the model submits, or at a hard stop (tool calls, env steps, tokens, wall time of
the loop, the run's own budgets, turns that call no tool): then with the candidate it scored best
above the incumbent, if any.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, Literal

from pydantic import ValidationError

from common.errors import HeuristError
from roles.base import RoleContext
from roles.coder_toolbox import LoopState, ToolBox
from roles.coder_tools import (
    TOOL_ARGS,
    Workbench,
    clipped,
    tool_request_model,
    tool_specs,
)
from roles.edits import Edit
from roles.llm import image_part
from roles.llm_usage import BudgetSpent, LLMError, ReplayEnded, ToolsUnsupported
from store.transcripts import AgentTurn, ToolRun

Mode = Literal["tools", "json"]
NUDGE = "Call one of the tools. When candidate.py is the edit you want, call submit."
STUCK_AFTER = 3  # the same failing call this many times in a row ends the loop
LOOP_ENDED = "the loop ended"  # how a reason says the loop stopped without a submission (roles.coder reads it)
ToolRequest = tool_request_model()  # one tool call as a JSON object, for endpoints without `tools`


class CoderLoop(ToolBox):
    """One loop of one iteration: ``run()`` gives the submitted (or best) candidate's edit, or None and why."""

    def __init__(self, ctx: RoleContext, workbench: Workbench, loop: str, system: str, brief: str,
                 images: bool):
        self.ctx, self.wb, self.loop = ctx, workbench, loop
        self.settings = ctx.config.code
        self.images = images
        self.opening = [{"role": "system", "content": system}, {"role": "user", "content": brief}]
        self.state = LoopState(source=workbench.incumbent)
        self.mode: Mode = "tools" if ctx.llm is not None and ctx.llm.tools_supported(ctx.transcript.role) else "json"
        self.turns: list[AgentTurn] = []
        # (turn, call id) -> its recorded run: some servers give every turn's first call the same id.
        self.runs: dict[tuple[int, str], ToolRun] = {}
        self.tokens = 0
        self.seconds = 0.0

    # ------------------------------------------------------------------ the loop

    def run(self) -> tuple[Edit | None, str, dict[str, Any]]:
        self._restore()
        stop = None
        idle = next((i for i, t in enumerate(reversed(self.turns)) if t.tool_calls), len(self.turns))
        while self.state.submitted is None:
            # The idle and stuck stops are checked here too: a loop that ended on them before a kill stays ended.
            stop = self._stop_reason() or (f"{idle} turns in a row called no tool"
                                           if idle >= self.settings.max_idle_turns else None) or (
                f"the model made the same failing call {STUCK_AFTER} times in a row" if self._stuck() else None)
            if stop:
                break
            turn = self._pending_turn()
            if turn is None:
                try:
                    turn = self._ask()
                except BudgetSpent as exc:
                    stop = f"the run's budget: {exc}"
                    break
                except ReplayEnded as exc:  # the recorded loop stopped here (a limit the replay does not re-time)
                    stop = str(exc)
                    break
                except LLMError as exc:
                    if self.state.best is None:
                        raise
                    stop = f"the model failed: {exc}"
                    break
            idle = 0 if turn.tool_calls else idle + 1
            if idle >= self.settings.max_idle_turns:
                continue  # the check at the top ends the loop
            if idle == 2 and self.mode == "tools":  # a model that will not call tools natively is asked for JSON
                self.mode = "json"
                self.ctx.decide("two turns in a row called no tool: each tool call is asked for as a JSON object "
                                "from now on", loop=self.loop)
            for position, call in enumerate(turn.tool_calls):
                if (turn.turn, call["id"]) not in self.runs:
                    stop = stop or self._stop_reason()
                    spends = call["name"] != "submit"  # a submit costs nothing: a finished edit is never lost
                    self._run_tool(turn, position, refused=f"not run: the loop's limit was reached ({stop})"
                                   if stop and spends else None)
                if self.state.submitted is not None:
                    break
            if stop:
                break
        return self._outcome(stop)

    def _stuck(self) -> bool:
        """The same call failing the same way again and again: a model in a rut spends the budget for nothing."""
        mine = [r for r in self.runs.values() if r.loop == self.loop][-STUCK_AFTER:]
        return len(mine) == STUCK_AFTER and mine[0].result.startswith("error:") and len(
            {(r.name, r.arguments) for r in mine}) == 1

    def _stop_reason(self) -> str | None:
        """The loop's own limits and the run's budgets (env steps, hours), checked before every turn and call."""
        s, st = self.settings, self.state
        spent = self.wb.run_budget_spent()
        if spent:
            return f"the run's budget: {spent}"
        if st.tool_calls >= s.max_tool_calls:
            return f"{st.tool_calls} tool calls (code.max_tool_calls)"
        if s.max_env_steps is not None and st.env_steps >= s.max_env_steps:
            return f"{st.env_steps:,} env steps (code.max_env_steps)"
        if s.max_tokens is not None and self.tokens >= s.max_tokens:
            return f"{self.tokens:,} tokens (code.max_tokens)"
        if s.max_wall_s is not None and self.seconds >= s.max_wall_s:
            return f"{self.seconds:.0f} s (code.max_wall_s)"
        return None

    def _outcome(self, stop: str | None) -> tuple[Edit | None, str, dict[str, Any]]:
        st = self.state
        evidence = {"loop": self.loop, "turns": len(self.turns), "tool_calls": st.tool_calls,
                    "env_steps": st.env_steps, "tokens": self.tokens, "seconds": round(self.seconds, 1),
                    "mode": self.mode, "stopped_by": stop}
        if st.submitted is not None:
            edit = Edit(kind="search_replace", blocks=st.blocks, rationale=st.submitted.rationale,
                        target_seeds=st.submitted.target_seeds, target_kinds=st.submitted.target_kinds)
            return edit, st.submitted.rationale, evidence
        if st.best is not None:
            why = (f"{LOOP_ENDED} ({stop}); its best scored candidate is proposed: mean {st.best.gain:+.3f} "
                   f"over the incumbent on dev seeds {st.best.seeds}")
            edit = Edit(kind="search_replace", blocks=st.best.blocks, rationale=why, target_seeds=st.best.seeds)
            return edit, why, evidence
        return None, f"{LOOP_ENDED} ({stop}) with no candidate scored above the incumbent", evidence

    # ------------------------------------------------------------------ model turns

    def _ask(self) -> AgentTurn:
        ctx, started = self.ctx, time.perf_counter()
        number = len(self.turns) + 1
        calls: list[dict[str, str]] = []
        content = ""
        with ctx.llm.usage.metered() as meter:  # this loop's own cost, while other loops call beside it
            if ctx.llm.replays:  # the recorded loop's turn, however it was asked
                reply = ctx.llm.turn(ctx.transcript, [], [], loop=self.loop, index=number - 1)
                self.mode = reply.mode or self.mode
                content, calls = reply.content, _unique_ids(reply.tool_calls, number)
            elif self.mode == "tools":
                try:
                    reply = ctx.llm.turn(ctx.transcript, self._conversation(), tool_specs(), loop=self.loop)
                    content, calls = reply.content, reply.tool_calls or calls_in_text(reply.content)
                    calls = _unique_ids(calls, number)
                except ToolsUnsupported:
                    self.mode = "json"
            if self.mode == "json" and not ctx.llm.replays:
                request = ctx.llm.structured(ctx.transcript, self._conversation(), ToolRequest)
                content = request.thought
                calls = [{"id": f"json-{number}", "name": request.call.tool,
                          "arguments": request.call.arguments.model_dump_json()}]
        spent = meter.tokens
        usd = None if meter.unpriced_tokens else round(meter.usd, 8)
        turn = ctx.transcript.write(AgentTurn, loop=self.loop, turn=number, mode=self.mode, content=content,
                                    tool_calls=calls, tokens=spent, usd=usd, replayed=ctx.llm.replays,
                                    latency_s=round(time.perf_counter() - started, 3))
        self._take(turn)
        self.wb.event("agent_turn", loop=self.loop, turn=number, tools=[c["name"] for c in calls],
                      said=content[:200], tokens=spent)
        return turn

    def _pending_turn(self) -> AgentTurn | None:
        """The last recorded turn if some of its tool calls were never run (a kill between them)."""
        if self.turns and any((self.turns[-1].turn, c["id"]) not in self.runs for c in self.turns[-1].tool_calls):
            return self.turns[-1]
        return None

    def _conversation(self) -> list[dict]:
        """The messages so far, rebuilt from the journal in the current mode."""
        messages = list(self.opening)
        for turn in self.turns:
            runs = [self.runs[(turn.turn, c["id"])] for c in turn.tool_calls if (turn.turn, c["id"]) in self.runs]
            if self.mode == "tools" and turn.mode == "tools" and not turn.tool_calls:
                messages.append({"role": "assistant", "content": turn.content or "(nothing)"})
            elif self.mode == "tools" and turn.mode == "tools":
                messages.append({"role": "assistant", "content": turn.content or None, "tool_calls": [
                    {"id": _call_id(c["id"]), "type": "function", "function": {"name": c["name"],
                                                                               "arguments": _echoable(c["arguments"])}}
                    for c in turn.tool_calls]})
                answered = {r.call_id for r in runs}
                messages += [{"role": "tool", "tool_call_id": _call_id(c["id"]),
                              "content": self.runs[(turn.turn, c["id"])].result if c["id"] in answered else
                              "not run: the loop ended before this call"} for c in turn.tool_calls]
            else:
                messages.append({"role": "assistant", "content": json_turn(turn.content, turn.tool_calls)})
                if runs:
                    messages.append({"role": "user", "content": "\n\n".join(
                        f"Result of {r.name}:\n{r.result}" for r in runs)})
            if not turn.tool_calls:
                messages.append({"role": "user", "content": NUDGE})
            images = [r.image for r in runs if r.image]
            if images and self.images:
                messages.append({"role": "user", "content": [{"type": "text", "text": "The frames asked for:"}]
                                 + [{**image_part(path), "path": path} for path in images]})
        return messages

    # ------------------------------------------------------------------ tools

    def _run_tool(self, turn: AgentTurn, position: int, refused: str | None = None) -> None:
        call = turn.tool_calls[position]
        started, steps_before = time.perf_counter(), self.state.env_steps
        image = None
        earlier = [self.runs.get((turn.turn, c["id"])) for c in turn.tool_calls[:position]]
        failed_before = [r for r in earlier if r is not None and r.result.startswith("error:")]
        if refused is not None:
            result = refused
        elif call["name"] not in TOOL_ARGS:
            result = f"error: there is no tool {call['name']!r}; the tools are {', '.join(TOOL_ARGS)}"
        elif call["name"] == "submit" and failed_before:
            result = (f"error: not submitted: your {failed_before[-1].name} call before it in this turn failed "
                      f"({failed_before[-1].result[:200]}); look at candidate.py and submit again when it is right")
        else:
            try:
                args = TOOL_ARGS[call["name"]].model_validate(_loads(call["arguments"], strict=True))
                result, image = getattr(self, f"_tool_{call['name']}")(args)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(arguments)'}: {e['msg']}"
                                     for e in exc.errors()[:5])
                result = f"error: the arguments of {call['name']} are not valid: {problems}"
            except (ValueError, HeuristError) as exc:  # a refused seed, a bad edit, a policy the evaluator refused
                result = f"error: {exc}"
            except Exception as exc:  # a tool's own fault (a clip unreadable, a trace of an odd shape) ends one call
                result = f"error: the tool failed: {type(exc).__name__}: {exc}"[:2000]
        if refused is None:  # a call answered "not run" did not run
            self.state.tool_calls += 1
        last = next((r for r in reversed(self.runs.values()) if r.loop == self.loop), None)
        if result.startswith("error:") and last is not None and (last.name, last.arguments, last.result) == (
                call["name"], call["arguments"][:20_000], clipped(result)):
            result += "\nYou made this exact call before and it failed the same way: change it or do something else."
        run = self.ctx.transcript.write(
            ToolRun, loop=self.loop, turn=turn.turn, call_id=call["id"], name=call["name"],
            arguments=call["arguments"][:20_000], result=clipped(result), image=image,
            env_steps=self.state.env_steps - steps_before, seconds=round(time.perf_counter() - started, 3),
            # The loop's state only after a call that ran: a refused one changed nothing, and a turn of 350 calls past
            # the limit wrote the whole state (source, blocks, best candidate) 350 times, 54 MB (a red-team review,
            # 2026-12-05).
            state=self.state.model_dump(mode="json") if refused is None else {})
        self.runs[(run.turn, run.call_id)] = run
        self.seconds += run.seconds
        self.wb.event("tool", loop=self.loop, name=run.name, arguments=run.arguments[:160],
                      result=run.result[:240], env_steps=run.env_steps, seconds=run.seconds,
                      tool_calls=self.state.tool_calls, max_tool_calls=self.settings.max_tool_calls)

    def _take(self, turn: AgentTurn) -> None:
        self.turns.append(turn)
        self.tokens += turn.tokens
        self.seconds += turn.latency_s

    def _restore(self) -> None:
        """Rebuild the loop from its journal (a loop run again after a kill goes on where it stopped)."""
        for line in self.ctx.transcript.entries():
            if isinstance(line, AgentTurn) and line.loop == self.loop:
                self._take(line)
                if line.mode == "json":
                    self.mode = "json"
            elif isinstance(line, ToolRun) and line.loop == self.loop:
                self.runs[(line.turn, line.call_id)] = line
                self.seconds += line.seconds
                if line.state:  # none after a refused call: the state before it holds
                    self.state = LoopState.model_validate(line.state)
        idle = next((i for i, t in enumerate(reversed(self.turns)) if t.tool_calls), len(self.turns))
        if idle >= 2:  # the switch to JSON calls that followed two idle turns (it is not a line of its own)
            self.mode = "json"


def _unique_ids(calls: list[dict[str, str]], turn: int) -> list[dict[str, str]]:
    """Every call of a turn with an id of its own (a server may give none, or the same one twice)."""
    seen: set[str] = set()
    out = []
    for i, call in enumerate(calls):
        call_id = call["id"] or f"call-{turn}-{i}"
        while call_id in seen:
            call_id = f"{call_id}-{i}"
        seen.add(call_id)
        out.append({**call, "id": call_id})
    return out


def _call_id(call_id: str) -> str:
    """A tool call's id as the conversation sends it back: as the server gave it, or, past the 40 characters OpenAI
    takes (vLLM's are 46), a short id made from it, the same for the call and its result. A loop journalled against
    one server goes on against another after a resume."""
    if len(call_id) <= 40:
        return call_id
    return "call_" + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def _echoable(arguments: str) -> str:
    """A tool call's arguments as the conversation sends them back: as the model wrote them where they are a JSON
    object, else ``{}`` (the call's result already says they could not be read). vLLM parses every earlier call's
    arguments and fails the whole request on one cut off at the token limit, and so every later turn of the loop."""
    try:
        return arguments if isinstance(json.loads(arguments), dict) else "{}"
    except (ValueError, TypeError, RecursionError):
        return "{}"


_TAGGED = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


def calls_in_text(content: str) -> list[dict[str, str]]:
    """Tool calls a model wrote into its text instead of the API's field, as servers without a tool-call parser
    pass them on: Qwen/Hermes ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``, or a reply that is one
    such JSON object. Only calls that name a tool are taken."""
    found = _TAGGED.findall(content or "")
    if not found and (content or "").strip().startswith("{"):
        found = [content.strip()]
    calls = []
    for text in found:
        try:  # the model's text: JSON nested past the parser's depth raises RecursionError, not ValueError
            value = json.loads(text)
            name = value.get("name") or value.get("tool") if isinstance(value, dict) else None
            if isinstance(name, str) and name in TOOL_ARGS:
                calls.append({"id": "", "name": name, "arguments": json.dumps(value.get("arguments") or {})})
        except (ValueError, RecursionError):
            continue
    return calls


def json_turn(thought: str | None, tool_calls: list[dict]) -> str:
    """A turn as a model in JSON mode is shown it again: its thought and its call (or calls), the arguments parsed.
    Arguments read just under the parser's depth limit cannot always be written one level deeper: they are then
    quoted as the model sent them (the journal holds the turn, so it must render on every resume)."""
    def said(calls: list[dict]) -> str:
        return json.dumps({"thought": thought, "call": calls[0]} if len(calls) == 1 else {"thought": thought,
                                                                                           "calls": calls})

    try:
        return said([{"tool": c["name"], "arguments": _loads(c["arguments"])} for c in tool_calls])
    except (RecursionError, ValueError):
        return said([{"tool": c["name"], "arguments": c["arguments"]} for c in tool_calls])


def _loads(arguments: str, strict: bool = False) -> Any:
    """A tool call's arguments as the model wrote them (text it wrote: anything at all)."""
    try:
        value = json.loads(arguments or "{}")
    except RecursionError:
        if strict:
            raise ValueError("the arguments are JSON nested too deeply to read") from None
        return arguments
    except ValueError as exc:
        if strict:
            raise ValueError(f"the arguments are not JSON ({exc}); they may have been cut off") from None
        return arguments
    if strict and not isinstance(value, dict):
        raise ValueError("the arguments must be a JSON object")
    return value


def loop_key(attempt: int, branch: int = 0) -> str:
    """The loop's name in the journal: one per try of the iteration, and per candidate when several run."""
    return f"attempt-{attempt}" + (f"-candidate-{branch + 1}" if branch else "")
