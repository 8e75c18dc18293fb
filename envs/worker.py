"""The sandboxed worker: runs episodes of an untrusted policy file and reports typed results.

Started by envs/sandbox.py as ``python -m envs.worker``, with a scrubbed environment,
its own process group and, where the machine allows, its own network namespace. It
applies its resource limits to itself before it reads any policy code, then answers
one JSON job per line on a private pipe. The policy's own prints go to a log file, so
nothing a policy writes can corrupt the protocol.

Each episode loads the policy file into a fresh module, so state cannot leak from one
seed to the next: a seed's result is the same whichever worker runs it, and in
whatever order.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import time
import traceback
import types
from collections import Counter, deque
from pathlib import Path
from typing import Any

import numpy as np

POLICY_MODULE = "heurist_policy"


class InvalidAction(Exception):
    pass


# --------------------------------------------------------------------------- limits and I/O

def apply_limits(memory_mb: int, fsize_mb: int, nofile: int, max_processes: int | None = None) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb * 2**20, fsize_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if max_processes is not None and os.getuid() != 0:
        # RLIMIT_NPROC counts every process and thread of the user, so the cap is "what runs now + this many".
        cap = _my_tasks() + max_processes
        resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))


def _my_tasks() -> int:
    """Processes and threads this user runs now (the count RLIMIT_NPROC is checked against)."""
    count = 0
    for proc_dir in Path("/proc").iterdir():
        try:
            if proc_dir.name.isdigit() and proc_dir.stat().st_uid == os.getuid():
                count += len(os.listdir(proc_dir / "task"))
        except OSError:
            continue  # it ended while we looked
    return count


def limit_cpu_for_next_episode(cpu_s: float) -> None:
    """RLIMIT_CPU counts the whole process, so each episode moves the soft limit to 'used so far + budget'."""
    used = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime
    soft = int(used + cpu_s) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:  # inside run_sandboxed, whose hard limit bounds the whole test run
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def jsonable(value: Any, depth: int = 0) -> Any:
    """Diagnostics and actions as JSON; anything exotic becomes a short string rather than an error."""
    if value is None or isinstance(value, (bool, int, str)):
        return value if not isinstance(value, str) else value[:200]
    if isinstance(value, float):
        return round(value, 6) if np.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return jsonable(value.item(), depth)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), depth) if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
    if depth < 3 and isinstance(value, dict):
        return {str(k)[:60]: jsonable(v, depth + 1) for k, v in list(value.items())[:30]}
    if depth < 3 and isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value[:64]]
    return str(value)[:200]


_PLAIN = (str, int, float, bool, type(None))


def plain_diag(diag: Any) -> Any:
    """Diagnostics as JSON: a small flat dict of plain values passes as is; anything else is converted."""
    if diag is None:
        return None
    if diag.__class__ is dict and len(diag) <= 30 and all(
            v.__class__ in _PLAIN and (v.__class__ is not str or len(v) <= 200) for v in diag.values()):
        return diag
    return jsonable(diag)


def plain_actions(actions: list) -> list:
    """Actions as JSON: ints stay ints, vectors are rounded to 4 decimals (once, vectorised, not per step)."""
    if not actions:
        return []
    if isinstance(actions[0], int):
        return actions
    return np.round(np.asarray(actions, dtype=np.float64), 4).tolist()


def summarise_obs(obs: Any) -> Any:
    arr = np.asarray(obs)
    if arr.ndim == 1 and arr.size <= 256:
        return [round(float(v), 5) for v in arr] if arr.dtype.kind == "f" else arr.tolist()
    return {"shape": list(arr.shape), "mean": round(float(arr.mean()), 3)}


# --------------------------------------------------------------------------- policy

def load_policy(path: str, code, action_space) -> Any:
    """Execute the compiled policy file in a fresh module and construct its Policy."""
    module = types.ModuleType(POLICY_MODULE)
    module.__file__ = path
    # dataclasses resolve string annotations through sys.modules, so the module must be there.
    sys.modules[POLICY_MODULE] = module
    exec(code, module.__dict__)
    cls = getattr(module, "Policy", None)
    if cls is None or not isinstance(cls, type):
        raise TypeError(f"{path} defines no class Policy")
    if "action_space" in inspect.signature(cls).parameters:
        return cls(action_space=action_space)
    return cls()


def action_coercer(space):
    """A fast validator for one action space: returns the action the env gets, or raises InvalidAction."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        lo, hi = int(space.start), int(space.start + space.n)

        def coerce_discrete(action):
            if action.__class__ is int and lo <= action < hi:  # the common case, checked first
                return action
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
                if isinstance(action, np.ndarray) and action.ndim == 0 and action.dtype.kind in "iu":
                    action = int(action)
                else:
                    raise InvalidAction(f"act() returned {str(action)[:60]!r} ({type(action).__name__}); "
                                        f"this task needs an int in [{lo}, {hi})")
            if not lo <= action < hi:
                raise InvalidAction(f"act() returned {int(action)}, outside the action range [{lo}, {hi})")
            return int(action)

        return coerce_discrete

    if isinstance(space, spaces.Box):
        low, high, shape = space.low.astype(np.float64), space.high.astype(np.float64), space.shape
        uniform = bool((low == low.flat[0]).all() and (high == high.flat[0]).all())
        low_min, high_max = float(low.min()), float(high.max())

        def coerce_box(action):
            try:
                arr = np.asarray(action, dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidAction(f"act() returned {str(action)[:60]!r} ({type(action).__name__}); "
                                    f"this task needs a float array of shape {shape}") from None
            if arr.shape != shape:
                raise InvalidAction(f"act() returned shape {arr.shape}; this task needs shape {shape}")
            # One range test on the hot path; NaN fails every comparison, so it lands below too.
            if uniform:
                inside = arr.min() >= low_min and arr.max() <= high_max
            else:
                inside = bool(((arr >= low) & (arr <= high)).all())
            if not inside:
                if not np.isfinite(arr).all():
                    raise InvalidAction(f"act() returned a non-finite action {np.array2string(arr, precision=3)}")
                raise InvalidAction(f"act() returned {np.array2string(arr, precision=3)}, outside the bounds "
                                    f"[{np.array2string(low, precision=3)}, {np.array2string(high, precision=3)}]")
            return arr

        return coerce_box

    def coerce_other(action):
        if not space.contains(action):
            raise InvalidAction(f"act() returned {str(action)[:60]!r}, not in {space}")
        return action

    return coerce_other


def where_in_policy(exc: BaseException, path: str) -> str:
    """'file.py:LINE in func' for the innermost frame inside the policy file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(path).name}:{f.lineno} in {f.name}"


# --------------------------------------------------------------------------- episodes

class Worker:
    def __init__(self, task_json: str, protocol: str, policy_path: str) -> None:
        from envs.tasks import TaskSpec

        self.spec = TaskSpec.model_validate_json(task_json)
        self.protocol = protocol
        self.policy_path = policy_path
        self._env = None
        self._code = None

    def new_policy(self, action_space) -> Any:
        """A fresh Policy from a fresh module for every episode, so no state crosses seeds; the file
        is compiled once per worker, since recompiling it each episode would buy nothing."""
        if self._code is None:
            self._code = compile(Path(self.policy_path).read_text(), self.policy_path, "exec")
        return load_policy(self.policy_path, self._code, action_space)

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
        from envs.failures import FailureDetector

        seed, window = int(job["seed"]), int(job["trace_window"])
        limit_cpu_for_next_episode(float(job["cpu_s"]))
        env = self.env()
        result: dict[str, Any] = {"seed": seed, "status": "ok", "error": None, "return": 0.0, "length": 0,
                                  "termination": None, "events": [], "trace": None}
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            policy = self.new_policy(env.action_space)
            policy.reset(seed)
        except BaseException as exc:
            result.update(status="policy_error", termination="error",
                          error=f"policy failed to load or reset{where_in_policy(exc, self.policy_path)}: "
                                f"{type(exc).__name__}: {exc}")
            return self._finish(result, t0, c0)

        coerce = action_coercer(env.action_space)
        detector = FailureDetector(self.spec.failure_rules, self.spec.target)
        recent: deque = deque(maxlen=window)
        windows: list[dict] = []
        actions: list = []
        rewards: list[float] = []
        modes: Counter = Counter()
        max_windows = int(job["max_windows"])
        every_step = detector.needs_every_step
        obs, info = env.reset(seed=seed)
        total, t, last_diag = 0.0, 0, None
        while True:
            try:
                raw = policy.act(obs, info)
            except BaseException as exc:
                result.update(status="policy_error", termination="error",
                              error=f"act() raised at step {t}{where_in_policy(exc, self.policy_path)}: "
                                    f"{type(exc).__name__}: {exc}")
                break
            try:
                action = coerce(raw)
            except InvalidAction as exc:
                result.update(status="invalid_action", termination="error", error=f"step {t}: {exc}")
                break
            diag = getattr(policy, "diagnostics", None)
            if diag.__class__ is dict:
                try:
                    modes[diag.get("mode")] += 1
                except TypeError:  # an unhashable mode (a list, say) is the policy's odd choice, not our crash
                    modes[str(diag.get("mode"))[:60]] += 1
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
        result["trace"] = {
            "actions": plain_actions(actions),
            "rewards": np.round(np.asarray(rewards, dtype=np.float64), 6).tolist(),
            "mode_counts": {str(k): v for k, v in modes.items()},
            "windows": windows,
        }
        return self._finish(result, t0, c0)

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
        limit_cpu_for_next_episode(float(job["cpu_s"]))
        env = self.spec.make_env(self.protocol, render_mode="rgb_array")
        try:
            policy = self.new_policy(env.action_space)
            policy.reset(seed)
            coerce = action_coercer(env.action_space)
            frames: list[list] = [[] for _ in windows]
            obs, info = env.reset(seed=seed)
            diverged_at = None
            for t in range(last + 1):
                action = coerce(policy.act(obs, info))
                plain = plain_actions([action])[0]
                if diverged_at is None and t < len(expected) and plain != expected[t]:
                    diverged_at = t
                obs, _, terminated, truncated, info = env.step(action)
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
        return {"clips": clips, "replay_diverged_at": diverged_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job-fd", type=int, required=True)
    parser.add_argument("--result-fd", type=int, required=True)
    parser.add_argument("--limits", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    limits = json.loads(args.limits)
    apply_limits(limits["memory_mb"], limits["fsize_mb"], limits["nofile"], limits.get("max_processes"))
    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    jobs = os.fdopen(args.job_fd, "r")
    results = os.fdopen(args.result_fd, "w")
    worker: Worker | None = None
    for line in jobs:
        job = json.loads(line)
        if worker is None:
            worker = Worker(job["task"], job["protocol"], job["policy_path"])
        try:
            reply = worker.clip(job) if job["kind"] == "clip" else worker.episode(job)
        except Exception as exc:  # heurist's own code failed (or a policy broke a clip replay): report, keep serving
            reply = {"status": "worker_error", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc()[-2000:]}
        results.write(json.dumps(reply) + "\n")
        results.flush()


if __name__ == "__main__":
    main()
