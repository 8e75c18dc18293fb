"""Untrusted policy code stays untrusted: each hostile policy is contained, recorded with a reason, and the evaluation goes on."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from envs.isolation import netns_prefix
from envs.limits import Limits

HOSTILE = Path(__file__).parent / "hostile"
FAST = Limits(episode_timeout_s=3, episode_cpu_s=3, memory_mb=1024, fsize_mb=16)

CASES = [
    # file, task, expected status, words the recorded reason must contain
    ("raises.py", "CartPole-v1", "policy_error", "ValueError: boom from the policy"),
    ("raises.py", "CartPole-v1", "policy_error", "raises.py:6 in act"),
    ("infinite_loop.py", "CartPole-v1", "crash", "CPU time limit exceeded"),
    ("sleeps_forever.py", "CartPole-v1", "timeout", "wall-clock limit"),
    ("os_exit.py", "CartPole-v1", "crash", "exited with code 3"),
    ("segfault.py", "CartPole-v1", "crash", "segmentation fault"),
    ("eats_memory.py", "CartPole-v1", "policy_error", "MemoryError"),
    ("out_of_range.py", "CartPole-v1", "invalid_action", "outside the action range [0, 2)"),
    ("wrong_type.py", "CartPole-v1", "invalid_action", "returned 'left' (str)"),
    ("sys_exit_on_load.py", "CartPole-v1", "policy_error", "SystemExit: policy refuses to load"),
    ("missing_module.py", "CartPole-v1", "policy_error", "ModuleNotFoundError"),
    # CPython ignores SIGXFSZ, so the file-size limit surfaces as EFBIG inside the policy.
    ("prints_gigabytes.py", "CartPole-v1", "policy_error", "File too large"),
    ("nan_action.py", "Pendulum-v1", "invalid_action", "non-finite action"),
    ("forges_replies.py", "CartPole-v1", "crash", "the policy process broke the protocol: it sent a reply that is not JSON"),
]


@pytest.mark.parametrize("name,task,status,reason", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_hostile_policy_is_contained_and_explained(run_eval, ledger, name, task, status, reason):
    started = time.monotonic()
    # Only the policy that sleeps is about the wall-clock limit. Every other case gets one far above what it
    # needs, so that a loaded machine cannot turn its own failure into a timeout: a loop that burns CPU must
    # meet its CPU limit first (its CPU time grows slower than the wall clock), and a policy eating memory
    # zeroes about 800 MB before its MemoryError, which took over 6 s (3 s and 3 s of grace) in one CI run.
    limits = FAST if name == "sleeps_forever.py" else FAST.model_copy(update={"episode_timeout_s": 30})
    result = run_eval(HOSTILE / name, task, episodes=2, workers=2, limits=limits)
    assert time.monotonic() - started < 40
    assert [e.status for e in result.episodes] == [status, status]
    assert all(reason in e.error for e in result.episodes), result.episodes[0].error
    assert result.status == "broken" and result.stats is None
    records, bad = ledger.read()
    assert bad == 0 and [r["event"] for r in records] == ["eval_started", "eval_finished"]
    assert records[1]["status"] == "broken" and records[1]["per_episode"][0]["error"]
    if name == "sleeps_forever.py":  # killed at the timeout after 40 steps: the steps it took still count
        assert [e.env_steps for e in result.episodes] == [40, 40] and records[1]["env_steps"] == 80


def test_a_policy_cannot_change_its_own_score(run_eval, write_policy):
    """Patching gymnasium, numpy and heurist's modules changes only the policy's process: the
    score is exactly that of an honest policy taking the same actions."""
    patched = run_eval(HOSTILE / "patches_evaluator.py", "CartPole-v1", episodes=3, workers=2)
    honest = run_eval(write_policy("""
        class Policy:
            def reset(self, seed):
                pass

            def act(self, obs, info):
                return 0
        """), "CartPole-v1", episodes=3, workers=2)
    assert [e.status for e in patched.episodes] == ["ok"] * 3
    assert [(e.return_, e.length, e.trace.actions, e.trace.rewards) for e in patched.episodes] == \
           [(e.return_, e.length, e.trace.actions, e.trace.rewards) for e in honest.episodes]
    assert patched.stats == honest.stats and patched.stats.max < 20


def test_secrets_are_not_inherited(run_eval, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-must-not-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-must-not-leak")
    result = run_eval(HOSTILE / "reads_api_key.py", "CartPole-v1", episodes=1)
    assert result.episodes[0].status == "ok", result.episodes[0].error


@pytest.mark.skipif(not netns_prefix(), reason="this machine cannot create a network namespace (needs root or user namespaces)")
def test_policy_cannot_reach_a_server_on_loopback(run_eval, write_policy):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(8)
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)), daemon=True)
    thread.start()
    policy = write_policy(f'''
        import socket

        class Policy:
            def reset(self, seed):
                pass

            def act(self, obs, info):
                try:
                    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                except OSError as exc:
                    raise RuntimeError(f"isolated: {{exc}}")
                raise RuntimeError("reached the network")
        ''')
    result = run_eval(policy, "CartPole-v1", episodes=1)
    thread.join()
    server.close()
    assert "isolated" in result.episodes[0].error
    assert accepted == [None]


def _accept(server):
    try:
        conn, _ = server.accept()
        conn.close()
        return "connected"
    except OSError:
        return None


def test_a_failing_seed_does_not_stop_the_others(run_eval, write_policy):
    policy = write_policy('''
        class Policy:
            def reset(self, seed):
                self.seed = seed

            def act(self, obs, info):
                if self.seed == 1:
                    import os
                    os._exit(9)
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        ''')
    result = run_eval(policy, "CartPole-v1", episodes=4, workers=2)
    statuses = [e.status for e in result.episodes]
    assert statuses == ["ok", "crash", "ok", "ok"]
    assert result.status == "partial"
    assert result.stats is not None and result.failures["crash"] == 1


def test_steps_of_an_episode_that_dies_are_counted(run_eval, write_policy):
    """400 env steps, then the policy process ends itself: the steps were spent, so they count (the env process
    keeps the count where heurist reads it after the pair is gone; sleeps_forever.py covers a kill at the timeout)."""
    policy = write_policy('''
        import os

        class Policy:
            def reset(self, seed):
                self.t = 0

            def act(self, obs, info):
                self.t += 1
                if self.t > 400:
                    os._exit(0)
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        ''')
    result = run_eval(policy, "CartPole-v1", episodes=2, workers=2, limits=FAST)
    assert [e.status for e in result.episodes] == ["crash", "crash"]
    assert [e.env_steps for e in result.episodes] == [400, 400] and result.env_steps == 800
