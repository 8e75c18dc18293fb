"""Episodes in lockstep: the env process steps every episode in flight once per message to the policy.

Keeping the policy in a process of its own costs a round trip between two processes per
message; one episode per message made that the price of every env step (``benchmarks/
eval_throughput.py``). A ``Lockstep`` group holds the episodes one worker runs at once, each with
its own env, slot in the policy process and bookkeeping (``EpisodeRun``): one message carries
all their observations, one reply all their actions, and each episode then steps, records and
ends on its own. An episode's result depends only on its seed, so running several side by side
changes no return, length, failure event or trace; how many run at once is the evaluator's
choice (``envs.scheduling``), and one is the same code with a group of one.

Everything per episode stays per episode: a policy failure, a refused action, an env error or
heurist's own failure to finish a result ends that episode alone, with its reason; CPU and wall
time are shared out over the episodes of each round; env steps are counted per slot where the
evaluator can read them after a kill.
"""

from __future__ import annotations

import pickle
import time
import traceback
from collections import deque
from typing import Any, Protocol

import numpy as np

from envs.actions import InvalidAction, action_coercer, plain_actions
from envs.failures import FailureDetector
from envs.policy_slots import PolicyFailed
from envs.wire import SETUP_RUNS, describe, jsonable, plain_diag


TRACE_WINDOW = 64  # the steps a trace window shows before its event, unless an evaluation asks for another


class PolicyClient(Protocol):
    """What the env process needs from the policy's side: slots started, batches acted, diagnostics fetched.
    Any call raises PolicyGone when the policy's process is gone or broke the protocol (the whole group ends)."""

    def start(self, slot: int, seed: int, action_space: bytes, cpu_s: float | None, window: int, live: int) -> None:
        """A fresh Policy for one episode in ``slot``; raises PolicyFailed with the policy's own error."""

    observes: bool  # the episode started last has observe(): each step's reward, terminated, truncated go to it
    setup_s: float | None  # CPU seconds of the policy's setup() if the last start ran it (once per process)

    def act(self, slots: list[int], observations: list, infos: list,
            feedback: list | None = None) -> tuple[list, dict[int, str]]:
        """One action per slot, and the policy failures by position."""

    def diagnostics(self, slot: int, first: int, last: int) -> list:
        """The diagnostics the policy gave at steps ``first``..``last`` of the episode in ``slot``."""

    def end(self, slot: int, accepted: int, final: list | None = None) -> tuple[dict[str, int], str | None]:
        """The episode in ``slot`` is over after ``accepted`` steps: its mode counts; the slot is free."""


def summarise_obs(obs: Any) -> Any:
    arr = np.asarray(obs)
    if arr.ndim == 1 and arr.size <= 256:
        return [round(float(v), 5) for v in arr] if arr.dtype.kind == "f" else arr.tolist()
    return {"shape": list(arr.shape), "mean": round(float(arr.mean()), 3)}


def unscorable_reward(reward: Any, t: int) -> str:
    """Why an episode whose env gave ``reward`` at step ``t`` has no return: the env's own failure, not the policy's."""
    try:
        finite = np.isfinite(float(reward))
    except Exception:  # not a number
        return f"env.step returned the reward {describe(reward)} at step {t}, which is not a number"
    if not finite:
        return f"env.step returned the reward {float(reward)!r} at step {t}; only finite rewards can be scored"
    return f"the return passed the range of a float at step {t} (reward {float(reward)!r}); it cannot be scored"


class PolicyGone(Exception):
    """The policy process hung up (only the parent can say why it ended) or broke the protocol."""

    def __init__(self, message: str, hung_up: bool) -> None:
        super().__init__(message)
        self.hung_up = hung_up


def worker_error(exc: BaseException, seed: Any) -> dict:
    """The reply for an episode that heurist's own code failed (not the policy's): the scheduler records a crash."""
    return {"status": "worker_error", "seed": seed, "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-2000:]}


class EpisodeRun:
    """One episode in flight: its env, the observation the policy is to act on, and everything recorded so far."""

    __slots__ = ("seed", "slot", "env", "policy", "coerce", "detector", "every_step", "recent", "windows",
                 "max_windows", "actions", "rewards", "total", "t", "obs", "info", "steps", "result",
                 "wall_s", "cpu_s", "env_broken", "accepted", "max_steps", "feedback", "final", "observing")

    def __init__(self, job: dict, slot: int, env, policy: PolicyClient, spec, steps) -> None:
        self.seed, self.slot, self.env, self.policy, self.steps = int(job["seed"]), slot, env, policy, steps
        self.coerce = action_coercer(env.action_space)
        self.detector = FailureDetector(spec.failure_rules, spec.target)
        self.every_step = self.detector.needs_every_step
        self.recent: deque = deque(maxlen=int(job["trace_window"]))  # (t, observation acted on, action, reward)
        self.windows: list[dict] = []
        self.max_windows = int(job["max_windows"])
        self.max_steps = job.get("max_steps")  # heurist eval --max-steps: a quick look, recorded as such
        # For a policy's observe(): the last step's (reward, terminated, truncated), sent with the next act (None
        # before the first step), and the last step's, with its info, sent when the episode ends.
        self.feedback: list | None = None
        self.final: list | None = None
        self.observing = False  # known once the policy has started (``begin``)
        self.actions: list = []
        self.rewards: list[float] = []
        self.total, self.t, self.accepted = 0.0, 0, 0
        self.obs = self.info = None
        self.wall_s = self.cpu_s = 0.0
        self.env_broken = False
        self.result: dict[str, Any] = {"seed": self.seed, "status": "ok", "error": None, "return": 0.0, "length": 0,
                                       "termination": None, "events": [], "trace": None}

    def fail_to_start(self, error: str) -> dict:
        self.result.update(status="policy_error", termination="error", error=error)
        return self.finish(traced=False)

    def begin(self) -> None:
        self.obs, self.info = self.env.reset(seed=self.seed)
        # Read right after this episode's start: its own answer. A policy without observe() costs the loop nothing.
        self.observing = self.policy.observes

    def advance(self, raw: Any, failure: str | None) -> bool:
        """One step with the policy's action (or its failure); True when the episode has ended."""
        t = self.t
        if failure is not None:
            self.result.update(status="policy_error", termination="error", error=failure)
            return True
        try:
            action = self.coerce(raw)
        except InvalidAction as exc:
            self.result.update(status="invalid_action", termination="error", error=f"step {t}: {exc}")
            return True
        seen = self.obs  # a trace step pairs the observation acted on with the action and its reward
        self.accepted = t + 1  # the policy's diagnostics of this step count, whatever the env does with it
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as exc:
            self.result.update(status="env_error", termination="error",
                               error=f"env.step raised at step {t}: {type(exc).__name__}: {exc}")
            self.env_broken = True  # its state is suspect: it is not used again
            return True
        self.steps[self.slot] = t + 1
        try:
            total = self.total + reward
            if total - total != 0.0:  # NaN or ±inf: a mean over it, and every comparison with it, means nothing
                raise ValueError
        except Exception:  # that, or no number at all (a task plug-in's None or text)
            self.result.update(status="env_error", termination="error", error=unscorable_reward(reward, t))
            self.env_broken = True  # a simulator that gave it is not trusted with the next seed
            return True
        self.total = total
        self.actions.append(action)
        self.rewards.append(reward)
        self.recent.append((t, seen, action, reward))
        if (self.every_step or terminated or truncated) \
                and self.detector.step(t, obs, reward, self.total, terminated, truncated, info) \
                and len(self.windows) < self.max_windows:
            self.windows.append(self._window(self.detector.events[-1].kind, t))
        self.t = t + 1
        if terminated or truncated:
            self.result["termination"] = "terminated" if terminated else "truncated"
            self.final = [float(reward), bool(terminated), bool(truncated), info]
            return True
        if self.max_steps is not None and self.t >= self.max_steps:  # cut, not truncated: no failure event
            self.result["termination"] = "max_steps"
            self.final = [float(reward), False, True, info]  # to the policy, the end of its episode
            return True
        self.obs, self.info = obs, info
        if self.observing:
            self.feedback = [float(reward), False, False]
        return False

    def finish(self, traced: bool = True) -> dict:
        """The episode's result: return, length, failure events, and its trace ending with the last steps."""
        result = self.result
        if traced:
            result.update({"return": float(self.total), "length": self.t,
                           "events": [e.model_dump() for e in self.detector.events]})
            self.windows.append(self._window("end", self.t - 1))
        ending = time.perf_counter()
        modes, observe_failed = self.policy.end(self.slot, self.accepted, self.final if self.observing else None)
        self.wall_s += time.perf_counter() - ending  # the last observe() is this episode's time
        if observe_failed is not None and result["status"] == "ok":  # the last step's observe() is the policy's too
            result.update(status="policy_error", termination="error", error=observe_failed)
        if traced:
            result["trace"] = {
                "actions": plain_actions(self.actions),
                "rewards": np.round(np.asarray(self.rewards, dtype=np.float64), 6).tolist(),
                "mode_counts": modes,
                "windows": self.windows,
            }
        result["wall_s"], result["cpu_s"], result["env_steps"] = self.wall_s, self.cpu_s, result["length"]
        return result

    def _window(self, label: str, t: int) -> dict:
        records = list(self.recent)
        if not records:
            return {"label": label, "step": t, "steps": []}
        diags = self.policy.diagnostics(self.slot, records[0][0], records[-1][0])
        first = np.asarray(records[0][1])
        if first.ndim == 1 and first.size <= 256 and first.dtype.kind == "f":
            # Small float vectors (classic control, MuJoCo): one vectorised rounding for the whole window.
            observations = np.round(np.asarray([o for _, o, _, _ in records], dtype=np.float64), 5).tolist()
        else:
            observations = [summarise_obs(o) for _, o, _, _ in records]
        steps = [{"t": s, "obs": obs, "action": jsonable(a), "reward": round(float(r), 6), "diag": plain_diag(d)}
                 for (s, _, a, r), obs, d in zip(records, observations, diags)]
        return {"label": label, "step": t, "steps": steps}


class Lockstep:
    """The episodes one env process runs at once, stepped together: one policy message per round."""

    def __init__(self, spec, protocol: str, policy: PolicyClient, steps) -> None:
        self.spec, self.protocol, self.policy, self.steps = spec, protocol, policy, steps
        self.runs: list[EpisodeRun] = []
        self.spare_envs: list = []  # envs of finished episodes, reset by the next episode's seed
        self.started_any = False  # whether the policy process has started an episode (its first may run set-up)
        self._mark = (time.perf_counter(), time.process_time())  # when who is in flight last changed

    def __len__(self) -> int:
        return len(self.runs)

    def add(self, job: dict) -> dict | None:
        """Start an episode; its result at once when its policy failed to start, else None."""
        self._share_time()
        slot = int(job.get("slot", 0))
        env = self.spare_envs.pop() if self.spare_envs else self.spec.make_env(self.protocol, lean=True)
        # Taken, its env built (heurist's own time, imports included): this episode's clock starts now
        # (envs.worker_pair.clear_steps). Except at the policy process's first start, which may run the policy's
        # set-up (once per process): that is the pair's start-up, not this episode's time, so its clock starts after.
        first = not self.started_any
        if not first:
            self.steps[slot] = 0
        run = EpisodeRun(job, slot, env, self.policy, self.spec, self.steps)
        try:
            self.policy.start(slot, run.seed, pickle.dumps(env.action_space), job.get("cpu_s"),
                              int(job["trace_window"]) + 1, len(self.runs) + 1)
        except PolicyFailed as exc:
            self._started(slot, first, run)
            self._retire(env, broken=False)
            self._share_time([run])
            return run.fail_to_start(str(exc))
        self._started(slot, first, run)
        run.begin()
        self.runs.append(run)
        self._share_time([run])
        return None

    def _started(self, slot: int, first: bool, run: EpisodeRun) -> None:
        """After a start: the first one's clock starts now, and a set-up it ran is counted where heurist reads it.
        Only the first start of a policy process can run the set-up, so only its report is believed: the policy
        process says how long its set-up took, and must not be able to count set-ups that never ran."""
        if not first:
            return
        self.steps[slot] = 0
        self.started_any = True
        self._mark = (time.perf_counter(), time.process_time())  # the set-up's wait is no episode's time
        if self.policy.setup_s is not None:
            run.result["setup_s"] = self.policy.setup_s
            if len(self.steps) > SETUP_RUNS:
                self.steps[SETUP_RUNS] += 1

    def _share_time(self, runs: list[EpisodeRun] | None = None) -> None:
        """Share the wall and CPU time since the last change of who is in flight among those in flight then
        (or ``runs``). Read at each change, not each round: reading the CPU clock is a system call."""
        wall, cpu = time.perf_counter(), time.process_time()
        marked, self._mark = self._mark, (wall, cpu)
        runs = self.runs if runs is None else runs
        if not runs:
            return
        wall_share, cpu_share = (wall - marked[0]) / len(runs), (cpu - marked[1]) / len(runs)
        for run in runs:
            run.wall_s += wall_share
            run.cpu_s += cpu_share

    def round(self) -> list[dict]:
        """Every episode in flight steps once; the results of those that ended."""
        runs = self.runs
        # Each episode's last step (None for one that does not observe: its feedback is never set).
        feedback = [r.feedback for r in runs] if any(r.observing for r in runs) else None
        actions, failed = self.policy.act([r.slot for r in runs], [r.obs for r in runs], [r.info for r in runs],
                                          feedback)
        if failed:
            ended = [run for i, (run, action) in enumerate(zip(runs, actions)) if run.advance(action, failed.get(i))]
        else:
            ended = [run for run, action in zip(runs, actions) if run.advance(action, None)]
        if not ended:
            return []
        self._share_time()
        self.runs = [run for run in runs if run not in ended]
        results = []
        for run in ended:
            try:
                results.append(run.finish())
            except PolicyGone:
                raise
            except Exception as exc:  # heurist's own code failed finishing this episode: it alone says so
                results.append(worker_error(exc, run.seed))
                run.env_broken = True
            self._retire(run.env, broken=run.env_broken)
        return results

    def _retire(self, env, broken: bool) -> None:
        """An env whose episode ended: kept for the next seed where the task allows it (``TaskSpec.reuse_env``),
        else closed."""
        if self.spec.reuse_env and not broken:
            self.spare_envs.append(env)
            return
        try:
            env.close()
        except Exception:  # a broken env may fail to close too; it is dropped either way
            pass

    def abandon(self) -> list[int]:
        """Drop every episode in flight (heurist's own code failed mid-round); their seeds."""
        seeds = [run.seed for run in self.runs]
        for run in self.runs:
            try:
                run.env.close()
            except Exception:
                pass
        self.runs = []
        return seeds


__all__ = ["TRACE_WINDOW", "EpisodeRun", "Lockstep", "PolicyClient", "PolicyFailed", "PolicyGone", "summarise_obs",
           "worker_error"]
