"""The env process of an evaluation: runs episodes and reports typed results; the policy lives elsewhere.

Started by envs/sandbox.py as ``python -m envs.worker`` with a scrubbed environment and
its own process group. It runs only heurist's code and the environment's: the policy
file runs in a separate, sandboxed process (``envs.policy_host``) that receives each
observation and sends back an action and its diagnostics (``envs.wire``), which this
process reads as data, validates and steps the env with. The environment, the reward,
the failure detector and the trace all live here, so a policy that patches gymnasium,
numpy or heurist's modules changes only its own process, never its score.

It answers one JSON job per line on a private pipe. Each episode starts a fresh Policy
from a fresh module, so state cannot leak from one seed to the next: a seed's result is
the same whichever worker runs it, and in whatever order. Every job carries the policy's
source, which this process passes on; the policy process never reads a policy file.
Whatever the policy sends is bounded here (``envs.wire.receive_from_policy``), not where
the policy could change the bounds.

Besides episodes and clips, ``policy_reset`` and ``policy_act`` jobs call the policy on
observations a regression test recorded (``envs.testkit``'s ``load_policy``): no env steps.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import time
import traceback
from collections import Counter, deque
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np

from envs.actions import InvalidAction, action_coercer, plain_actions
from envs.limited import apply_limits
from envs.policy_host import PolicyFailed
from envs.wire import (
    ProtocolBroken,
    action_from_wire,
    jsonable,
    mode_key,
    plain_diag,
    receive_from_policy,
    send_to_policy,
)


class PolicyGone(Exception):
    """The policy process hung up (only the parent can say why it ended) or broke the protocol."""

    def __init__(self, message: str, hung_up: bool) -> None:
        super().__init__(message)
        self.hung_up = hung_up


class EpisodePolicy(Protocol):
    """What an episode needs from a policy: a fresh start per seed, then one action (and diagnostics) per step."""

    def start(self, seed: int, action_space, cpu_s: float | None = None) -> None: ...

    def act(self, obs, info) -> tuple[Any, Any]: ...


class RemotePolicy:
    """The sandboxed policy process, seen from the env process: its replies are untrusted data."""

    def __init__(self, requests: IO[bytes], replies: IO[bytes], path: str, source: str) -> None:
        self.requests, self.replies, self.path, self.source = requests, replies, path, source

    def start(self, seed: int, action_space, cpu_s: float | None = None) -> None:
        self._ask(("reset", {"policy_path": self.path, "source": self.source, "seed": seed,
                             "action_space": action_space, "cpu_s": cpu_s}))

    def act(self, obs, info) -> tuple[Any, Any]:
        reply = self._ask(("act", obs, info))
        try:
            return action_from_wire(reply), reply.get("d")
        except ProtocolBroken as exc:
            raise PolicyGone(f"the policy process broke the protocol: it sent {exc}", hung_up=False) from None

    def _ask(self, message: tuple) -> dict[str, Any]:
        try:
            send_to_policy(self.requests, message)
            reply = receive_from_policy(self.replies)
        except (BrokenPipeError, EOFError, OSError):
            raise PolicyGone("the policy process ended", hung_up=True) from None
        except ProtocolBroken as exc:
            raise PolicyGone(f"the policy process broke the protocol: it sent {exc}", hung_up=False) from None
        if "error" in reply:
            raise PolicyFailed(str(reply["error"])[:2000])
        return reply


def summarise_obs(obs: Any) -> Any:
    arr = np.asarray(obs)
    if arr.ndim == 1 and arr.size <= 256:
        return [round(float(v), 5) for v in arr] if arr.dtype.kind == "f" else arr.tolist()
    return {"shape": list(arr.shape), "mean": round(float(arr.mean()), 3)}


# --------------------------------------------------------------------------- episodes

class Worker:
    def __init__(self, task_json: str, protocol: str, policy: EpisodePolicy, steps: Any = None) -> None:
        from envs.tasks import TaskSpec

        self.spec = TaskSpec.model_validate_json(task_json)
        self.protocol = protocol
        self.policy = policy
        self._env = None
        # Env steps of the job in progress, where the parent can read them even after killing this process
        # (a shared page, see ``step_counter``): a crashed or timed-out episode's steps are counted too.
        self.steps = steps if steps is not None else [0]

    def env(self):
        if self._env is None:
            self._env = self.spec.make_env(self.protocol)
        return self._env

    def discard_env(self) -> None:
        """After an error mid-episode the env's state is suspect: the next episode gets a new one."""
        if self._env is not None:
            try:
                self._env.close()
            except Exception:
                pass
        self._env = None

    def episode(self, job: dict) -> dict:
        """One episode of one seed. A policy failure ends the episode with a status; PolicyGone
        (the policy process ended) propagates, since only the parent can say why it ended."""
        seed, window = int(job["seed"]), int(job["trace_window"])
        env = self.env()
        result: dict[str, Any] = {"seed": seed, "status": "ok", "error": None, "return": 0.0, "length": 0,
                                  "termination": None, "events": [], "trace": None}
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            self.policy.start(seed, env.action_space, float(job["cpu_s"]))
        except PolicyFailed as exc:
            result.update(status="policy_error", termination="error", error=str(exc))
            return self._finish(result, t0, c0)
        self._play(env, seed, window, int(job["max_windows"]), result)
        return self._finish(result, t0, c0)

    def _play(self, env, seed: int, window: int, max_windows: int, result: dict[str, Any]) -> None:
        """Step a started episode until it ends or fails, and fill in ``result``: its status, return,
        length, failure events and trace (windows of the last ``window`` steps before each event)."""
        from envs.failures import FailureDetector

        policy = self.policy
        coerce = action_coercer(env.action_space)
        detector = FailureDetector(self.spec.failure_rules, self.spec.target)
        recent: deque = deque(maxlen=window)
        windows: list[dict] = []
        actions: list = []
        rewards: list[float] = []
        modes: Counter = Counter()
        every_step = detector.needs_every_step
        obs, info = env.reset(seed=seed)
        steps = self.steps
        steps[0] = 0
        total, t, last_diag = 0.0, 0, None
        while True:
            try:
                raw, diag = policy.act(obs, info)
            except PolicyFailed as exc:
                result.update(status="policy_error", termination="error", error=str(exc))
                break
            try:
                action = coerce(raw)
            except InvalidAction as exc:
                result.update(status="invalid_action", termination="error", error=f"step {t}: {exc}")
                break
            if diag.__class__ is dict:
                modes[mode_key(diag, modes)] += 1
                # A policy that mutates one dict in place would make every stored step show the last values.
                if diag is last_diag:
                    diag = dict(diag)
                else:
                    last_diag = diag
            seen = obs  # a trace step pairs the observation acted on with the action and its reward
            try:
                obs, reward, terminated, truncated, info = env.step(action)
            except Exception as exc:
                result.update(status="env_error", termination="error",
                              error=f"env.step raised at step {t}: {type(exc).__name__}: {exc}")
                self.discard_env()
                break
            steps[0] = t + 1
            total += reward
            actions.append(action)
            rewards.append(reward)
            recent.append((t, seen, action, reward, diag))
            if (every_step or terminated or truncated) and detector.step(t, obs, reward, total, terminated, truncated, info) \
                    and len(windows) < max_windows:
                windows.append(self._window(detector.events[-1].kind, t, recent))
            t += 1
            if terminated or truncated:
                result["termination"] = "terminated" if terminated else "truncated"
                break
        result.update({"return": float(total), "length": t, "events": [e.model_dump() for e in detector.events]})
        windows.append(self._window("end", t - 1, recent))
        result["trace"] = self._trace(actions, rewards, modes, windows)

    @staticmethod
    def _trace(actions: list, rewards: list[float], modes: Counter, windows: list[dict]) -> dict:
        return {
            "actions": plain_actions(actions),
            "rewards": np.round(np.asarray(rewards, dtype=np.float64), 6).tolist(),
            "mode_counts": {str(k): v for k, v in modes.items()},
            "windows": windows,
        }

    @staticmethod
    def _window(label: str, t: int, recent: deque) -> dict:
        records = list(recent)
        if not records:
            return {"label": label, "step": t, "steps": []}
        first = np.asarray(records[0][1])
        if first.ndim == 1 and first.size <= 256 and first.dtype.kind == "f":
            # Small float vectors (classic control, MuJoCo): one vectorised rounding for the whole window.
            observations = np.round(np.asarray([o for _, o, _, _, _ in records], dtype=np.float64), 5).tolist()
        else:
            observations = [summarise_obs(o) for _, o, _, _, _ in records]
        steps = [{"t": s, "obs": obs, "action": jsonable(a), "reward": round(float(r), 6), "diag": plain_diag(d)}
                 for (s, _, a, r, d), obs in zip(records, observations)]
        return {"label": label, "step": t, "steps": steps}

    @staticmethod
    def _finish(result: dict, t0: float, c0: float) -> dict:
        result["wall_s"] = time.perf_counter() - t0
        result["cpu_s"] = time.process_time() - c0
        result["env_steps"] = result["length"]
        return result

    def clip(self, job: dict) -> dict:
        """Re-simulate a deterministic episode and keep frames only inside the windows before failure events."""
        from envs.clips import fps_for, write_clip

        seed = int(job["seed"])
        windows = [(int(a), int(b)) for a, b in job["windows"]]
        expected = job["expected_actions"]
        last = max(b for _, b in windows)
        env = self.spec.make_env(self.protocol, render_mode="rgb_array")
        try:
            self.policy.start(seed, env.action_space, float(job["cpu_s"]))
            coerce = action_coercer(env.action_space)
            frames: list[list] = [[] for _ in windows]
            obs, info = env.reset(seed=seed)
            self.steps[0] = 0
            diverged_at = None
            for t in range(last + 1):
                action = coerce(self.policy.act(obs, info)[0])
                plain = plain_actions([action])[0]
                if diverged_at is None and t < len(expected) and plain != expected[t]:
                    diverged_at = t
                obs, _, terminated, truncated, info = env.step(action)
                self.steps[0] = t + 1  # a re-simulation is env steps too
                for i, (a, b) in enumerate(windows):
                    if a <= t <= b:
                        frames[i].append((t, env.render()))
                if terminated or truncated:
                    break
            fps = fps_for(env, self.spec, self.protocol)
        finally:
            env.close()
        clips = []
        for (a, b), label, shot in zip(windows, job["labels"], frames):
            if shot:
                stem = f"{job['stem']}-step{b}"
                clips.append(write_clip(shot, Path(job["out_dir"]), stem, fps, label) | {"seed": seed, "step": b})
        return {"clips": clips, "replay_diverged_at": diverged_at, "env_steps": self.steps[0]}

    def policy_call(self, job: dict) -> dict:
        """A test kit's call on the policy itself: ``policy_reset`` (a fresh Policy) or ``policy_act`` on an
        observation the test gives; the reply carries the action as JSON and the bounded diagnostics."""
        try:
            if job["kind"] == "policy_reset":
                self.policy.start(int(job["seed"]), self.env().action_space, float(job["cpu_s"]))
                return {"status": "ok"}
            obs = np.asarray(job["obs"], dtype=job["dtype"]) if job.get("dtype") else job["obs"]
            action, diag = self.policy.act(obs, job.get("info") or {})
        except PolicyFailed as exc:
            return {"status": "policy_error", "error": str(exc)}
        return {"status": "ok", "action": jsonable(action), "diagnostics": diag}


def step_counter(fd: int) -> memoryview:
    """The shared step count: one signed 64-bit integer in a file heurist created and reads by descriptor.
    A write per step is a store to memory, so the count costs nothing measurable."""
    return memoryview(mmap.mmap(fd, 8)).cast("q")


def _refuse_tracing() -> None:
    """No process of the same user may attach to this one (ptrace, /proc/PID/mem). Where bubblewrap
    works the policy process cannot even see this one; this guards the fallback without it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job-fd", type=int, required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--request-fd", type=int, required=True, help="to the policy process")
    parser.add_argument("--reply-fd", type=int, required=True, help="from the policy process")
    parser.add_argument("--steps-fd", type=int, required=True, help="8 bytes heurist reads: env steps of the job")
    parser.add_argument("--limits", required=True)
    parser.add_argument("--cpu", type=int, help="the core shared with the policy process (see envs.sandbox.pair_cpus)")
    args = parser.parse_args()
    _refuse_tracing()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    limits = json.loads(args.limits)
    apply_limits(limits["memory_mb"], limits["fsize_mb"], limits["nofile"])
    jobs = os.fdopen(args.job_fd, "r")
    results = os.fdopen(args.result_fd, "w")
    requests, replies = os.fdopen(args.request_fd, "wb"), os.fdopen(args.reply_fd, "rb")
    worker: Worker | None = None
    for line in jobs:
        job = json.loads(line)
        if worker is None:
            worker = Worker(job["task"], job["protocol"],
                            RemotePolicy(requests, replies, job["policy_path"], job["policy_source"]),
                            steps=step_counter(args.steps_fd))
        try:
            if job["kind"] == "clip":
                reply = worker.clip(job)
            elif job["kind"] in ("policy_reset", "policy_act"):
                reply = worker.policy_call(job)
            else:
                reply = worker.episode(job)
        except PolicyGone as exc:  # the parent, which started the policy process, says why it ended
            reply = {"status": "policy_gone", "error": str(exc), "hung_up": exc.hung_up}
        except Exception as exc:  # heurist's own code failed (or a policy broke a clip replay): report, keep serving
            reply = {"status": "worker_error", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc()[-2000:]}
        results.write(json.dumps(reply) + "\n")
        results.flush()
        if reply.get("status") == "policy_gone":
            return  # the parent starts a new pair of processes


if __name__ == "__main__":
    main()
