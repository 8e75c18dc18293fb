"""Episodes in lockstep: one worker steps several episodes per message to its policy process, and no
result changes for it. Every comparison here is against the same seeds run one episode at a time
(``lockstep=1``), field by field, traces included."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.limits import Limits
from envs.tasks import get_task
from policies import RANDOM_POLICY, starter_policy

FAST = Limits(episode_timeout_s=2, episode_cpu_s=1, memory_mb=1024)


def seed_one_at(step: int, then: str, otherwise: str = "int(obs[2] + 0.5 * obs[3] > 0)") -> str:
    """A policy that does ``then`` (a statement) at step ``step`` of seed 1's episode, and acts ``otherwise``."""
    return f"""
        import numpy as np

        class Policy:
            def reset(self, seed):
                self.seed, self.t = seed, 0

            def act(self, obs, info):
                self.t += 1
                if self.seed == 1 and self.t == {step}:
                    {then}
                return {otherwise}
        """


def episodes(result) -> list[dict]:
    """What an episode's result says, without the times (which differ run to run)."""
    return [e.model_dump(by_alias=True, exclude={"wall_s", "cpu_s"}) for e in result.episodes]


@pytest.mark.parametrize("task,policy", [
    ("CartPole-v1", "starter"), ("Acrobot-v1", "starter"), ("LunarLander-v3", "starter"),
    ("HalfCheetah-v5", "random"), ("ALE/Breakout-v5", "random"), ("ALE/Breakout-ram-v5", "random"),
])
def test_lockstep_changes_no_result(run_eval, task, policy):
    path = starter_policy(get_task(task)) if policy == "starter" else RANDOM_POLICY
    n = 2 if task == "HalfCheetah-v5" else 4
    together = run_eval(path, task, episodes=n, workers=1, lockstep=n)
    alone = run_eval(path, task, episodes=n, workers=1, lockstep=1)
    assert together.status == "complete"
    assert episodes(together) == episodes(alone)
    assert together.episodes[0].trace.windows and together.episodes[0].trace.mode_counts


def test_each_episode_has_its_own_global_random_streams(run_eval, write_policy):
    """A policy that seeds `random` and `numpy.random` in reset and draws in act gets the same draws beside
    other episodes as alone, though they all share one process."""
    policy = write_policy("""
        import random
        import numpy as np

        class Policy:
            def reset(self, seed):
                random.seed(seed)
                np.random.seed(seed)

            def act(self, obs, info):
                self.diagnostics = {"mode": "draw", "u": random.random()}
                return int(np.random.randint(2)) if random.random() < 0.5 else int(obs[2] > 0)
        """)
    together = run_eval(policy, "CartPole-v1", episodes=4, workers=1, lockstep=4)
    alone = run_eval(policy, "CartPole-v1", episodes=4, workers=1, lockstep=1)
    assert episodes(together) == episodes(alone)
    assert len({e.length for e in together.episodes}) > 1  # the seeds really differ


def test_a_policy_keeps_earlier_frames_unchanged(run_eval, write_policy):
    """Atari frames reach the policy through shared memory; what it keeps of one step is never overwritten."""
    policy = write_policy("""
        import numpy as np

        class Policy:
            def reset(self, seed):
                self.kept = []

            def act(self, obs, info):
                for frame, total in self.kept:
                    if int(frame.sum()) != total:
                        raise RuntimeError("a kept frame changed")
                self.kept = (self.kept + [(obs, int(obs.sum()))])[-3:]
                return 1 if len(self.kept) % 2 else 3
        """)
    result = run_eval(policy, "ALE/Breakout-v5", episodes=3, workers=1, lockstep=3)
    assert [e.status for e in result.episodes] == ["ok"] * 3, result.episodes[0].error


def test_each_episode_finds_its_own_classes_under_the_policy_module(run_eval, write_policy):
    """pickle looks a class up by its module's name: beside other episodes, each finds its own module's
    class there, as alone (before, the last episode started named every episode's module)."""
    policy = write_policy("""
        import pickle
        from dataclasses import dataclass

        @dataclass
        class Memory:
            lean: float

        class Policy:
            def reset(self, seed):
                self.memory = Memory(0.0)

            def act(self, obs, info):
                self.memory = pickle.loads(pickle.dumps(Memory(0.9 * self.memory.lean + float(obs[2]))))
                return int(self.memory.lean + 0.5 * obs[3] > 0)
        """)
    together = run_eval(policy, "CartPole-v1", episodes=3, workers=1, lockstep=3)
    alone = run_eval(policy, "CartPole-v1", episodes=3, workers=1, lockstep=1)
    assert together.status == "complete", together.episodes[0].error
    assert episodes(together) == episodes(alone)


def test_a_refused_action_and_a_raising_policy_end_only_their_episode(run_eval, write_policy):
    policy = write_policy("""
        class Policy:
            def reset(self, seed):
                self.seed, self.t = seed, 0

            def act(self, obs, info):
                self.t += 1
                self.diagnostics = {"mode": "right" if obs[2] > 0 else "left"}
                if self.seed == 1 and self.t == 30:
                    raise ValueError("seed one gives up")
                if self.seed == 2 and self.t == 40:
                    self.diagnostics = {"mode": "refused"}
                    return 7
                return int(obs[2] + 0.5 * obs[3] > 0)
        """)
    together = run_eval(policy, "CartPole-v1", episodes=4, workers=1, lockstep=4)
    alone = run_eval(policy, "CartPole-v1", episodes=4, workers=1, lockstep=1)
    assert [e.status for e in together.episodes] == ["ok", "policy_error", "invalid_action", "ok"]
    assert episodes(together) == episodes(alone)
    assert "refused" not in together.episodes[2].trace.mode_counts  # the refused step was never taken


# A group is cut once an episode has been in flight as long as its CPU limit: 3 s leaves the group time to
# reach step 50 on a loaded machine. A loop that burns CPU gets a wall-clock limit far above its CPU limit:
# on a loaded machine its CPU time grows slower than the wall clock, and alone it must meet its CPU limit first.
GROUP = FAST.model_copy(update={"episode_cpu_s": 3})
CPU_BOUND = GROUP.model_copy(update={"episode_timeout_s": 30})


@pytest.mark.parametrize("how,status,reason,limits", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "crash", "segmentation fault", GROUP),
    ("while True: pass", "crash", "CPU time limit exceeded", CPU_BOUND),
    ("import time; time.sleep(600)", "timeout", "wall-clock limit", GROUP),
], ids=["segfault", "busy-loop", "sleep"])
def test_a_group_that_dies_runs_again_one_at_a_time(run_eval, write_policy, how, status, reason, limits):
    """Whatever kills the policy process in the middle of a group is blamed on no one: each episode of the
    group runs again alone, the one that misbehaves fails with its own reason, and the others' results are
    those they have alone. The steps the lost group took are still counted."""
    policy = write_policy(seed_one_at(50, how))
    together = run_eval(policy, "CartPole-v1", episodes=3, workers=1, lockstep=3, limits=limits)
    alone = run_eval(policy, "CartPole-v1", seeds=[0, 2], workers=1, lockstep=1, limits=limits)
    assert [e.status for e in together.episodes] == ["ok", status, "ok"]
    assert reason in together.episodes[1].error
    kept = [episodes(together)[0], episodes(together)[2]]
    assert [e | {"env_steps": 0} for e in kept] == [e | {"env_steps": 0} for e in episodes(alone)]
    # The lost group's steps are counted with the episodes that ran again: the one that failed took 49
    # steps in the group and 49 alone; the others at least what they take alone.
    assert together.episodes[1].env_steps >= 2 * 49
    assert all(t["env_steps"] >= a.env_steps for t, a in zip(kept, alone.episodes))


def test_no_episode_gets_more_time_in_a_group_than_alone(run_eval, write_policy):
    """Alone, seed 1's episode (500 steps of 7 ms) runs past its 1 s limit and 1 s of grace and times out.
    Beside seven quick ones it would finish well within the group's old allowance (the limit times the width,
    8 s): the group is cut when it has been in flight as long as it could be alone, and it times out as alone."""
    policy = write_policy("""
        import time

        class Policy:
            def reset(self, seed):
                self.slow = seed == 1

            def act(self, obs, info):
                if self.slow:
                    time.sleep(0.007)
                return int(obs[2] + 0.5 * obs[3] > 0)
        """)
    limits = Limits(episode_timeout_s=1, episode_cpu_s=20, memory_mb=1024)
    together = run_eval(policy, "CartPole-v1", episodes=8, workers=1, lockstep=8, limits=limits)
    alone = run_eval(policy, "CartPole-v1", seeds=[1], workers=1, lockstep=1, limits=limits)
    assert alone.episodes[0].status == "timeout"
    assert [e.status for e in together.episodes] == ["ok", "timeout"] + ["ok"] * 6
    assert "wall-clock limit of 1 s" in together.episodes[1].error


@pytest.mark.parametrize("reply", [
    {"a": [0], "e": {"²": "x"}},  # a digit to str.isdigit, not to int()
    {"a": [0], "e": {"9" * 5000: "x"}},
    {"b": "", "dtype": "<f4", "shape": [1] + [1] * 70},
    {"b": "", "dtype": "<f4", "shape": [1, 2**32, 2**32]},  # a size numpy's product would wrap to 0
    {"w": [{"np": [1.0], "dtype": "O"}]},
])
def test_a_malformed_batch_reply_is_a_broken_protocol(reply):
    from envs.wire import ProtocolBroken, actions_from_wire

    with pytest.raises(ProtocolBroken):
        actions_from_wire(reply, 1)


def test_a_deeply_nested_reply_with_a_lone_surrogate_is_a_broken_protocol():
    """Valid JSON that only the surrogate clean-up recurses into too deeply: refused as the policy's broken
    protocol, never raised as heurist's own error (which would fail every episode of a group for good)."""
    import io

    from envs.wire import ProtocolBroken, receive_from_policy

    line = ('{"a": [0], "d": ' + '{"x": ' * 600 + '"\\udc00"' + "}" * 600 + "}\n").encode()
    with pytest.raises(ProtocolBroken):
        receive_from_policy(io.BytesIO(line), limit=len(line) + 1)


@pytest.mark.parametrize("encoded", [
    '{"a": [0], "e": {"0": "lone \ud800 surrogate"}}\n'.encode("utf-8", "surrogatepass"),  # raw, not escaped
    '{"a": [0], "e": {"0": "lone \ud800 surrogate"}}\n'.encode("utf-16-be", "surrogatepass"),
    '{"a": [0]}\n'.encode("utf-16-le"),  # text json.loads on bytes would take for UTF-16
    '{"a": [0]}\n'.encode("utf-32-be"),
], ids=["utf-8-surrogate", "utf-16-surrogate", "utf-16", "utf-32"])
def test_a_reply_that_is_not_utf_8_is_a_broken_protocol(encoded):
    """json.loads on bytes guesses UTF-16 and UTF-32 and lets raw lone surrogates through: an error string holding
    one reached the evaluation's record, which no JSON writer could then write, and `heurist run` stopped."""
    import io

    from envs.wire import ProtocolBroken, receive_from_policy

    line = encoded if encoded.endswith(b"\n") else encoded + b"\n"
    with pytest.raises(ProtocolBroken, match="not JSON"):
        receive_from_policy(io.BytesIO(line), limit=len(line) + 1)


# An action that reaches the env process as JSON but that no check can read (an int past float64's range, 80 KB
# of list where one reply used to be bounded at 64 KiB for each episode it carried).
ODD_ACTIONS = {"MountainCarContinuous-v0": ("10 ** 400", "np.array([1.0 if obs[1] >= 0 else -1.0])"),
               "CartPole-v1": ("[0] * 40000", "int(obs[2] + 0.5 * obs[3] > 0)")}


@pytest.mark.parametrize("task", sorted(ODD_ACTIONS))
def test_an_action_no_check_can_read_ends_its_own_episode_alone_and_beside_others(run_eval, write_policy, task):
    odd, usual = ODD_ACTIONS[task]
    policy = write_policy(seed_one_at(5, f"return {odd}", usual))
    together = run_eval(policy, task, episodes=3, workers=1, lockstep=3)
    alone = run_eval(policy, task, episodes=3, workers=1, lockstep=1)
    assert [e.status for e in together.episodes] == ["ok", "invalid_action", "ok"], [e.error for e in together.episodes]
    assert episodes(together) == episodes(alone)
    assert together.episodes[1].length == 4


def test_the_action_check_raises_nothing_but_invalid_action():
    from gymnasium import spaces

    from envs.actions import InvalidAction, action_coercer

    for space, action in [(spaces.Box(-1.0, 1.0, (1,)), 10 ** 400), (spaces.Box(-1.0, 1.0, (2,)), [1.0, 10 ** 400]),
                          (spaces.Discrete(2), 10 ** 400), (spaces.MultiDiscrete([2, 3]), [10 ** 400, 0]),
                          (spaces.MultiDiscrete([2, 3]), "ab")]:
        with pytest.raises(InvalidAction):
            action_coercer(space)(action)


def test_the_policy_cannot_resize_or_reseal_the_observation_memory():
    """Reopened read-write through /proc (as a policy process could), the memory still cannot shrink under
    the env process's mapping, grow, or take new seals."""
    import fcntl
    import os

    from envs.wire import SHARED_OBS_CAPACITY, ObservationChannel, shared_memory_pair

    fd, read_only = shared_memory_pair()
    upgraded = os.open(f"/proc/self/fd/{read_only}", os.O_RDWR)
    try:
        assert os.fstat(fd).st_size == SHARED_OBS_CAPACITY
        for size in (0, 2 * SHARED_OBS_CAPACITY):
            with pytest.raises(PermissionError):
                os.ftruncate(upgraded, size)
        with pytest.raises(PermissionError):
            fcntl.fcntl(upgraded, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        assert ObservationChannel(fd).size == SHARED_OBS_CAPACITY
    finally:
        for f in (fd, read_only, upgraded):
            os.close(f)


def test_heurist_failing_to_finish_one_episode_loses_no_other(monkeypatch):
    """Fault injection into heurist's own code: finishing seed 1's result raises. Seed 1 alone reports
    heurist's failure; the episodes that ended in the same round keep their results."""
    from envs.lockstep import EpisodeRun, Lockstep
    from envs.worker import LocalPolicy

    spec = get_task("CartPole-v1")
    path = starter_policy(spec)
    finish = EpisodeRun.finish

    def failing_finish(self, traced=True):
        if self.seed == 1:
            raise RuntimeError("injected: heurist's own code failed")
        return finish(self, traced)

    monkeypatch.setattr(EpisodeRun, "finish", failing_finish)
    group = Lockstep(spec, spec.protocol("standard").name, LocalPolicy(str(path), path.read_text()), [0] * 8)
    for slot in range(3):
        assert group.add({"seed": slot, "slot": slot, "trace_window": 5, "max_windows": 2}) is None
    results = []
    while len(group):
        results += group.round()
    by_seed = {r["seed"]: r for r in results}
    assert sorted(by_seed) == [0, 1, 2]  # the starter balances all 500 steps: all three end in one round
    assert by_seed[1]["status"] == "worker_error" and "injected" in by_seed[1]["error"]
    assert by_seed[0]["status"] == by_seed[2]["status"] == "ok" and by_seed[0]["length"] == 500


def test_diagnostics_are_kept_as_they_were_at_their_step_however_late_they_are_read():
    """The policy process converts numpy numbers in diagnostics only when a trace window reads them
    (``envs.wire.snapshot_diag``): what it reads must be what converting at the step gave, whatever the policy
    changed in place since, and every step counts under the same mode."""
    import numpy as np

    from envs.wire import mode_key, plain_diag, read_diag, snapshot_diag, snapshot_mode

    class Pretender:  # a policy's object that claims to be a numpy integer
        value = 1

        @property
        def __class__(self):
            return np.int64

        def item(self):
            return self.value

    shared_list, shared_dict, pretender = [np.float64(0.5), 2.0000001], {"inner": 1}, Pretender()
    diagnostics = [
        {"mode": "plain", "x": 1.23456789, "n": 3},
        {"mode": "numpy", "x": np.float64(1.23456789), "y": np.float32(0.1), "i": np.int64(7), "b": np.bool_(True)},
        {"mode": ["a", "list"], "xs": shared_list, "t": (1, np.int32(2))},
        {"mode": np.float64(2.5), "s": "x" * 250, "nan": np.float64("nan")},
        {"mode": "nested", "d": shared_dict, "arr": np.arange(3)},
        {5: "a key that is no string"},
        ["not", "a", "dict"],
        np.float64(3.0),
        {"mode": "long list", "xs": list(range(70))},
        {"mode": "extended", "x": np.longdouble(1.5)},  # converted at once, to text: its item() is itself
        {"mode": "pretender", "x": pretender},          # says it is an np.int64; converted at once all the same
    ]
    for diag in diagnostics:
        shared_list[0], shared_dict["inner"], pretender.value = np.float64(0.5), 1, 1
        expected = plain_diag(diag)
        expected = dict(expected) if expected is diag else expected
        expected_key = mode_key(expected, {}) if expected.__class__ is dict else False
        snapshot = snapshot_diag(diag)
        key = snapshot_mode(snapshot, {})
        expected_text = json.dumps(expected)
        shared_list[0] = np.float64(-1.0)  # the policy changes what it holds, in place, after the step
        shared_dict["inner"] = 2
        pretender.value = 99
        if isinstance(diag, dict):
            diag["added later"] = 1
        assert json.dumps(read_diag(snapshot)) == expected_text and key == expected_key, diag
    assert read_diag(snapshot_diag({"mode": "extended", "x": np.longdouble(1.5)})) == {"mode": "extended", "x": "1.5"}

    # Diagnostics that are no dict are kept as they are and count under no mode (copying them as a dict, as
    # before, failed and took the policy process down, or made "" an empty dict counted under None).
    for diag in ("searching", "", 7, True, 2.5):
        snapshot = snapshot_diag(diag)
        assert read_diag(snapshot) == diag and snapshot_mode(snapshot, {}) is False


def test_diagnostics_that_are_a_string_are_recorded_not_fatal(run_eval, write_policy):
    policy = write_policy('''
        class Policy:
            def reset(self, seed):
                pass

            def act(self, obs, info):
                self.diagnostics = "leaning right" if obs[2] > 0 else "leaning left"
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        ''')
    episode = run_eval(policy, "CartPole-v1", episodes=1, trace_window=3).episodes[0]
    assert episode.status == "ok" and episode.trace.mode_counts == {}
    steps = episode.trace.windows[-1].steps
    assert [s["diag"] for s in steps] == ["leaning right" if s["obs"][2] > 0 else "leaning left" for s in steps]


def test_a_trace_window_shows_each_steps_numpy_diagnostics_from_a_list_changed_in_place(run_eval, write_policy):
    policy = write_policy('''
        import numpy as np

        class Policy:
            def reset(self, seed):
                self.history = [np.float64(0.0), np.float64(0.0)]
                self.diagnostics = {"mode": "watch", "history": self.history}

            def act(self, obs, info):
                self.history[0] = self.history[1]  # the same list every step, changed in place
                self.history[1] = np.float64(obs[2])
                self.diagnostics["angle"] = np.float32(obs[2])
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        ''')
    episode = run_eval(policy, "CartPole-v1", episodes=1, trace_window=4).episodes[0]
    assert episode.status == "ok" and episode.trace.mode_counts == {"watch": 500}
    steps = episode.trace.windows[-1].steps
    assert all(abs(s["diag"]["history"][1] - s["obs"][2]) < 1e-5 for s in steps)  # each step's own angle
    assert [s["diag"]["history"][1] for s in steps] == [s["diag"]["angle"] for s in steps]
    assert [s["diag"]["history"][0] for s in steps[1:]] == [s["diag"]["history"][1] for s in steps[:-1]]


def strict_json(line: str):
    """A JSON line as a parser that holds to the standard reads it: NaN and Infinity are no JSON."""
    def refuse(token):
        raise ValueError(f"{token} in the ledger")
    return json.loads(line, parse_constant=refuse)


def test_a_reward_that_is_no_finite_number_fails_its_episode_as_the_envs_error(run_eval, ledger):
    """A task plug-in's env that rewards NaN, +inf or None, or whose rewards sum past a float's range, made a NaN
    mean of a "complete" evaluation (and NaN in the ledger, which no strict JSON reader takes). That episode is now
    the env's error, alone and beside others; the others keep their scores."""
    policy = starter_policy(get_task("CartPole-v1"))
    seeds = [0, 1, 2, 3, 4]
    together = run_eval(policy, "tests.unscorable_rewards:TASK", seeds=seeds, workers=1, lockstep=5)
    alone = run_eval(policy, "tests.unscorable_rewards:TASK", seeds=seeds, workers=1, lockstep=1)
    assert episodes(together) == episodes(alone)
    by_seed = {e.seed: e for e in together.episodes}
    assert by_seed[0].status == "ok" and by_seed[0].return_ == 50.0
    assert [by_seed[s].status for s in (1, 2, 3, 4)] == ["env_error"] * 4
    assert by_seed[1].error == "env.step returned the reward nan at step 5; only finite rewards can be scored"
    assert by_seed[2].error == "env.step returned the reward inf at step 3; only finite rewards can be scored"
    assert by_seed[3].error == "env.step returned the reward 'None' (NoneType) at step 2, which is not a number"
    assert by_seed[4].error.startswith("the return passed the range of a float at step 1")
    assert [by_seed[s].length for s in (1, 2, 3, 4)] == [5, 3, 2, 1]  # the steps before it, as when env.step raises
    assert together.stats.mean == 50.0  # over the completed episode alone
    for line in ledger.path.read_text().splitlines():
        strict_json(line)


@pytest.mark.parametrize("low, high", [(-1.0, 1.0), ([-1.0, -2.0, 0.0, -np.inf], [1.0, 2.0, 0.5, np.inf]),
                                       (-np.inf, np.inf)], ids=["uniform", "per-joint", "unbounded"])
def test_a_few_continuous_actions_are_accepted_and_refused_as_numpy_would(low, high):
    """envs/actions.py checks small Box actions as Python floats: the same verdict as numpy's comparisons, for
    values at, inside and beyond the bounds, infinities and NaN."""
    from gymnasium import spaces

    from envs.actions import InvalidAction, action_coercer

    space = spaces.Box(low=np.asarray(low, dtype=np.float32) * np.ones(4, dtype=np.float32),
                       high=np.asarray(high, dtype=np.float32) * np.ones(4, dtype=np.float32), dtype=np.float32)
    coerce = action_coercer(space)
    lo, hi = space.low.astype(np.float64), space.high.astype(np.float64)
    values = [-np.inf, -3.0, -2.0, -1.0, -1e-300, -0.0, 0.0, 0.25, 0.5, 1.0, np.nextafter(1.0, 2.0), 2.0, np.inf, np.nan]
    rng = np.random.default_rng(0)
    for _ in range(3000):
        action = rng.choice(values, size=4)
        expected = bool(((action >= lo) & (action <= hi)).all())
        try:
            accepted = coerce(action)
        except InvalidAction as exc:
            assert not expected, (action, str(exc))
            assert ("non-finite" in str(exc)) == (not np.isfinite(action).all())
        else:
            assert expected and accepted is action, action


def test_the_env_process_takes_a_group_of_jobs_whole_however_late_its_last_job_arrives(monkeypatch):
    """A group's episodes start in the same round. The env process had started a round as soon as one job had
    arrived, so on a loaded machine a group's second episode could start a step after the first had acted (a test
    policy that refused such a start failed one run in many)."""
    import os
    import threading
    import types

    from envs import worker

    read_once = threading.Event()

    def read(fd: int, n: int) -> bytes:
        chunk = os.read(fd, n)
        read_once.set()
        return chunk

    monkeypatch.setattr(worker, "os", types.SimpleNamespace(read=read))
    r, w = os.pipe()
    try:
        reader, taken = worker.JobReader(r), []
        os.write(w, (json.dumps({"kind": "episode", "seed": 0, "more": True}) + "\n").encode())
        taking = threading.Thread(target=lambda: taken.extend(reader.take(wait=False)))
        taking.start()
        assert read_once.wait(60)  # the first job is read; the second is not written yet
        os.write(w, (json.dumps({"kind": "episode", "seed": 1}) + "\n").encode())
        taking.join()
        assert [job["seed"] for job in taken] == [0, 1]
        os.write(w, (json.dumps({"kind": "episode", "seed": 2}) + "\n").encode())
        assert [job["seed"] for job in reader.take(wait=False)] == [2]  # a job alone is taken at once
    finally:
        os.close(r)
        os.close(w)


def test_an_episode_cannot_rewrite_the_observations_its_neighbours_act_on(run_eval, write_policy):
    """A red-team review (2026-12-06): every observation of a round was a view of one array, so seed 0's policy
    rewrote its neighbours' through ``obs.base`` before they acted; the mean at width 8 fell from 500 to 70, still
    "complete". Each episode now gets an array of its own."""
    policy = write_policy("""
        import numpy as np

        class Policy:
            def reset(self, seed):
                self.seed = seed

            def act(self, obs, info):
                if self.seed == 0 and isinstance(obs.base, np.ndarray) and obs.base.size > obs.size:
                    obs.base.reshape(-1, 4)[:, 2:] *= -5.0
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        """)
    together = run_eval(policy, "CartPole-v1", episodes=6, workers=1, lockstep=6)
    alone = run_eval(policy, "CartPole-v1", episodes=6, workers=1, lockstep=1)
    assert episodes(together) == episodes(alone)
    assert all(e.return_ == 500 for e in together.episodes)


def test_an_episode_that_runs_out_of_what_its_group_shares_is_run_again_alone(run_eval, write_policy):
    """A red-team review (2026-12-06): an honest policy holding a large table per episode failed with MemoryError in
    a group (the episodes share one process's address space) and not alone, and the failures were recorded as the
    episodes' own. A failure for want of memory, descriptors or disk in a group now blames no one: the group runs
    again one episode at a time, where each gets what it would alone."""
    policy = write_policy("""
        import numpy as np

        class Policy:
            def reset(self, seed):
                self.table = np.empty(40_000_000)  # 320 MB of address space each, never touched

            def act(self, obs, info):
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        """)
    limits = FAST.model_copy(update={"memory_mb": 1200})
    together = run_eval(policy, "CartPole-v1", episodes=4, workers=1, lockstep=4, limits=limits)
    alone = run_eval(policy, "CartPole-v1", episodes=4, workers=1, lockstep=1, limits=limits)
    assert [e.status for e in alone.episodes] == ["ok"] * 4, [e.error for e in alone.episodes]
    assert [e | {"env_steps": 0} for e in episodes(together)] == [e | {"env_steps": 0} for e in episodes(alone)]


def test_diagnostics_that_cannot_be_read_fail_their_episode_not_the_process(run_eval, write_policy):
    """A red-team review (2026-12-06): diagnostics whose conversion raised (a ``__str__`` that does) ended the policy
    process, so its group ran again alone and the episode was a crash. It is that episode's policy error now."""
    policy = write_policy("""
        class Weird:
            def __str__(self):
                raise ValueError("no text for you")

        class Policy:
            def reset(self, seed):
                self.seed, self.t = seed, 0

            def act(self, obs, info):
                self.t += 1
                self.diagnostics = {"mode": Weird() if self.seed == 1 and self.t == 20 else "ok"}
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        """)
    together = run_eval(policy, "CartPole-v1", episodes=3, workers=1, lockstep=3)
    assert [e.status for e in together.episodes] == ["ok", "policy_error", "ok"]
    assert "its diagnostics could not be read at step 19" in together.episodes[1].error
    assert "ValueError: no text for you" in together.episodes[1].error
    assert together.episodes[0].env_steps == together.episodes[0].length  # no group was lost and run again
