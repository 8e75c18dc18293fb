"""The env process of an evaluation: runs episodes and reports typed results; the policy lives elsewhere.

Started by envs/worker_pair.py (forked from the warm fork server of ``envs/forkserver.py``, else as
``python -m envs.worker``) with a scrubbed environment and its own process group. It runs only heurist's code and the environment's: the policy
file runs in a separate, sandboxed process (``envs.policy_host``) that receives observations
and sends back actions (``envs.wire``), which this process reads as data, validates and steps
the env with. The environment, the reward, the failure detector and the trace all live here,
so a policy that patches gymnasium, numpy or heurist's modules changes only its own process,
never its score.

It reads JSON jobs, one per line, on a private pipe, and answers each with one JSON line.
Episode jobs join the episodes in flight (``envs.lockstep``), which step together, one
message to the policy process per step for all of them; each episode's result is written as
it ends. Each episode starts a fresh Policy from a fresh module, so state cannot leak from
one seed to the next: a seed's result is the same whichever worker runs it, beside whichever
others, and in whatever order. Every job carries the policy's source, which this process
passes on; the policy process never reads a policy file. Whatever the policy sends is bounded
here (``envs.wire``), not where the policy could change the bounds.

Besides episodes, ``clip`` re-simulates an episode to film it, and ``policy_reset`` and
``policy_act`` call the policy on observations a regression test recorded (``envs.testkit``'s
``load_policy``): no env steps. These run when no episode is in flight.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import pickle
import select
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from envs.actions import InvalidAction, action_coercer, plain_actions
from envs.contract import binds_setup, policy_observes
from envs.limited import apply_limits
from envs.lockstep import TRACE_WINDOW, Lockstep, PolicyClient, PolicyGone, worker_error
from envs.policy_slots import PolicyFailed, PolicySlots
from envs.wire import (
    MAX_REPLY_BYTES,
    MAX_SLOTS,
    ObservationChannel,
    ProtocolBroken,
    actions_from_wire,
    bounded_diagnostics,
    bounded_modes,
    jsonable,
    receive_from_policy,
    send_to_policy,
    stack_observations,
)


def seconds_or_none(value: Any) -> float | None:
    """A duration the policy process reported (untrusted): a finite, non-negative float, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return None


class Diverged(Exception):
    """A re-run policy acted otherwise than in its recorded episode, at the step given."""


class RemotePolicy:
    """The sandboxed policy process, seen from the env process: its replies are untrusted data."""

    def __init__(self, requests: IO[bytes], replies: IO[bytes], path: str, source: str,
                 observations: ObservationChannel | None = None, simulator_model: str | None = None) -> None:
        self.requests, self.replies, self.path, self.source = requests, replies, path, source
        self.observations = observations
        self.simulator_model = simulator_model
        self.declares_observe = policy_observes(source)
        self.may_set_up = binds_setup(source)
        self.observes = False  # whether the episode started last gets each step's reward for ``observe``
        self.setup_s: float | None = None

    def start(self, slot: int, seed: int, action_space: bytes, cpu_s: float | None, window: int, live: int) -> None:
        asked = time.perf_counter()
        reply = self._ask(("start", slot, {"policy_path": self.path, "source": self.source, "seed": seed,
                                           "action_space": action_space, "cpu_s": cpu_s, "window": window,
                                           "live": live, "simulator_model": self.simulator_model}))
        # The policy process says how long its set-up took, and a hostile one could say so when none ran: believed
        # only where the source binds a setup at its top, and never above what this start's wall time allows on the
        # cores the pair may use (one, where it is pinned to one).
        claimed = seconds_or_none(reply.get("setup_s"))
        most = (time.perf_counter() - asked) * len(os.sched_getaffinity(0))
        self.setup_s = min(claimed, most) if claimed is not None and self.may_set_up else None
        if "error" in reply:  # the policy's own failure to load or reset: that episode's result
            raise PolicyFailed(str(reply["error"])[:2000])
        # Whether rewards go to this episode: the policy process says (an inherited observe counts), and trusting it
        # costs nothing but the rewards it is sent. Each episode's own answer, never one carried over from the
        # episodes this pair ran before: what an episode is sent must depend on its seed alone.
        self.observes = self.declares_observe or reply.get("observes") is True

    def act(self, slots: list[int], observations: list, infos: list,
            feedback: list | None = None) -> tuple[list, dict[int, str]]:
        packed = self.observations.pack(observations) if self.observations is not None \
            else stack_observations(observations)
        # The bound is the same at every width: an action too large to read alone must be too large beside others,
        # or a seed's result would depend on how many episodes ran with it.
        reply = self._ask(("act", slots, packed, infos, feedback), MAX_REPLY_BYTES * MAX_SLOTS)
        return self._read(actions_from_wire, reply, len(slots))

    def diagnostics(self, slot: int, first: int, last: int) -> list:
        n = last - first + 1
        reply = self._ask(("diag", slot, first, last), MAX_REPLY_BYTES * n)
        return self._read(bounded_diagnostics, reply.get("d"), n)

    def end(self, slot: int, accepted: int, final: list | None = None) -> tuple[dict[str, int], str | None]:
        reply = self._ask(("end", slot, accepted, final))
        failed = reply.get("observe_error")
        return (self._read(bounded_modes, reply.get("modes"), accepted),
                str(failed)[:2000] if failed else None)  # untrusted text: redacted where results are recorded

    @staticmethod
    def _read(reader, *args):
        try:
            return reader(*args)
        except Exception as exc:  # untrusted data: whatever the readers raise on it is a broken protocol
            what = str(exc) if isinstance(exc, ProtocolBroken) else f"a reply that cannot be read ({type(exc).__name__})"
            raise PolicyGone(f"the policy process broke the protocol: it sent {what}", hung_up=False) from None

    def _ask(self, message: tuple, limit: int = MAX_REPLY_BYTES) -> dict[str, Any]:
        try:
            send_to_policy(self.requests, message)
            reply = receive_from_policy(self.replies, limit)
        except (BrokenPipeError, EOFError, OSError):
            raise PolicyGone("the policy process ended", hung_up=True) from None
        except ProtocolBroken as exc:
            raise PolicyGone(f"the policy process broke the protocol: it sent {exc}", hung_up=False) from None
        except Exception as exc:  # anything else its bytes make the reader raise is a broken protocol too
            raise PolicyGone(f"the policy process broke the protocol: it sent a reply that cannot be read "
                             f"({type(exc).__name__})", hung_up=False) from None
        return reply


class LocalPolicy:
    """The policy in this process (benchmarks and tests of the episode code): the same slots, no channel."""

    def __init__(self, path: str, source: str, simulator_model: str | None = None) -> None:
        self.slots = PolicySlots(path, source)
        self.simulator_model = simulator_model
        self.declares_observe = policy_observes(source)
        self.observes = False
        self.setup_s: float | None = None

    def start(self, slot: int, seed: int, action_space: bytes, cpu_s: float | None, window: int, live: int) -> None:
        try:
            self.slots.start(slot, seed, action_space, window, self.simulator_model)
        finally:
            self.setup_s = self.slots.take_setup()
        self.observes = self.declares_observe or self.slots.observes(slot)  # this episode's, as RemotePolicy's

    def act(self, slots: list[int], observations: list, infos: list,
            feedback: list | None = None) -> tuple[list, dict[int, str]]:
        return self.slots.act(slots, observations, infos, feedback)

    def diagnostics(self, slot: int, first: int, last: int) -> list:
        return bounded_diagnostics(json.loads(json.dumps(self.slots.diagnostics(slot, first, last))), last - first + 1)

    def end(self, slot: int, accepted: int, final: list | None = None) -> tuple[dict[str, int], str | None]:
        return self.slots.end(slot, accepted, final)


# --------------------------------------------------------------------------- jobs

class Worker:
    def __init__(self, task_json: str, protocol: str, policy: PolicyClient, steps: Any = None) -> None:
        from envs.tasks import TaskSpec

        self.spec = TaskSpec.model_validate_json(task_json)
        self.protocol = protocol
        self.policy = policy
        # Env steps of each slot's episode in progress, where the parent can read them even after killing
        # this process (a shared page, see ``step_counter``): a crashed or timed-out episode's steps count too.
        self.steps = steps if steps is not None else [0] * 256
        self.episodes = Lockstep(self.spec, protocol, policy, self.steps)
        self._kit_env = None
        self._kit_steps = 0

    def clip(self, job: dict) -> dict:
        """Re-simulate a deterministic episode and keep frames only inside the windows before failure events.

        The re-simulation stops where the policy's action first differs from the episode's: what follows is not
        the episode (a policy that is not deterministic, or one that acts otherwise when it is filmed), so a window
        that does not end before that step is not filmed, and no clip shows a failure the episode did not have."""
        from envs.clips import fps_for, write_clip

        self.steps[0] = 0  # before anything the policy can fail: a failed start must not count the last clip's again
        seed = int(job["seed"])
        windows = [(int(a), int(b)) for a, b in job["windows"]]
        expected = job["expected_actions"]
        last = max(b for _, b in windows)
        env = self.spec.make_env(self.protocol, render_mode="rgb_array")
        diverged_at = None
        try:
            # Started as the episode's was (its diagnostics window), so this is not a start the policy can tell apart.
            self.policy.start(0, seed, pickle.dumps(env.action_space), job.get("cpu_s"), _window(job), 1)
            coerce = action_coercer(env.action_space)
            frames: list[list] = [[] for _ in windows]
            obs, info = env.reset(seed=seed)
            feedback = None  # a policy that observes gets each step's reward here as in its episode
            for t in range(last + 1):
                action = coerce(self._act_alone(obs, info, feedback))
                plain = plain_actions([action])[0]
                if t < len(expected) and plain != expected[t]:
                    diverged_at = t
                    break
                obs, reward, terminated, truncated, info = env.step(action)
                feedback = [float(reward), False, False]
                self.steps[0] = t + 1  # a re-simulation is env steps too
                for i, (a, b) in enumerate(windows):
                    if a <= t <= b:
                        frames[i].append((t, env.render()))
                if terminated or truncated:
                    break
            fps = fps_for(env, self.spec, self.protocol)
        finally:
            env.close()
        self.policy.end(0, self.steps[0])  # frees the slot; a replay's mode counts are not kept
        clips = []
        stems: set[str] = set()
        for (a, b), label, shot in zip(windows, job["labels"], frames):
            if shot and (diverged_at is None or b < diverged_at):
                # Two events at one step (a stall and a fall, say) each get their clip, under a name of its own.
                stem = base = f"{job['stem']}-step{b}"
                again = 1
                while stem in stems:
                    again += 1
                    stem = f"{base}-{again}"
                stems.add(stem)
                clips.append(write_clip(shot, Path(job["out_dir"]), stem, fps, label) | {"seed": seed, "step": b})
        return {"clips": clips, "replay_diverged_at": diverged_at, "env_steps": self.steps[0]}

    def _kit(self):
        """An env of the task kept for jobs that only need its spaces or metadata (a test kit's calls, scenarios):
        built once per worker, since building one loads a ROM or compiles a model."""
        if self._kit_env is None:
            self._kit_env = self.spec.make_env(self.protocol, lean=True)
        return self._kit_env

    def policy_call(self, job: dict) -> dict:
        """A test kit's call on the policy itself: ``policy_reset`` (a fresh Policy) or ``policy_act`` on an
        observation the test gives; the reply carries the action as JSON and the bounded diagnostics."""
        try:
            if job["kind"] == "policy_reset":
                self.policy.start(0, int(job["seed"]), pickle.dumps(self._kit().action_space), job.get("cpu_s"),
                                  _window(job), 1)
                self._kit_steps = 0
                return {"status": "ok"}
            obs = np.asarray(job["obs"], dtype=job["dtype"]) if job.get("dtype") else job["obs"]
            action = self._act_alone(obs, job.get("info") or {})
            self._kit_steps += 1
            diag = self.policy.diagnostics(0, self._kit_steps - 1, self._kit_steps - 1)[0]
        except PolicyFailed as exc:
            return {"status": "policy_error", "error": str(exc)}
        return {"status": "ok", "action": jsonable(action), "diagnostics": diag}

    def waiting_job(self, job: dict) -> dict:
        """A job that runs when no episode is in flight: a clip, a test kit's call, a scenario."""
        kind = job["kind"]
        if kind == "clip":
            return self.clip(job)
        if kind == "scenario_save":
            return self.scenario_save(job)
        if kind == "scenario_run":
            return self.scenario_run(job)
        return self.policy_call(job)

    def _counter(self):
        self.steps[0] = 0

        def count(n: int) -> None:  # where heurist reads it, even after a kill
            self.steps[0] += n
        return count

    def scenario_save(self, job: dict) -> dict:
        """The scenarios of an episode's failure events (``envs.scenarios``): the episode re-run from its seed with
        the policy (its actions exact; the trace's are rounded), checked against the recorded actions."""
        from envs.scenarios import record_scenario

        count = self._counter()
        space, coerce = pickle.dumps(self._kit().action_space), action_coercer(self._kit().action_space)
        expected = job["actions"]
        saved, discarded = [], {}
        for event in job["events"]:
            acts = [0]

            def act(t, obs, info, feedback):
                acts[0] += 1
                action = self._act_alone(obs, info, feedback)
                if t < len(expected) and plain_actions([action])[0] != expected[t]:
                    raise Diverged(t)
                return action

            key = f"{event['kind']} at step {event['step']}"
            try:
                self.policy.start(0, int(job["seed"]), space, job.get("cpu_s"), _window(job), 1)
                found = record_scenario(self.spec, self.protocol, int(job["seed"]), act, str(event["kind"]),
                                        int(event["step"]), str(event.get("description", "")), int(job["before"]),
                                        int(job["warmup"]), coerce, count)
            except PolicyGone:
                raise  # the policy process is gone: the parent says why
            except Diverged as exc:
                found = f"re-run from its seed, the policy acted otherwise at step {exc.args[0]} than it did in its " \
                        f"episode (a policy whose actions depend on more than its seed cannot be replayed)"
            except PolicyFailed as exc:
                found = f"re-run from its seed, the policy failed: {str(exc)[:200]}"
            except Exception as exc:  # the env or an action failing on re-run (InvalidAction): no scenario
                found = f"re-run from its seed, the episode failed: {type(exc).__name__}: {str(exc)[:200]}"
            self.policy.end(0, acts[0])
            if isinstance(found, str):
                discarded[key] = found
            else:
                saved.append(found.model_dump(mode="json"))
        return {"status": "ok", "scenarios": saved, "discarded": discarded, "env_steps": self.steps[0]}

    def scenario_run(self, job: dict) -> dict:
        """A test kit's ``run_scenario``: the saved state restored, a fresh policy warmed up, the window run."""
        from envs.scenarios import Scenario, run_scenario

        scenario = Scenario.model_validate(job["scenario"])
        count = self._counter()
        space, coerce = pickle.dumps(self._kit().action_space), action_coercer(self._kit().action_space)
        acts = [0]  # the warm-up's acts and the window's: the mode counts the policy sends are of these

        def act(obs, info, feedback):
            acts[0] += 1
            return self._act_alone(obs, info, feedback)

        try:
            self.policy.start(0, scenario.seed, space, job.get("cpu_s"), _window(job), 1)
            film = [] if job.get("film_dir") else None
            result = run_scenario(self.spec, scenario, act, coerce, count, record=bool(job.get("record")), film=film)
        except (PolicyFailed, InvalidAction) as exc:
            self.policy.end(0, acts[0])
            status = "policy_error" if isinstance(exc, PolicyFailed) else "invalid_action"
            return {"status": status, "error": str(exc)[:2000], "env_steps": self.steps[0]}
        self.policy.end(0, acts[0])
        if film:  # written by this trusted process, as an evaluation's clips are; the policy never sees the folder
            from envs.clips import fps_for, write_clip

            fps = fps_for(self._kit(), self.spec, self.protocol)
            stem = f"{scenario.name}-{scenario.trajectory_sha256[:8]}"  # as its file is named (envs.scenario_files)
            result["clip"] = write_clip(film, Path(job["film_dir"]), stem, fps,
                                        f"{self.spec.id} {scenario.name}: {scenario.event_description}"[:200]) | {
                "seed": scenario.seed, "step": film[-1][0]}
        return {"status": "ok", "result": result, "env_steps": self.steps[0]}

    def _act_alone(self, obs, info, feedback: list | None = None) -> Any:
        """The action of the one policy in slot 0 (a clip's replay, a test kit's call); raises PolicyFailed."""
        actions, failed = self.policy.act([0], [obs], [info], [feedback] if self.policy.observes else None)
        if failed:
            raise PolicyFailed(failed[0])
        return actions[0]


def _window(job: dict) -> int:
    """The diagnostics window a re-simulation, a scenario or a test kit's policy starts with: an evaluation's
    episode's (its trace window and one), so that a policy cannot tell from its start that it is not in an
    episode of an evaluation (it could, from ``1``, and act otherwise when filmed or tested)."""
    return int(job.get("trace_window") or TRACE_WINDOW) + 1


def step_counter(fd: int) -> memoryview:
    """The shared step counts: a signed 64-bit integer per slot in a file heurist created and reads by
    descriptor. A write per step is a store to memory, so the counts cost nothing measurable."""
    return memoryview(mmap.mmap(fd, 0)).cast("q")


class JobReader:
    """Job lines from the parent: waited for when nothing is in flight, picked up between rounds otherwise.

    Read with ``os.read`` rather than a buffered file, so ``select`` sees every byte not yet taken."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.closed = fd, b"", False

    def take(self, wait: bool) -> list[dict]:
        """The jobs that have arrived; a group whose last job so far says ``more`` is waited out whole."""
        jobs: list[dict] = []
        while True:
            jobs += self._arrived(wait)
            if self.closed or not jobs or not jobs[-1].get("more"):
                return jobs
            wait = True  # the rest of the group was written with it, so this wait is short

    def _arrived(self, wait: bool) -> list[dict]:
        while not self.closed:
            if not wait and not select.select([self.fd], [], [], 0)[0]:
                break
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self.closed = True
                break
            self.buffer += chunk
            if b"\n" in chunk:
                break
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def serve(reader: JobReader, results: IO[str], make_worker) -> None:
    """Answer jobs until the parent closes the pipe, or the policy process is gone."""
    worker: Worker | None = None
    waiting: list[dict] = []  # clips and test-kit calls wait until no episode is in flight

    def answer(reply: dict) -> None:
        results.write(json.dumps(reply) + "\n")
        results.flush()

    while True:
        busy = worker is not None and len(worker.episodes) > 0
        jobs = reader.take(wait=not busy and not waiting)
        if not jobs and not busy and not waiting and reader.closed:
            return
        try:
            for job in jobs:
                if worker is None:
                    worker = make_worker(job)
                if job["kind"] == "episode":
                    started = _guarded(worker, job, lambda: worker.episodes.add(job))
                    if started is not None:
                        answer(started)
                else:
                    waiting.append(job)
            if worker is not None and len(worker.episodes):
                try:
                    for result in worker.episodes.round():
                        answer(result)
                except PolicyGone:
                    raise
                except Exception as exc:  # heurist's own code failed mid-round: every episode in flight reports it
                    for seed in worker.episodes.abandon():
                        answer(worker_error(exc, seed))
            elif waiting:
                job = waiting.pop(0)
                answer(_guarded(worker, job, lambda: worker.waiting_job(job)))
        except PolicyGone as exc:  # the parent, which started the policy process, says why it ended
            answer({"status": "policy_gone", "error": str(exc), "hung_up": exc.hung_up})
            return  # the parent starts a new pair of processes


def _guarded(worker: Worker, job: dict, call) -> dict | None:
    """A job's answer; heurist's own failure (or a policy breaking a clip replay) is reported, not fatal."""
    try:
        return call()
    except PolicyGone:
        raise
    except Exception as exc:
        return worker_error(exc, job.get("seed"))


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
    parser.add_argument("--steps-fd", type=int, required=True, help="env steps of each slot's episode, read by heurist")
    parser.add_argument("--observations-fd", type=int, help="the shared observations, written here")
    parser.add_argument("--limits", required=True)
    parser.add_argument("--cpu", type=int, help="the core shared with the policy process (see envs.sandbox.pair_cpus)")
    args = parser.parse_args()
    _refuse_tracing()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    limits = json.loads(args.limits)
    apply_limits(limits["memory_mb"], limits["fsize_mb"], limits["nofile"])
    results = os.fdopen(args.result_fd, "w")
    requests, replies = os.fdopen(args.request_fd, "wb"), os.fdopen(args.reply_fd, "rb")
    channel = ObservationChannel(args.observations_fd) if args.observations_fd is not None else None
    counts = step_counter(args.steps_fd)

    def make_worker(job: dict) -> Worker:
        policy = RemotePolicy(requests, replies, job["policy_path"], job["policy_source"], channel,
                              job.get("simulator_model"))
        return Worker(job["task"], job["protocol"], policy, steps=counts)

    serve(JobReader(args.job_fd), results, make_worker)


if __name__ == "__main__":
    main()
