"""The graph on the LLM path: the real openai client against a scripted server, real CartPole, git and ChromaDB.

Iteration 1: the video analyst is rate-limited once, the coder first answers with text that
is not JSON and then with a SEARCH block that does not match (the check sends it back with
the nearest lines), then a structural edit that balances the pole; the test writer pins
it, the gate and the model review accept it, and it is committed. Iteration 2: an edit that
breaks balancing passes the smoke check but fails iteration 1's regression test, so it is
rejected and rolled back. Then ``heurist replay`` reaches the same decisions without the server.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from envs.ledger import Ledger
from graph.config import RunConfig
from graph.run import create_run, decisions, execute
from graph.transcripts import TranscriptRecorder
from graph.workspace import Workspace
from tests.scripted_openai import ScriptedOpenAI
from tests.test_cli import HEURIST
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


def written_test(name: str, source: str) -> dict:
    return reply({"filename": name, "source": source, "rationale": "pins the fix", "seeds": [0]})


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def test_llm_run_commits_a_good_edit_rolls_back_a_bad_one_and_replays(home):
    policy = home / "weak.py"
    policy.write_text(WEAK)
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
            # iteration 2
            seen("the episode ends at the time limit"),
            edit(BALANCES, ALWAYS_LEFT, "simplify the rule"),
            written_test("tests/test_seed_1_runs.py", PIN_LOADS),
        )
        config = RunConfig.model_validate({
            "task": "CartPole-v1", "policy": str(policy),
            "budget": {"iterations": 2, "stop_when": "never"},
            "llm": {"model": "gpt-4.1-mini", "base_url": server.base_url, "retry_base_s": 0.01, "timeout_s": 5},
            "eval": {"episodes": 8, "holdout": False}})
        run_dir = create_run(config, home / "run")
        state = execute(run_dir)
        assert not server.replies, f"{len(server.replies)} scripted replies were not used"
        coder_prompts = [r["body"]["messages"][-1]["content"] for r in server.requests
                         if "You are the coder" in r["body"]["messages"][0]["content"]]

    assert state["status"] == "finished" and state["iteration"] == 2
    # The check sent the unmatched SEARCH block back to the coder with the nearest lines.
    assert any("does not match the policy file exactly" in p and "nearest lines" in p for p in coder_prompts)

    history = state["history"]
    assert [h["accepted"] for h in history] == [True, False]
    assert history[0]["mean_before"] < 100 and history[0]["mean_after"] == 500.0
    assert "regression tests failed" in history[1]["reason"]

    workspace = Workspace(run_dir / "workspace")
    log = workspace.history()
    assert len(log) == 2 and "Heurist-Iteration: 1" in log[0]["body"]
    assert "push toward the fall" in log[0]["subject"] + log[0]["body"]
    assert BALANCES in workspace.policy.read_text()  # the bad edit was rolled back
    assert (workspace.tests / "test_balance_seed_0.py").read_text() == PIN_BALANCE
    assert not (workspace.tests / "test_seed_1_runs.py").exists()
    assert policy.read_text() == WEAK  # the starting file is never modified

    recorder = TranscriptRecorder(run_dir)
    calls = [e for e in recorder.read() if e["kind"] == "llm_call"]
    assert any("429" in (e.get("error") or "") or "RateLimit" in (e.get("error") or "") for e in calls)
    priced = [e for e in calls if e.get("prompt_tokens")]
    assert priced and all(e["usd"] > 0 and e["latency_s"] >= 0 for e in priced)
    assert any(e["kind"] == "validation_error" for e in recorder.read(1, "coder"))
    video_call = next(e for e in calls if e["role"] == "video_analyst" and e.get("response"))
    images = [p for m in video_call["messages"] if isinstance(m["content"], list)
              for p in m["content"] if p.get("type") == "image"]
    assert images and all(Path(p["path"]).is_file() for p in images)  # images by path, never base64
    assert state["spent"]["tokens"] == sum(e["prompt_tokens"] + e["completion_tokens"] for e in priced)

    records, bad = Ledger(run_dir / "ledger.jsonl").read()
    assert bad == 0
    assert [r["iteration"] for r in records if r["event"] == "iteration"] == [1, 2]

    # Replay: the recorded replies in place of the model (no server now) reach the same decisions.
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    done = subprocess.run([HEURIST, "replay", str(run_dir), "--run-dir", str(home / "replay"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "same decisions in all 2 iterations" in done.stdout
    assert decisions(home / "replay") == decisions(run_dir)

    shown = subprocess.run([HEURIST, "transcripts", str(run_dir), "--role", "coder", "--iter", "1"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and "iteration 1 · coder" in shown.stdout and "reply did not match" in shown.stdout


def llm_config(server: ScriptedOpenAI, policy: Path, **budget) -> RunConfig:
    return RunConfig.model_validate({
        "task": "CartPole-v1", "policy": str(policy), "budget": {"patience": None, **budget},
        "llm": {"model": "gpt-4.1-mini", "base_url": server.base_url, "retry_base_s": 0.01, "timeout_s": 5,
                "max_retries": 0, "validation_retries": 0, "max_consecutive_failures": 2},
        "eval": {"episodes": 6, "holdout": False, "video": False}})


def test_model_failures_in_a_row_pause_the_run_and_resume_continues(home):
    policy = home / "weak.py"
    policy.write_text(WEAK)
    with ScriptedOpenAI() as server:  # nothing queued: every call is answered 500
        run_dir = create_run(llm_config(server, policy, iterations=3), home / "run")
        state = execute(run_dir)
        assert state["status"] == "paused" and state["iteration"] == 2
        assert "failed on the model" in state["stop_reason"]
        assert [h["accepted"] for h in state["history"]] == [False, False]
        assert all("the coder's model failed" in h["reason"] for h in state["history"])

        server.queue(edit(REACTS_LATE, BALANCES, "push toward the fall using the angle and its velocity"),
                     written_test("tests/test_balance_seed_0.py", PIN_BALANCE),
                     reply({"games_the_evaluation": False, "reasons": ["general rule"]}))
        state = execute(run_dir)  # the model is back
    assert state["status"] == "finished" and state["iteration"] == 3
    assert [h["accepted"] for h in state["history"]] == [False, False, True]
    records, _ = Ledger(run_dir / "ledger.jsonl").read()
    assert [r["event"] for r in records if r["event"].startswith("run_")] == [
        "run_started", "run_paused", "run_resumed", "run_finished"]


def test_usd_budget_is_a_hard_stop_on_model_calls(home):
    policy = home / "weak.py"
    policy.write_text(WEAK)
    with ScriptedOpenAI() as server:
        # One call of 1000 + 200 tokens costs $0.00072 at gpt-4.1-mini's list price: over a $0.0005 budget.
        server.queue(edit(REACTS_LATE, BALANCES, "push toward the fall using the angle and its velocity"))
        state = execute(create_run(llm_config(server, policy, iterations=5, usd=0.0005), home / "run"))
        chat_calls = [r for r in server.requests if r["path"].endswith("/chat/completions")]
    assert len(chat_calls) == 1  # the test writer's and reviewer's calls were never sent
    assert state["status"] == "finished" and state["iteration"] == 1
    assert state["stop_reason"].startswith("USD budget spent")
    assert "USD budget spent" in state["history"][0]["reason"]
