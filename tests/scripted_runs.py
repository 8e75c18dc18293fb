"""A recorded run on the LLM path, shared by the tests that read one: the real openai client against a
scripted server, real CartPole, git and ChromaDB.

Iteration 1: the video analyst is rate-limited once, the coder first answers with text that
is not JSON and then with a SEARCH block that does not match (the check sends it back with
the nearest lines), then a structural edit that balances the pole; the test writer pins
it, the gate and the model review accept it, and it is committed. Iteration 2: an edit that
breaks balancing passes the smoke check but fails iteration 1's regression test, so it is
rejected and rolled back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.lifecycle import execute
from store.config import RunConfig
from store.rundir import create_run
from tests.scripted_openai import ScriptedOpenAI
from tests.test_llm import chat

WEAK = '''class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        self.diagnostics = {"mode": "lean"}
        return 1 if obs[2] > 0.05 else 0
'''
REACTS_LATE = "        return 1 if obs[2] > 0.05 else 0\n"
BALANCES = "        return 1 if obs[2] + 0.5 * obs[3] > 0 else 0\n"
ALWAYS_LEFT = "        return 0\n"

PIN_BALANCE = '''from heurist_testkit import first_event, run_episode


def test_seed_0_pole_does_not_fall_before_step_400():
    result = run_episode(0)
    assert result["status"] == "ok", result.get("error")
    fell = first_event(result, "pole_fell")
    assert fell is None or fell >= 400, fell
'''
PIN_LOADS = '''from heurist_testkit import run_episode


def test_seed_1_runs():
    assert run_episode(1)["status"] == "ok"
'''


def reply(obj: dict) -> dict:
    return chat(json.dumps(obj), prompt_tokens=1000, completion_tokens=200)


def edit(search: str, replace: str, why: str) -> dict:
    return reply({"kind": "search_replace", "rationale": why, "blocks": [{"search": search, "replace": replace}],
                  "tunables": {}, "target_seeds": [0], "target_kinds": ["pole_fell"]})


def seen(what: str) -> dict:
    return reply({"findings": [{"seed": 0, "step": 9, "what_went_wrong": what, "evidence": "last frames"}],
                  "summary": what})


LESSON = "Pushing toward the fall from the angle and its velocity keeps the pole up where reacting late does not"
WORSE_LESSON = "Replacing a feedback rule with a constant action loses the balance at once"


def lesson(statement: str = LESSON) -> dict:
    """The lesson writer's reply (roles.lesson_writer), asked after each edit that taught something."""
    return reply({"statement": statement})


def written_test(name: str, source: str) -> dict:
    return reply({"filename": name, "source": source, "rationale": "pins the fix", "seeds": [0]})


@dataclass
class RecordedRun:
    home: Path  # $HEURIST_HOME was home / "home" while it ran
    run_dir: Path
    policy: Path
    state: dict[str, Any]
    coder_prompts: list[str]
    unused_replies: int
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """A subprocess environment for commands on this run: its home, and no API key."""
        env = {k: v for k, v in base.items() if k != "OPENAI_API_KEY"}
        env["HEURIST_HOME"] = str(self.home / "home")
        return env


def record_llm_run(home: Path) -> RecordedRun:
    policy = home / "weak.py"
    policy.write_text(WEAK)
    events: list[tuple[str, dict[str, Any]]] = []
    with ScriptedOpenAI() as server:
        server.queue(
            # iteration 1
            {"status": 429, "headers": {"Retry-After": "0"}, "json": {"error": {"message": "slow down"}}},
            seen("the pole tips right and the cart reacts too late"),
            chat("I think you should push earlier."),  # not JSON: re-asked with the validation error
            edit("        return 1 if obs[2] > 0.1 else 0\n", BALANCES, "react to angular velocity"),  # no match
            edit(REACTS_LATE, BALANCES, "push toward the fall using the angle and its velocity, not late"),
            written_test("tests/test_balance_seed_0.py", PIN_BALANCE),
            reply({"games_the_evaluation": False, "reasons": ["a general control rule, no seed branches"]}),
            lesson(),
            # iteration 2
            seen("the episode ends at the time limit"),
            edit(BALANCES, ALWAYS_LEFT, "simplify the rule"),
            written_test("tests/test_seed_1_runs.py", PIN_LOADS),
            lesson(WORSE_LESSON),  # rejected, and clearly worse: a lesson too
        )
        config = RunConfig.model_validate({
            "task": "CartPole-v1", "policy": str(policy),
            "budget": {"iterations": 2, "stop_when": "never"}, "code": {"mode": "single"},
            "llm": {"model": "gpt-4.1-mini", "base_url": server.base_url, "retry_base_s": 0.01, "timeout_s": 5},
            "eval": {"episodes": 8, "holdout": False}})
        run_dir = create_run(config, home / "run")
        state = execute(run_dir, lambda kind, fields: events.append((kind, fields)))
        coder_prompts = [r["body"]["messages"][-1]["content"] for r in server.requests
                         if "You are the coder" in r["body"]["messages"][0]["content"]]
        return RecordedRun(home=home, run_dir=run_dir, policy=policy, state=state, coder_prompts=coder_prompts,
                           unused_replies=len(server.replies), events=events)
