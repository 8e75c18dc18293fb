"""The coder as a tool-using agent, driven through the real ``openai`` client against the strict scripted
server: real CartPole, real sandboxed evaluations and tests, real git and transcripts.

The scripted model reads, traces, makes a SEARCH block that does not match (and is told the nearest
lines), asks for a holdout seed (refused), edits, scores, runs the tests and submits; the iteration's
edit is then checked, tested and reviewed like any other. A kill -9 in the middle of the loop is
resumed from the loop's journal without asking a recorded turn again or running a recorded tool twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.ledger import Ledger
from envs.evaluator import EvalRequest, evaluate
from envs.limits import Limits
from envs.scenario_files import load_scenario, save_scenarios
from envs.tasks import get_task
from runner.lifecycle import execute
from store.config import RunConfig
from store.rundir import create_run
from store.transcripts import AgentTurn, ToolRun, TranscriptRecorder
from tests.scripted_openai import ScriptedOpenAI, tool_call_reply
from tests.scripted_runs import BALANCES, PIN_BALANCE, REACTS_LATE, WEAK, lesson, reply, written_test
from tests.test_cli import HEURIST
from tests.test_faults import _start, _wait_for
from tests.test_graph_llm import decisions

WRONG_SEARCH = "        return 1 if obs[2] > 0.1 else 0\n"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def agent_config(server: ScriptedOpenAI, policy, **code) -> RunConfig:
    return RunConfig.model_validate({
        "task": "CartPole-v1", "policy": str(policy), "budget": {"iterations": 1, "patience": None},
        "llm": {"model": "gpt-4.1-mini", "base_url": server.base_url, "retry_base_s": 0.01, "timeout_s": 20,
                "max_retries": 0, "validation_retries": 0},
        "code": code, "eval": {"episodes": 6, "holdout": False, "video": False},
        # No HTML report unless a test reads it: a view (tests/test_report.py) costing a second per iteration here.
        "report": False})


def loop_turns() -> list[dict]:
    return [
        tool_call_reply(("read_file", {"path": "."}), ("trace", {"seed": 0, "first_step": 0, "last_step": 4}),
                        content="Look at the files and the first steps of seed 0."),
        tool_call_reply(("edit", {"blocks": [{"search": WRONG_SEARCH, "replace": BALANCES}]})),
        tool_call_reply(("score", {"seeds": [0, 1000]})),
        tool_call_reply(("edit", {"blocks": [{"search": REACTS_LATE, "replace": BALANCES}]})),
        tool_call_reply(("score", {"seeds": [0, 1]}), ("run_tests", {})),
        tool_call_reply(("submit", {"rationale": "push toward the fall using the angle and its velocity",
                                    "target_seeds": [0, 1], "target_kinds": ["pole_fell"]})),
    ]


def after_the_loop() -> list[dict]:
    return [written_test("tests/test_balance_seed_0.py", PIN_BALANCE),
            reply({"games_the_evaluation": False, "reasons": ["a general control rule"]}), lesson()]


def tool_runs(run_dir, iteration: int = 1) -> list[ToolRun]:
    return [e for e in TranscriptRecorder(run_dir).read(iteration, "coder") if isinstance(e, ToolRun)]


def test_the_agent_experiments_then_its_edit_is_checked_tested_and_committed(home):
    policy = home / "weak.py"
    policy.write_text(WEAK)
    events = []
    with ScriptedOpenAI() as server:
        server.queue(*loop_turns(), *after_the_loop())
        run_dir = create_run(agent_config(server, policy), home / "run")
        state = execute(run_dir, lambda kind, fields: events.append((kind, fields)))
        requests = [r["body"] for r in server.requests if r["path"].endswith("/chat/completions")]
        assert not server.replies, f"{len(server.replies)} scripted replies were not used"

    assert state["history"][0]["accepted"], state["history"]
    assert BALANCES in (run_dir / "workspace" / "policy.py").read_text()

    runs = tool_runs(run_dir)
    assert [r.name for r in runs] == ["read_file", "trace", "edit", "score", "edit", "score", "run_tests", "submit"]
    listing, trace, bad_edit, holdout, _, score, tests, _ = (r.result for r in runs)
    assert "candidate.py" in listing and "tests/test_policy_runs.py" in listing
    assert trace.startswith("incumbent, seed 0") and "t=0 action=" in trace
    assert "does not match" in bad_edit and "nearest lines" in bad_edit and "unchanged" in bad_edit
    assert "not dev seeds" in holdout  # a holdout seed is refused, never run
    assert "seed 0: 500.000 (incumbent" in score and "mean change against the incumbent" in score
    assert tests.startswith("1 of 1 test files passed")
    assert runs[5].env_steps > 0 and runs[6].env_steps > 0  # the candidate's seeds, then its dev evaluation
    records, _ = Ledger(run_dir / "ledger.jsonl").read()
    assert not any(r["event"] == "eval_started" and r.get("split") != "dev" for r in records)

    # Every request was one the real API takes (the strict server refuses a tool message that answers no
    # call, a call left unanswered, an unknown field); the tools went as chat completions `tools`.
    loop_requests = [r for r in requests if r.get("tools")]
    assert len(loop_requests) == 6 and all(r["tool_choice"] == "auto" for r in loop_requests)
    last = loop_requests[-1]["messages"]
    assert [m["role"] for m in last[:2]] == ["system", "user"] and sum(m["role"] == "tool" for m in last) == 7

    turns = [e for e in TranscriptRecorder(run_dir).read(1, "coder") if isinstance(e, AgentTurn)]
    assert [t.turn for t in turns] == [1, 2, 3, 4, 5, 6] and all(t.tokens > 0 for t in turns)
    assert [f["name"] for kind, f in events if kind == "tool"][:2] == ["read_file", "trace"]
    commit_body = state["history"][0]["edit"]
    assert "angle and its velocity" in commit_body
    # The test writer wrote after the candidate was scored: it was told the gain per seed, and the accepted tests.
    writer = next(r for r in requests if "test writer" in r["messages"][0]["content"])["messages"][-1]["content"]
    assert "(incumbent -> candidate):\nseed 0: " in writer and "-> 500" in writer
    assert "def test_policy_runs_a_dev_episode" in writer

    # `heurist replay` replays the whole loop: the turns from the journal, the tools run again.
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run([HEURIST, "replay", str(run_dir), "--run-dir", str(home / "replay"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert decisions(home / "replay") == decisions(run_dir)
    assert [r.result for r in tool_runs(home / "replay")] == [r.result for r in runs]


def test_a_kill_9_inside_the_loop_resumes_without_asking_or_running_anything_twice(home):
    policy = home / "weak.py"
    policy.write_text(WEAK)
    turns = loop_turns()
    with ScriptedOpenAI() as server:
        # Turn 4 hangs: the run is killed while it waits, after turns 1-3 and their tools were recorded.
        server.queue(*turns[:3], {**turns[3], "delay": 120}, turns[3], *turns[4:], *after_the_loop())
        run_dir = create_run(agent_config(server, policy), home / "run")
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        proc = _start([sys.executable, "-c", f"from runner.lifecycle import execute; execute({str(run_dir)!r})"], env)
        try:
            assert _wait_for(lambda: len(tool_runs(run_dir)) == 4 and len(server.requests) == 4, proc, 240), \
                proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "the loop never got to turn 4"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        before = [json.dumps(r["body"]["messages"]) for r in server.requests]
        state = execute(run_dir)
        asked = len(server.requests) - len(before)

    assert state["history"][0]["accepted"], state["history"]
    # Resumed: turn 4 asked again (its answer was lost with the process), then turns 5-6, the test writer, the
    # reviewer and the lesson writer; turns 1-3 never again.
    assert asked == 6
    runs = tool_runs(run_dir)
    assert len({r.call_id for r in runs}) == len(runs) == 8  # every tool ran once
    records, _ = Ledger(run_dir / "ledger.jsonl").read()
    started = [r for r in records if r["event"] == "eval_started"]
    assert len({(r["policy_sha256"], tuple(r["seeds"])) for r in started}) == len(started)  # no evaluation twice


def test_a_server_without_tools_gets_each_call_as_a_json_object(home):
    """An endpoint that refuses `tools` (some local servers): the loop asks for one tool call at a time as a JSON
    object with a schema, and goes on the same way."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    refused = {"status": 400, "json": {"error": {"message": "tools are not supported by this server",
                                                 "type": "invalid_request_error"}}}
    calls = [{"tool": "frames", "arguments": {"seed": 1, "step": 3}},  # this run films nothing (eval.video off)
             {"tool": "edit", "arguments": {"blocks": [{"search": REACTS_LATE, "replace": BALANCES}]}},
             {"tool": "score", "arguments": {"seeds": [0]}},
             {"tool": "submit", "arguments": {"rationale": "push toward the fall", "target_seeds": [0]}}]
    with ScriptedOpenAI() as server:
        server.queue(refused, *[reply({"thought": "next", "call": c}) for c in calls], *after_the_loop())
        state = execute(create_run(agent_config(server, policy), home / "run"))
        bodies = [r["body"] for r in server.requests if r["path"].endswith("/chat/completions")]
    assert state["history"][0]["accepted"], state["history"]
    runs = tool_runs(home / "run")
    assert [r.name for r in runs] == ["frames", "edit", "score", "submit"]
    # A run that records no clips says so and spends nothing (an evaluation for a clip it would never film, before).
    assert runs[0].result.startswith("no frames: this run records no clips") and not runs[0].env_steps
    assert "tools" in bodies[0] and not any("tools" in b for b in bodies[1:])
    schema = bodies[1]["response_format"]["json_schema"]
    assert schema["name"] == "ToolRequest" and "Call_edit" in json.dumps(schema["schema"])  # each tool's arguments
    narrowed = [e for e in TranscriptRecorder(home / "run").read(1, "coder") if getattr(e, "narrowed", None)]
    assert narrowed and "tools" in narrowed[0].narrowed


def test_the_loop_budget_is_a_hard_stop_that_proposes_the_best_scored_candidate(home):
    """At code.max_tool_calls the loop ends without a submit: the candidate it scored above the incumbent is
    proposed, with the reason."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    with ScriptedOpenAI() as server:
        server.queue(tool_call_reply(("edit", {"blocks": [{"search": REACTS_LATE, "replace": BALANCES}]})),
                     tool_call_reply(("score", {"seeds": [0, 1]})), *after_the_loop())
        state = execute(create_run(agent_config(server, policy, max_tool_calls=2), home / "run"))
        assert not server.replies
    assert state["history"][0]["accepted"], state["history"]
    assert "2 tool calls (code.max_tool_calls)" in state["history"][0]["edit"]


def test_tool_calls_written_in_the_text_are_taken_as_calls():
    from roles.coder_agent import calls_in_text

    hermes = 'Let me look.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "policy.py"}}\n</tool_call>'
    assert calls_in_text(hermes) == [{"id": "", "name": "read_file", "arguments": '{"path": "policy.py"}'}]
    assert [c["name"] for c in calls_in_text('{"tool": "run_tests", "arguments": {}}')] == ["run_tests"]
    assert calls_in_text('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>') == []  # not a tool
    assert calls_in_text("I would edit the angle gain.") == []
    # What no parser of the model's text may be stopped by: a name that is no string, JSON nested past any depth.
    assert calls_in_text('{"name": ["read_file"], "arguments": {}}') == []
    deep = '{"name": "read_file", "arguments": ' + "[" * 5000 + "]" * 5000 + "}"
    assert calls_in_text(f"<tool_call>{deep}</tool_call>") == [] and calls_in_text(deep) == []


def test_tool_arguments_nested_past_any_depth_are_an_error_the_model_is_told():
    from roles.coder_agent import _loads

    deep = '{"path": ' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(ValueError, match="nested too deeply"):
        _loads(deep, strict=True)
    assert _loads(deep) == deep  # a conversation rebuilt from the journal keeps the text as the model wrote it


def test_a_turn_whose_arguments_the_parser_just_read_is_shown_again_in_json_mode():
    """Found by a red-team review (2026-12-05): arguments nested just under the parser's depth limit were read, then
    could not be written one level deeper when the conversation was rebuilt in JSON mode; the run stopped, and
    on every resume (the journal holds the turn). Whatever the depth, the turn renders: parsed, or as sent."""
    from roles.coder_agent import json_turn

    for depth in range(850, 1000):  # the window is one level wide, where depends on the stack: all of them
        arguments = '{"path": ' + "[" * depth + "]" * depth + "}"
        shown = json.loads(json_turn("looking", [{"id": "c", "name": "read_file", "arguments": arguments}]))
        assert shown["call"]["tool"] == "read_file" and shown["thought"] == "looking"


LEANS = "        return 1 if obs[2] + 0.4 * obs[3] > 0 else 0\n"


def test_candidates_side_by_side_the_best_is_gated_first_and_the_next_takes_over(home):
    """code.parallel = 2: two agents at once (LangGraph Send), each with its own focus; both candidates are
    checked and scored, the better goes to the tests and the gate first, and when the reviewer rejects it the
    other is tested and gated in turn and committed."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    reviews = iter([{"games_the_evaluation": True, "reasons": ["reads a hidden counter"]},
                    {"games_the_evaluation": False, "reasons": ["a general control rule"]}])

    def respond(body: dict) -> dict:
        system, brief = body["messages"][0]["content"], body["messages"][1]["content"]
        if body.get("tools"):
            replace = LEANS if "try a new rule" in brief else BALANCES
            turn = sum(m["role"] == "assistant" for m in body["messages"])
            return [tool_call_reply(("edit", {"blocks": [{"search": REACTS_LATE, "replace": replace}]})),
                    tool_call_reply(("submit", {"rationale": f"lean on the spin ({replace.strip()[:30]})",
                                                "target_seeds": [0]}))][turn]
        if "test writer" in system:
            return written_test("tests/test_balance_seed_0.py", PIN_BALANCE)
        return reply(next(reviews))

    with ScriptedOpenAI(responder=respond) as server:
        state = execute(create_run(agent_config(server, policy, parallel=2), home / "run"))
    entry = state["history"][0]
    assert entry["accepted"], entry
    assert LEANS in (home / "run" / "workspace" / "policy.py").read_text()  # the second candidate, committed
    assert "before it, candidate 1: " in entry["reason"] and "reads a hidden counter" in entry["reason"]
    loops = {e.loop for e in TranscriptRecorder(home / "run").read(1, "coder") if isinstance(e, AgentTurn)}
    assert loops == {"attempt-1", "attempt-1-candidate-2"}
    turns = [e for e in TranscriptRecorder(home / "run").read(1, "coder") if isinstance(e, AgentTurn)]
    assert all(t.tokens == 860 for t in turns)  # each loop counts its own calls, though they ran at once


def test_a_model_stuck_on_one_failing_call_ends_its_loop_early(home):
    """A small local model that repeats one failing call is told so, and after three the loop ends, rather than
    spending its whole budget."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    stuck = tool_call_reply(("edit", {"blocks": [{"search": WRONG_SEARCH, "replace": BALANCES}]}))
    with ScriptedOpenAI() as server:
        server.queue(stuck, stuck, stuck)
        state = execute(create_run(agent_config(server, policy), home / "run"))
        assert not server.replies
    runs = tool_runs(home / "run")
    assert len(runs) == 3 and "You made this exact call before" in runs[1].result
    assert "the same failing call 3 times in a row" in state["history"][0]["reason"]


def test_a_submit_after_a_failed_call_is_refused_and_every_call_counts_against_the_limit(home):
    """Calls of one turn run in order: a submit behind a failed edit is refused (the model is told why), and
    the loop's limit is checked before every call, so calls past it are answered "not run", never run; a
    submit, which spends nothing, still ends the loop with the finished edit."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    good = {"blocks": [{"search": REACTS_LATE, "replace": BALANCES}]}
    with ScriptedOpenAI() as server:
        server.queue(tool_call_reply(("edit", {"blocks": [{"search": WRONG_SEARCH, "replace": BALANCES}]}),
                                     ("submit", {"rationale": "balances"})),
                     tool_call_reply(("edit", good), ("score", {"seeds": [0]}), ("submit", {"rationale": "balances"})),
                     *after_the_loop())
        state = execute(create_run(agent_config(server, policy, max_tool_calls=3), home / "run"))
        assert not server.replies
    runs = tool_runs(home / "run")
    assert [r.name for r in runs] == ["edit", "submit", "edit", "score", "submit"]
    assert runs[1].result.startswith("error: not submitted: your edit call before it in this turn failed")
    assert runs[3].result.startswith("not run: the loop's limit was reached (3 tool calls")
    assert runs[3].env_steps == 0 and runs[4].result == "submitted"
    # A refused call changed nothing: its line holds no copy of the loop's state (350 of them wrote 54 MB).
    assert runs[3].state == {} and runs[2].state and runs[4].state
    assert state["history"][0]["accepted"], state["history"]


def test_the_seed_rule_allows_generators_and_none_checks_and_blocks_only_what_an_edit_adds():
    from envs.contract import seed_special_cases

    seeded = '''import random
import numpy as np


class Policy:
    def reset(self, seed=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.noise = random.Random(int(seed or 0))

    def act(self, obs, info):
        return 0 if self.rng.random() < 0.1 else 1
'''
    assert seed_special_cases(seeded) is None
    helper = seeded.replace("np.random.default_rng(seed)", "self._generator(seed)") + (
        "\n    def _generator(self, seed):\n        return np.random.default_rng(seed)\n")
    assert seed_special_cases(helper) is None
    copied = seeded.replace("        self.noise", "        self.which = seed\n        self.noise")
    for cheat in ("return 0 if self.which == 3 else 1", "return {3: 0}.get(self.which, 1)",
                  "return [1, 0, 1][self.which % 3]", "return 0 if int(self.which) == 3 else 1"):
        found = seed_special_cases(copied.replace("return 0 if self.rng.random() < 0.1 else 1", cheat))
        assert found and "special-cases the seed" in found, cheat
    old = copied.replace("return 0 if self.rng.random() < 0.1 else 1", "return 0 if self.which == 3 else 1")
    assert seed_special_cases(old.replace("return 0", "return 1"), before=old) is None  # not this edit's doing
    # Copies a red-team review found the rule blind to: into tuples and lists, starred, added, through __dict__.
    cheat = old.replace("        self.which = seed\n", "        {copy}\n")
    for copy in ("self.which, = seed,", "[self.which] = [seed]", "self.other, *self.which = 0, seed",
                 "self.which = 0; self.which += seed", 'self.__dict__["which"] = seed',
                 "self.a, (self.which, self.b) = 0, (seed, 1)"):
        found = seed_special_cases(cheat.format(copy=copy))
        assert found and "special-cases the seed" in found, copy
    # Element by element where it can tell: the attribute given 0 beside the seed is not the seed.
    assert seed_special_cases(old.replace("self.which = seed", "self.k, self.which = seed, 0")) is None


def test_frames_shows_a_vision_model_the_contact_sheet_as_an_image(home):
    """frames(seed, step): the clip nearest the step; its contact sheet goes to a model that takes images as an
    image part with only the fields the API defines, after the tool messages (a tool message holds text)."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    with ScriptedOpenAI() as server:
        config = agent_config(server, policy).model_dump()
        config["eval"]["video"] = True
        config["report"] = True  # the page shows the tool's contact sheet
        config["stages"] = {"analyse": ["log_parser"]}  # no video analyst: its calls are not what is tested here
        server.queue(tool_call_reply(("frames", {"seed": 0, "step": 9})),
                     tool_call_reply(("edit", {"blocks": [{"search": REACTS_LATE, "replace": BALANCES}]}),
                                     ("submit", {"rationale": "push toward the fall"})), *after_the_loop())
        state = execute(create_run(RunConfig.model_validate(config), home / "run"))
        requests = [r["body"] for r in server.requests if r["body"].get("tools")]
    assert state["history"][0]["accepted"], state["history"]
    frames = tool_runs(home / "run")[0]
    assert frames.result.startswith("clip ") and frames.image and frames.image.endswith(".png")
    shown = requests[1]["messages"]
    assert [m["role"] for m in shown[-2:]] == ["tool", "user"]
    [image] = [p for p in shown[-1]["content"] if p["type"] == "image_url"]
    assert set(image) == {"type", "image_url"} and image["image_url"]["url"].startswith("data:image/png;base64,")
    page = (home / "run" / "report" / "index.html").read_text()
    assert "attempt-1, tool frames" in page and "attempt-1, turn 2: called edit, submit" in page


def test_the_scenario_tool_replays_a_saved_failure_on_the_incumbent_and_on_the_candidate(home):
    """scenario(name): the moment saved before a failure (here the incumbent's own, saved in the run's folder as
    write_tests or a recall would) replayed in the sandbox with either policy, each step shown, its env steps in
    the ledger."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    result = evaluate(get_task("CartPole-v1"), EvalRequest(policy_path=policy, task_id="CartPole-v1", episodes=1,
                                                           workers=1, limits=Limits()), Ledger(home / "l.jsonl"))
    with ScriptedOpenAI() as server:
        config = agent_config(server, policy).model_dump()
        config["stages"] = {"analyse": ["log_parser"]}  # the video analyst would watch the old failure: not here
        run_dir = create_run(RunConfig.model_validate(config), home / "run")
        saved = save_scenarios(result, get_task("CartPole-v1").model_dump_json(), WEAK, str(policy), Limits(),
                               run_dir / "scenarios", [], before=10, warmup=1, most=1)
        [[name]] = saved.by_seed.values()
        server.queue(tool_call_reply(("scenario", {"name": "."}), ("scenario", {"name": name}),
                                     ("scenario", {"name": "seed0-nothing-step1"})),
                     tool_call_reply(("edit", {"blocks": [{"search": REACTS_LATE, "replace": BALANCES}]}),
                                     ("scenario", {"name": name, "policy": "candidate", "frames": True}),
                                     ("submit", {"rationale": "push toward the fall"})), *after_the_loop())
        state = execute(run_dir)
        first_prompt = next(r["body"] for r in server.requests if r["body"].get("tools"))
    assert state["history"][0]["accepted"], state["history"]
    assert name in json.dumps(first_prompt["messages"])  # the brief lists the saved scenarios
    listing, incumbent, unknown, _, candidate, _ = (r.result for r in tool_runs(run_dir))
    assert listing.startswith("scenarios:") and name in listing
    assert incumbent.startswith(f"incumbent from scenario {name}") and "failed that way again" in incumbent
    assert "t=" in incumbent and "action=" in incumbent and "obs=[" in incumbent
    assert candidate.startswith(f"candidate from scenario {name}") and "did not fail that way" in candidate
    filmed = tool_runs(run_dir)[4]
    assert "contact sheet follows as an image" in candidate and filmed.image.endswith(".png")
    assert (run_dir / "clips" / "scenarios") in Path(filmed.image).parents  # in the run, out of every sandbox
    assert unknown.startswith("error: no scenario seed0-nothing-step1") and name in unknown
    records, _ = Ledger(run_dir / "ledger.jsonl").read()
    counted = [r for r in records if r["event"] == "scenario_steps" and r["where"] == "the coder's scenario tool"]
    window = len(load_scenario(run_dir / "scenarios", name).actions)
    assert [r["env_steps"] for r in counted] == [window, 2 * window]  # fell where it fell; balanced as long again


def test_a_tool_call_cut_off_mid_arguments_goes_back_to_the_server_as_an_empty_object():
    """vLLM parses every earlier tool call's arguments in the conversation and fails the whole request on one that is
    no JSON (a reply cut off at the token limit), so every later turn of the loop failed (a review, 2026-12-06)."""
    from roles.coder_agent import _echoable

    assert _echoable('{"seeds": [0, 1]}') == '{"seeds": [0, 1]}'  # as the model wrote it
    assert _echoable('{"blocks": [{"search": "x = 1", "rep') == "{}"
    assert _echoable("[1, 2]") == "{}" and _echoable("") == "{}" and _echoable("[" * 100_000) == "{}"


def test_a_tool_call_id_past_openais_40_characters_goes_back_short_and_the_same_for_its_result():
    """vLLM's ids are 46 characters, OpenAI refuses ids past 40: a loop journalled against one and resumed against the
    other sent them back as they were (a review, 2026-12-06)."""
    from roles.coder_agent import _call_id

    vllm = "chatcmpl-tool-" + "a" * 32
    assert _call_id("call_abc") == "call_abc" and len(_call_id(vllm)) <= 40
    assert _call_id(vllm) == _call_id(vllm) != _call_id(vllm[:-1] + "b")
