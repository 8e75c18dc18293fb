"""The graph on the LLM path: the real openai client against a scripted server, real CartPole, git and ChromaDB.

The recorded run (``llm_run``, see ``tests/scripted_runs.py``) commits a good edit and rolls
back a bad one; ``heurist replay`` then reaches the same decisions without the server. Pauses
after model failures and the USD budget run their own short runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from common.ledger import Ledger
from memory.records import LessonRecord
from memory.store import MemoryConfig, MemoryStore
from runner.lifecycle import execute
from store.config import RunConfig
from store.rundir import create_run, decisions
from store.transcripts import TranscriptRecorder
from store.workspace import Workspace
from tests.scripted_openai import ScriptedOpenAI
from tests.scripted_runs import (
    BALANCES,
    LESSON,
    PIN_BALANCE,
    REACTS_LATE,
    WEAK,
    WORSE_LESSON,
    edit,
    lesson,
    reply,
    written_test,
)
from tests.test_cli import HEURIST


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def test_llm_run_commits_a_good_edit_rolls_back_a_bad_one_and_replays(llm_run):
    assert llm_run.unused_replies == 0, f"{llm_run.unused_replies} scripted replies were not used"
    state, run_dir, coder_prompts, policy = llm_run.state, llm_run.run_dir, llm_run.coder_prompts, llm_run.policy
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
    # heurist names new tests (the writer suggested tests/test_balance_seed_0.py): iteration 1's was kept
    # (it fails on the weak policy and passes on the edit); iteration 2's edit was rejected with its test.
    assert (workspace.tests / "test_iteration_0001.py").read_text() == PIN_BALANCE
    # The writer's test and the first one, beside heurist's own scenario tests (test_scenarios_*.py).
    assert sorted(p.name for p in workspace.tests.iterdir() if not p.name.startswith("test_scenarios_")) \
        == ["test_iteration_0001.py", "test_policy_runs.py"]
    assert policy.read_text() == WEAK  # the starting file is never modified

    recorder = TranscriptRecorder(run_dir)
    calls = [e for e in recorder.read() if e.kind == "llm_call"]
    assert any("429" in (e.error or "") or "RateLimit" in (e.error or "") for e in calls)
    priced = [e for e in calls if e.prompt_tokens]
    assert priced and all(e.usd > 0 and e.latency_s >= 0 for e in priced)
    assert any(e.kind == "validation_error" for e in recorder.read(1, "coder"))
    video_call = next(e for e in calls if e.role == "video_analyst" and e.response)
    images = [p for m in video_call.messages if isinstance(m["content"], list)
              for p in m["content"] if p.get("type") == "image"]
    assert images and all(Path(p["path"]).is_file() for p in images)  # images by path, never base64
    assert state["spent"]["tokens"] == sum(e.prompt_tokens + e.completion_tokens for e in priced)

    records, bad = Ledger(run_dir / "ledger.jsonl").read()
    assert bad == 0
    assert [r["iteration"] for r in records if r["event"] == "iteration"] == [1, 2]

    # The lessons are the model's lines with heurist's measured evidence: the accepted edit's helped, the clearly
    # worse one's did not (roles.lesson_writer).
    with MemoryStore(MemoryConfig(path=llm_run.home / "home" / "memory")) as memory:
        lessons = {r.statement: r for r in memory.records() if isinstance(r, LessonRecord)}
    assert set(lessons) == {LESSON, WORSE_LESSON}
    assert lessons[LESSON].outcome == "helped" and lessons[WORSE_LESSON].outcome == "did_not_help"
    assert "dev mean" in lessons[LESSON].evidence[0] and f"{run_dir.name}" not in lessons[LESSON].statement
    assert any(e.kind == "parsed" for e in recorder.read(1, "lesson_writer"))

    # Replay: the recorded replies in place of the model (no server now) reach the same decisions. From the run's own
    # copy of its starting policy, though the file it was copied from has changed since (the replay started from
    # the changed file, and "diverged"); and on this machine, though run.json names a Ray cluster.
    env = llm_run.env(dict(os.environ))
    replay, recorded = llm_run.home / "replay", llm_run.home / "recorded"
    shutil.copytree(run_dir, recorded, ignore=shutil.ignore_patterns("report", ".lock"))
    changed = llm_run.home / "changed since.py"
    changed.write_text(WEAK + "\n# edited after the run\n")
    record = json.loads((recorded / "run.json").read_text())
    record["starting_policy"] = str(changed)
    record["config"]["eval"].update(backend="ray", ray_address="127.0.0.1:9")
    (recorded / "run.json").write_text(json.dumps(record))
    done = subprocess.run([HEURIST, "replay", str(recorded), "--run-dir", str(replay), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "same decisions in all 2 iterations" in done.stdout
    assert decisions(replay) == decisions(run_dir)
    # It draws the recorded run's unseen seeds (a simplify stage's), from the recorded run's secret.
    assert json.loads((replay / "run.json").read_text())["screen_key"] == record["screen_key"]

    # A run stopped after its first iteration (killed in the second): the replay runs the iteration it decided, not its
    # whole budget, which reported the second as a divergence.
    lines = (recorded / "ledger.jsonl").read_text().splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if json.loads(line)["event"] == "iteration")
    (recorded / "ledger.jsonl").write_text("".join(lines[:first + 1]))
    done = subprocess.run([HEURIST, "replay", str(recorded), "--run-dir", str(llm_run.home / "replay-1"),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "is stopped (resume it) after 1 iterations: the replay runs those" in done.stderr
    assert "same decisions in all 1 iterations" in done.stdout

    shown = subprocess.run([HEURIST, "transcripts", str(run_dir), "--role", "coder", "--iter", "1"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and "iteration 1 · coder" in shown.stdout and "reply did not match" in shown.stdout


def llm_config(server: ScriptedOpenAI, policy: Path, **budget) -> RunConfig:
    return RunConfig.model_validate({
        "task": "CartPole-v1", "policy": str(policy), "budget": {"patience": None, **budget},
        "code": {"mode": "single"},
        "llm": {"model": "gpt-4.1-mini", "base_url": server.base_url, "retry_base_s": 0.01, "timeout_s": 5,
                "max_retries": 0, "validation_retries": 0, "max_consecutive_failures": 2},
        "eval": {"episodes": 6, "holdout": False, "video": False},
        "report": False})  # a view (tests/test_report.py, which reads the recorded run's): a second per iteration here


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


def test_a_run_paused_on_its_last_budgeted_iteration_finishes_on_resume(home):
    """Resuming undoes the pause, then routes as remember would: the iteration budget is spent, so it finishes."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    with ScriptedOpenAI() as server:  # nothing queued: every call is answered 500
        run_dir = create_run(llm_config(server, policy, iterations=2), home / "run")
        assert execute(run_dir)["status"] == "paused"
        calls = len(server.requests)
        state = execute(run_dir)
        assert len(server.requests) == calls  # no model call: no further iteration ran
    assert state["status"] == "finished" and state["iteration"] == 2
    assert state["stop_reason"] == "iteration budget spent (2 of 2)"
    records, _ = Ledger(run_dir / "ledger.jsonl").read()
    assert [r.get("at") for r in records if r["event"] == "run_resumed"] == [["finish"]]
    assert sum(r["event"] == "iteration" for r in records) == 2


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


def test_a_role_can_stay_offline_while_the_others_use_the_model(home):
    """[llm.roles.test_writer] offline = true: a model coder and reviewer, the template test writer."""
    policy = home / "weak.py"
    policy.write_text(WEAK)
    with ScriptedOpenAI() as server:
        data = llm_config(server, policy, iterations=1).model_dump()
        data["llm"]["roles"] = {"test_writer": {"offline": True}}
        config = RunConfig.model_validate(data)
        server.queue(edit(REACTS_LATE, BALANCES, "push toward the fall using the angle and its velocity"),
                     reply({"games_the_evaluation": False, "reasons": ["general rule"]}), lesson())
        state = execute(create_run(config, home / "run"))
        prompts = [r["body"]["messages"][0]["content"] for r in server.requests if r["path"].endswith("/completions")]
    assert state["history"][0]["accepted"], state["history"]
    recorder = TranscriptRecorder(home / "run")
    assert [line.kind for line in recorder.read(1, "test_writer")] == ["decision"]  # the template, no model
    assert {line.kind for line in recorder.read(1, "coder")} >= {"llm_call", "parsed"}
    assert len(prompts) == 3 and not any("test writer" in p.lower() for p in prompts)  # coder, reviewer, lesson
