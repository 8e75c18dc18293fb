"""The evaluator's numbers can be trusted: deterministic per seed, serial equals parallel, guarded splits, traces and clips."""

from __future__ import annotations

import os

import cv2
import imageio_ffmpeg
import pytest

from common.errors import PolicyError, SplitGuardError
from envs.limits import Limits
from envs.tasks import get_task
from policies import RANDOM_POLICY, starter_policy

CARTPOLE = starter_policy(get_task("CartPole-v1"))
LUNAR = starter_policy(get_task("LunarLander-v3"))


def _fingerprint(result):
    return [(e.seed, e.status, e.return_, e.length, e.trace.actions, [ev.model_dump() for ev in e.events])
            for e in result.episodes]


def test_same_seed_same_result(run_eval):
    first = run_eval(RANDOM_POLICY, "LunarLander-v3", episodes=3, workers=1)
    second = run_eval(RANDOM_POLICY, "LunarLander-v3", episodes=3, workers=1)
    assert _fingerprint(first) == _fingerprint(second)
    assert len({e.return_ for e in first.episodes}) == 3  # different seeds really differ


def test_the_confidence_interval_is_scipys_t_interval_bit_for_bit():
    """score_stats computes the t interval from scipy.special (importing scipy.stats costs 0.9 s a process); the numbers
    must be the ones scipy.stats gives, to the last bit, for any sample size and spread."""
    import numpy as np
    from scipy import stats

    from envs.results import score_stats

    rng = np.random.default_rng(0)
    spec = get_task("CartPole-v1")
    checked = 0
    for n in [2, 3, 5, 8, 10, 20, 30, 50, 100, 1000, 2921, 3541] * 20:  # 2921: n ** 0.5 != np.sqrt(n)
        returns = np.round(rng.normal(rng.uniform(-5, 5) ** 3, rng.uniform(0.01, 300), size=n), int(rng.integers(0, 4)))
        if returns.std() == 0:
            continue
        mean = float(returns.mean())
        lo, hi = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(returns))
        assert score_stats(returns.tolist(), spec).ci95 == (float(lo), float(hi)), n
        checked += 1
    assert checked > 200
    assert score_stats([7.0, 7.0, 7.0], spec).ci95 is None and score_stats([7.0], spec).ci95 is None


@pytest.mark.parametrize("task,policy", [("LunarLander-v3", RANDOM_POLICY), ("ALE/Breakout-v5", RANDOM_POLICY),
                                         ("HalfCheetah-v5", RANDOM_POLICY)])
def test_serial_equals_parallel(run_eval, task, policy):
    episodes = 2 if task != "LunarLander-v3" else 6
    serial = run_eval(policy, task, episodes=episodes, workers=1)
    parallel = run_eval(policy, task, episodes=episodes, workers=2)
    assert _fingerprint(serial) == _fingerprint(parallel)
    assert serial.stats == parallel.stats


@pytest.mark.parametrize("task", ["CartPole-v1", "LunarLander-v3", "BipedalWalker-v3", "HalfCheetah-v5",
                                  "ALE/Breakout-v5"])
def test_an_episodes_result_depends_on_its_seed_alone_not_on_the_episodes_before_it(run_eval, task):
    """One per family, Box2D's two among them: the same seeds one after another in one env, in another order, and
    two workers at once give each seed the same episode. (BipedalWalker's world kept state across resets, so its
    returns changed with the order; such tasks now get a fresh env per episode, ``TaskSpec.reuse_env``.)"""
    seeds = [0, 1, 2]
    by_seed = lambda result: {f[0]: f for f in _fingerprint(result)}  # noqa: E731
    serial = by_seed(run_eval(RANDOM_POLICY, task, seeds=seeds, workers=1, lockstep=1))
    shuffled = by_seed(run_eval(RANDOM_POLICY, task, seeds=[2, 0, 1], workers=1, lockstep=1))
    parallel = by_seed(run_eval(RANDOM_POLICY, task, seeds=seeds, workers=2, lockstep=2))
    assert serial == shuffled == parallel
    assert all(f[1] == "ok" for f in serial.values())


OBSERVES = """
class Policy:
    def reset(self, seed):
        self.rewards, self.acts = [], 0

    def observe(self, reward, terminated, truncated, info):
        self.rewards.append(reward)
        if terminated or truncated:  # the last step's call: said through a failure, the one way out of an episode
            raise RuntimeError(f"last observe: {len(self.rewards)} rewards, sum {sum(self.rewards)}, "
                               f"terminated={terminated} truncated={truncated}")

    def act(self, obs, info):
        if len(self.rewards) != self.acts:
            raise ValueError(f"act {self.acts} came after {len(self.rewards)} observes")
        self.acts += 1
        return 0  # always left: the pole falls within a few steps
"""


@pytest.mark.parametrize("lockstep", [1, 4])
def test_observe_gets_every_steps_reward_before_the_next_act_and_the_last_at_the_end(run_eval, write_policy,
                                                                                      lockstep):
    always_left = "class Policy:\n    def reset(self, seed):\n        pass\n\n    def act(self, obs, info):\n        return 0\n"
    plain = run_eval(write_policy(always_left, "plain.py"), "CartPole-v1", episodes=4, workers=1, lockstep=lockstep)
    observed = run_eval(write_policy(OBSERVES, "observes.py"), "CartPole-v1", episodes=4, workers=1, lockstep=lockstep)
    for alone, seen in zip(plain.episodes, observed.episodes):
        assert alone.status == "ok" and seen.status == "policy_error", seen.error
        assert (f"last observe: {alone.length} rewards, sum {float(alone.return_)}, terminated=True truncated=False"
                in seen.error)


DRAWS_IN_OBSERVE = """
import numpy as np


class Base:
    def observe(self, reward, terminated, truncated, info):  # inherited: still called
        self.noise = np.random.rand()


class Policy(Base):
    def reset(self, seed):
        np.random.seed(seed)
        self.noise = 0.5

    def act(self, obs, info):
        return int(obs[2] + 0.2 * (self.noise - 0.5) > 0)
"""


def test_an_observe_that_draws_random_numbers_gives_the_same_episodes_beside_others(run_eval, write_policy):
    """Each episode's last observe() draws from its own generator, not from the slot that acted last, so episodes
    of different lengths in one group end as they would alone."""
    policy = write_policy(DRAWS_IN_OBSERVE, "draws.py")
    alone = run_eval(policy, "CartPole-v1", episodes=6, workers=1, lockstep=1)
    grouped = run_eval(policy, "CartPole-v1", episodes=6, workers=1, lockstep=6)
    assert _fingerprint(alone) == _fingerprint(grouped)
    assert len({e.length for e in alone.episodes}) > 1  # they end at different rounds
    plain = run_eval(write_policy(DRAWS_IN_OBSERVE.replace("np.random.rand()", "0.5"), "still.py"), "CartPole-v1",
                     episodes=6, workers=1, lockstep=1)
    assert _fingerprint(plain) != _fingerprint(alone)  # observe ran: its draws changed the episodes


def test_rewards_go_only_to_the_episodes_whose_policy_observes(run_eval, write_policy):
    """observe() set on some instances only (odd seeds): the others are never called, and fail nothing."""
    policy = write_policy("""
class Policy:
    def reset(self, seed):
        self.seen = 0
        if seed % 2:
            self.observe = self._count

    def _count(self, reward, terminated, truncated, info):
        self.seen += 1

    def act(self, obs, info):
        return int(obs[2] + 0.5 * obs[3] > 0)
""", "some.py")
    result = run_eval(policy, "CartPole-v1", episodes=4, workers=1, lockstep=4)
    assert [e.status for e in result.episodes] == ["ok"] * 4, [e.error for e in result.episodes]


def test_whether_an_episode_is_sent_its_rewards_depends_on_it_alone(run_eval, write_policy):
    """Seed 0 takes on observe() at its reset, seed 1 at its first act. Whether an episode gets its rewards is its own
    start's answer: it used to be one flag per pair, turned on for good by the first episode that observed, so seed 1
    heard its rewards (and played otherwise) only when seed 0 had run before it in the same pair."""
    policy = write_policy("""
class Policy:
    def reset(self, seed):
        self.seed, self.t, self.heard = seed, 0, 0
        if seed == 0:
            self.observe = self._watch

    def _watch(self, reward, terminated, truncated, info):
        self.heard += 1

    def act(self, obs, info):
        self.t += 1
        if self.seed == 1 and self.t == 1:
            self.observe = self._watch
        if self.heard:
            return 0
        return int(obs[2] + 0.5 * obs[3] > 0)
""", "late_observer.py")
    alone = run_eval(policy, "CartPole-v1", seeds=[1], workers=1, lockstep=1)
    after = run_eval(policy, "CartPole-v1", seeds=[0, 1], workers=1, lockstep=1)
    beside = run_eval(policy, "CartPole-v1", seeds=[0, 1], workers=1, lockstep=2)
    assert alone.episodes[0].return_ == 500.0  # never told its rewards: it balances throughout
    assert _fingerprint(after)[1:] == _fingerprint(beside)[1:] == _fingerprint(alone)
    assert after.episodes[0].return_ < 500.0  # seed 0 does hear them, and acts on them


def test_an_observe_that_cannot_take_what_a_step_returns_is_refused_at_the_check():
    from envs.contract import check_policy_source

    with pytest.raises(PolicyError, match="observe takes observe\\(self, reward, terminated, truncated, info\\)"):
        check_policy_source("class Policy:\n    def reset(self, s): pass\n    def act(self, o, i): return 0\n"
                            "    def observe(self, reward): pass\n", "p.py")


def test_policy_state_does_not_leak_between_episodes(run_eval, write_policy):
    """Module globals persist only within one episode: a worker reloads the file for each seed."""
    policy = write_policy('''
        CALLS = []

        class Policy:
            def reset(self, seed):
                CALLS.append(seed)

            def act(self, obs, info):
                return len(CALLS) % 2  # 1 only if this is the module's first episode
        ''')
    result = run_eval(policy, "CartPole-v1", episodes=4, workers=1)
    assert {e.trace.actions[0] for e in result.episodes} == {1}


def test_holdout_and_audit_need_explicit_confirmation(run_eval, ledger):
    for split in ("holdout", "audit"):
        with pytest.raises(SplitGuardError, match="--confirm-protected"):
            run_eval(CARTPOLE, "CartPole-v1", split=split, episodes=1)
    assert ledger.read() == ([], 0)  # refused before anything was recorded
    first = run_eval(CARTPOLE, "CartPole-v1", split="holdout", episodes=2, confirm_protected=True)
    second = run_eval(CARTPOLE, "CartPole-v1", split="holdout", episodes=2, confirm_protected=True)
    assert first.seeds == [1000, 1001]
    assert (first.protected_uses_before, second.protected_uses_before) == (0, 1)
    started = [r for r in ledger.read()[0] if r["event"] == "eval_started"]
    assert [r["protected_split"] for r in started] == [True, True]


def test_asking_for_more_episodes_than_seeds_is_an_error(run_eval):
    with pytest.raises(SplitGuardError, match="has 20 seeds"):
        run_eval(CARTPOLE, "CartPole-v1", episodes=21)


def test_bad_policy_files_are_refused_before_running(run_eval, write_policy, tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        run_eval(tmp_path / "nope.py", "CartPole-v1", episodes=1)
    with pytest.raises(PolicyError, match="syntax error at line 2"):
        run_eval(write_policy("class Policy:\n    def act(self\n"), "CartPole-v1", episodes=1)
    with pytest.raises(PolicyError, match="no top-level class Policy"):
        run_eval(write_policy("def act(obs):\n    return 0\n"), "CartPole-v1", episodes=1)


def test_result_and_ledger_name_everything_a_score_depends_on(run_eval, ledger):
    result = run_eval(CARTPOLE, "CartPole-v1", episodes=5)
    summary = result.summary()
    for key in ("mean", "std", "median", "min", "max", "episodes", "env_steps", "wall_s", "failures",
                "task", "protocol", "split", "seeds", "policy_sha256"):
        assert key in summary
    assert summary["env_steps"] == sum(e.length for e in result.episodes) == 2500
    records, _ = ledger.read()
    started, finished = records
    assert started["event"] == "eval_started" and finished["event"] == "eval_finished"
    assert started["eval_id"] == finished["eval_id"] == result.eval_id
    assert started["versions"]["gymnasium"] and started["policy_sha256"] == result.policy_sha256
    assert set(started["git"]) == {"commit", "committed_file", "uncommitted_changes"}
    assert finished["mean"] == 500.0 and finished["per_episode"][0]["seed"] == 0


def test_trace_keeps_diagnostics_before_failures(run_eval, write_policy):
    policy = write_policy('''
        class Policy:
            def reset(self, seed):
                self.t = 0

            def act(self, obs, info):
                self.t += 1
                self.diagnostics = {"mode": "lean_left", "reason": f"step {self.t}"}
                return 0
        ''')
    result = run_eval(policy, "CartPole-v1", episodes=1, trace_window=5)
    episode = result.episodes[0]
    assert [e.kind for e in episode.events] == ["pole_fell"]
    assert "pole fell" in episode.events[0].description and "obs=[" in episode.events[0].description
    window = next(w for w in episode.trace.windows if w.label == "pole_fell")
    assert len(window.steps) == 5 and window.step == episode.length - 1
    assert window.steps[-1]["diag"] == {"mode": "lean_left", "reason": f"step {episode.length}"}
    assert len(window.steps[-1]["obs"]) == 4
    assert episode.trace.mode_counts == {"lean_left": episode.length}
    assert len(episode.trace.actions) == len(episode.trace.rewards) == episode.length


def test_atari_life_lost_events(run_eval):
    result = run_eval(RANDOM_POLICY, "ALE/Breakout-v5", episodes=1)
    kinds = [e.kind for e in result.episodes[0].events]
    assert kinds.count("life_lost") == 5
    assert result.failures["life_lost"] == 5


def test_evaluation_deadline_marks_the_rest_not_run(run_eval, slow_balancer):
    policy = slow_balancer(0.05)
    result = run_eval(policy, "CartPole-v1", episodes=6, workers=1, eval_timeout_s=2, lockstep=1,
                      limits=Limits(episode_timeout_s=60, episode_cpu_s=60))
    statuses = [e.status for e in result.episodes]
    assert "not_run" in statuses and result.status in ("partial", "broken")


def test_evaluation_deadline_cuts_a_group_in_flight(run_eval, write_policy):
    """In lockstep every episode of the group was started: each is cut off at the evaluation's limit, says so,
    and keeps the env steps it took; none is run again."""
    policy = write_policy("""
        import time

        class Policy:
            def reset(self, seed):
                self.t = 0

            def act(self, obs, info):
                self.t += 1
                if self.t > 5:
                    time.sleep(3600)  # in flight at the evaluation's limit, however long the pair took to start
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        """)
    result = run_eval(policy, "CartPole-v1", episodes=6, workers=1, eval_timeout_s=10, lockstep=3,
                      limits=Limits(episode_timeout_s=60, episode_cpu_s=60))
    assert [e.status for e in result.episodes[:3]] == ["timeout"] * 3
    assert [e.status for e in result.episodes[3:]] == ["not_run"] * 3
    assert all("evaluation wall-clock limit of 10 s" in e.error for e in result.episodes)
    assert [e.env_steps for e in result.episodes[:3]] == [5, 5, 5] and result.status == "broken"


# Process-wide state a policy can keep (builtins is shared by every module of its process): in its evaluation the
# pair starts both episodes before either acts (lockstep 2); a clip's re-simulation starts one at a time.
TWO_FACED = """
import builtins

STARTS = builtins.__dict__.setdefault("heurist_test_starts", [])
ACTED = builtins.__dict__.setdefault("heurist_test_acted", [])


class Policy:
    def reset(self, seed):
        if ACTED and {refuse_later_starts}:
            raise RuntimeError("a second re-simulation in one process")
        STARTS.append(seed)
        self.t = 0

    def act(self, obs, info):
        ACTED.append(1)
        self.t += 1
        if {give_up} and len(STARTS) >= 2 and self.t > 150:
            return 0  # gives up, but only with a neighbour: alone (filmed) it balances
        return int(obs[2] + 0.5 * obs[3] > 0)
"""


def test_a_clip_never_shows_steps_after_its_re_simulation_left_the_episode(run_eval, write_policy):
    """Filmed alone, the policy balances where its episode gave up: the re-simulation stops at the first action
    that differs (step 150), and the failure at about step 158 is not filmed, since the frames would show another
    episode. The steps it took are counted; the video analyst never sees a clip of what did not happen."""
    policy = write_policy(TWO_FACED.format(refuse_later_starts="False", give_up="True"), "two_faced.py")
    result = run_eval(policy, "CartPole-v1", seeds=[0, 1], workers=1, lockstep=2, video=True, clip_episodes=1,
                      clip_steps=30)
    assert [e.status for e in result.episodes] == ["ok", "ok"] and all(e.length > 150 for e in result.episodes)
    assert all(e.events and e.events[-1].kind == "pole_fell" for e in result.episodes)
    assert result.clips == []
    assert result.clip_env_steps == 150  # steps 0-149 re-simulated; the 151st action differed and was not taken


def test_a_clip_whose_start_fails_counts_no_steps_twice(run_eval, write_policy):
    """The second re-simulation's policy refuses to start (it has acted in this process before): the steps counted for
    it are its own (none), not the first re-simulation's again, which were counted once already."""
    policy = write_policy(TWO_FACED.format(refuse_later_starts="True", give_up="False"), "second_start.py")
    result = run_eval(policy, "CartPole-v1", seeds=[0, 1], workers=1, lockstep=2, video=True, clip_episodes=2,
                      clip_steps=30)
    assert [e.status for e in result.episodes] == ["ok", "ok"]
    first = min(result.episodes, key=lambda e: (not e.events, e.return_))  # the one filmed first
    assert len(result.clips) == 1 and result.clips[0].seed == first.seed
    assert result.clip_env_steps == first.length  # re-simulated to its last step, once
    assert result.env_steps == sum(e.env_steps for e in result.episodes) + result.clip_env_steps


@pytest.mark.parametrize("task,kind", [("ALE/Breakout-v5", "life lost"), ("Hopper-v5", "robot became unhealthy")])
def test_failure_clip_is_written_and_playable(run_eval, tmp_path, task, kind):
    result = run_eval(RANDOM_POLICY, task, episodes=2, video=True, clip_episodes=1, clip_events=1, clip_steps=20)
    assert len(result.clips) == 1
    clip = result.clips[0]
    assert clip.replay_diverged_at is None  # the re-simulation reproduced the episode exactly
    assert kind in clip.label  # the label carries the failure event's description
    # The re-simulation up to the clipped step is env steps too, counted apart and in the total.
    assert clip.step < result.clip_env_steps <= clip.step + 1
    assert result.env_steps == sum(e.env_steps for e in result.episodes) + result.clip_env_steps
    reader = imageio_ffmpeg.read_frames(clip.mp4)
    meta = next(reader)
    count = sum(1 for _ in reader)
    env = get_task(task).make_env(render_mode="rgb_array")
    env.reset(seed=0)
    height, width = env.render().shape[:2]
    env.close()
    assert meta["codec"].startswith("h264")  # plays in a browser
    assert tuple(meta["size"]) == (width + width % 2, height + height % 2)  # no rescale to a macro block
    assert count == clip.frames and 2 <= count <= 20
    sheet = cv2.imread(clip.png)
    assert sheet is not None and sheet.shape[0] > 50


def test_odd_diagnostics_are_recorded_not_fatal(run_eval, write_policy):
    policy = write_policy('''
        import numpy as np

        class Policy:
            def reset(self, seed):
                self.shared = {}

            def act(self, obs, info):
                self.shared["mode"] = ["a", "list"]       # unhashable mode
                self.shared["angle"] = np.float32(obs[2])  # numpy scalar
                self.diagnostics = self.shared             # the same dict, mutated every step
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        ''')
    episode = run_eval(policy, "CartPole-v1", episodes=1, trace_window=3).episodes[0]
    assert episode.status == "ok"
    assert episode.trace.mode_counts == {"['a', 'list']": 500}
    steps = episode.trace.windows[-1].steps
    assert [round(s["diag"]["angle"], 5) for s in steps] == [round(s["obs"][2], 5) for s in steps]


def test_a_stop_that_lands_while_a_worker_pair_starts_kills_that_pair_at_once(tmp_path):
    """Ctrl-C landing while a pair started, before the scheduler had listed it, once found nothing to kill: the
    pair took its episode and the stop waited for it (5 s on a slow policy, past 20 s on a loaded machine)."""
    import time

    from envs.scheduling import Schedule, Scheduler
    from envs.worker_pair import WorkerProcess

    limits = Limits(episode_timeout_s=60, episode_cpu_s=60, memory_mb=1024)
    started: list[WorkerProcess] = []

    def start_worker(cpu: int) -> WorkerProcess:
        worker = WorkerProcess(limits, tmp_path, None, cpu)
        started.append(worker)
        scheduler.interrupt()  # the stop lands now: the pair exists, and the scheduler has not listed it yet
        return worker

    def job(seed: int, slot: int) -> dict:
        raise AssertionError(f"seed {seed} was sent to a pair after the stop")

    plan = Schedule(seeds=[0, 1], workers=1, width=1, episode_timeout_s=60, episode_cpu_s=60,
                    deadline=time.perf_counter() + 600, eval_timeout_s=600, job=job, start_worker=start_worker)
    scheduler = Scheduler(plan)
    assert scheduler.run() == {}
    [worker] = started
    assert worker.env_proc.returncode is not None and worker.env_proc.returncode < 0  # killed, not closed


def test_a_groups_progress_is_the_sum_of_its_slots_counts_read_at_once(tmp_path):
    """The scheduler looks at a group's progress (``steps_in``, one read of the pair's step file) after every
    result: it must say what reading each slot's count (``steps_taken``) says, with a slot not yet taken as 0,
    or a group still stepping would look stalled and be cut."""
    import os
    import sys

    from envs.wire import MAX_SLOTS
    from envs.worker_pair import NOT_STARTED, WorkerProcess

    worker = WorkerProcess(Limits(episode_timeout_s=60, episode_cpu_s=60, memory_mb=1024), tmp_path, None, 0)
    try:
        counts = {0: 12, 5: 3_000_000_000, 17: NOT_STARTED, MAX_SLOTS - 1: 7}  # as the env process writes them
        for slot, count in counts.items():
            os.pwrite(worker.step_file.fd, count.to_bytes(8, sys.byteorder, signed=True), 8 * slot)
        assert [worker.steps_taken(slot) for slot in counts] == [12, 3_000_000_000, 0, 7]
        assert worker.steps_in(counts) == 3_000_000_019
        assert worker.steps_in([5, 2]) == 3_000_000_000  # slot 2: never written, 0
        assert worker.steps_in([]) == 0
    finally:
        worker.close()


PAIR_COUNTING_POLICY = '''
    import time


    def setup():
        return {}  # counted once per worker pair (EvalResult.setup_runs)


    class Policy:
        def __init__(self, setup):
            pass

        def reset(self, seed):
            pass

        def act(self, obs, info):
            time.sleep(SLEEP)
            return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
'''


def test_lockstep_groups_are_as_even_as_the_rounds_they_need_allow():
    import time

    from envs.scheduling import Schedule, Scheduler

    def width(seeds: int, workers: int, asked: int) -> int:
        plan = Schedule(seeds=list(range(seeds)), workers=workers, width=asked, episode_timeout_s=60,
                        episode_cpu_s=60, deadline=time.perf_counter() + 600, eval_timeout_s=600,
                        job=lambda seed, slot: {}, start_worker=lambda cpu: None)
        return Scheduler(plan).width

    # 100 episodes of equal length on two pairs: 25 + 25 on each, not 32 + 32 on one and 32 + 4 on the other.
    assert width(100, 2, 32) == 25 and width(100, 1, 32) == 25  # 4 rounds either way
    assert width(600, 2, 32) == 30 and width(64, 2, 32) == 32 and width(6, 1, 4) == 3 and width(3, 2, 32) == 2


def test_only_short_evaluations_stagger_their_pairs_by_default():
    from envs.scheduling import STAGGER_S, default_stagger

    # (seeds, the evened lockstep width, workers): a run's 20 CartPole episodes (width 10 on 2 workers: one group a
    # pair), a test's few episodes and 7 in groups of 2 (three full groups, not four) wait; the benchmark's 600
    # (20 groups of 30), 24 Breakout episodes of width 4 (6) and 100 HalfCheetah episodes (4 groups of 25: two a
    # pair) start every pair at once, as does one worker.
    assert [default_stagger(*case) for case in [(20, 10, 2), (6, 3, 2), (3, 1, 2), (12, 2, 4), (7, 2, 2)]] \
        == [STAGGER_S] * 5
    assert [default_stagger(*case) for case in [(600, 30, 2), (24, 4, 2), (100, 25, 2), (4, 1, 2), (50, 32, 1)]] \
        == [0.0] * 5


def test_a_second_pair_starts_only_if_seeds_still_wait_once_episodes_have_stepped_a_while(run_eval, write_policy):
    """A pair's start-up costs more CPU than a small evaluation's episodes on a fast simulator, so pairs after the
    first wait ``stagger_s`` after the first episode is taken, and start only if seeds are still waiting then."""
    fast = write_policy(PAIR_COUNTING_POLICY.replace("SLEEP", "0"), name="fast.py")
    # No later pair can start before 600 s; one pair finishes the six episodes long before, and nothing waits
    # out the 600 s once no seed is left.
    alone = run_eval(fast, "CartPole-v1", episodes=6, workers=2, stagger_s=600)
    assert alone.status == "complete" and alone.setup_runs == 1
    # Episodes of two seconds at least (40 steps of 50 ms, two at a time): seeds are still waiting after 0.2 s.
    slow = write_policy(PAIR_COUNTING_POLICY.replace("SLEEP", "0.05"), name="slow.py")
    both = run_eval(slow, "CartPole-v1", episodes=4, workers=2, lockstep=2, max_steps=40, stagger_s=0.2)
    assert both.status == "complete" and both.setup_runs == 2
    # Lone episodes of one 20 ms step end within one look at whether they were taken (every 50 ms): an episode
    # that ends was under way, so with a hundred seeds waiting the second pair starts all the same.
    brief = write_policy(PAIR_COUNTING_POLICY.replace("SLEEP", "0.02"), name="brief.py")
    lone = run_eval(brief, "CartPole-v1", split="custom", seeds=list(range(100, 200)), workers=2, lockstep=1,
                    max_steps=1, stagger_s=0.2)
    assert lone.status == "complete" and lone.setup_runs == 2
    # A set-up of 5 s: no episode is under way before it ends, so the second pair starts 3 s in (STAGGER_CAP_S)
    # rather than after the first pair's set-up, when that pair would take the last seed itself.
    slow_setup = write_policy(PAIR_COUNTING_POLICY.replace("return {}", "time.sleep(5)\n        return {}")
                              .replace("SLEEP", "0"), name="slow_setup.py")
    capped = run_eval(slow_setup, "CartPole-v1", episodes=2, workers=2, lockstep=1, stagger_s=0.1)
    assert capped.status == "complete" and capped.setup_runs == 2
    at_once = run_eval(fast, "CartPole-v1", episodes=6, workers=2)  # run_eval's default: stagger_s=0
    assert at_once.setup_runs == 2
    assert [(e.return_, e.length) for e in alone.episodes] == [(e.return_, e.length) for e in at_once.episodes]


def test_the_env_process_runs_without_asserts_and_the_policy_with_them(run_eval, write_policy):
    """Env processes run under -O (envs/forkserver.py's ENV_PROCESSES), so none of heurist's code there may check
    anything with assert: it reads envs/ and common/ for one. The policy's own asserts still hold: its process is
    not the env process, and a policy that asserts is scored as it would be anywhere."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    asserting = [f"{path.relative_to(root)}:{node.lineno}" for folder in ("envs", "common")
                 for path in sorted((root / folder).rglob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Assert)]
    assert asserting == [], f"asserts in code the env process runs under -O: {asserting}"

    policy = write_policy('''
        class Policy:
            def reset(self, seed):
                self.t = 0

            def act(self, obs, info):
                self.t += 1
                assert self.t < 4, "the policy's own check"
                return 0
        ''')
    episode = run_eval(policy, "CartPole-v1", episodes=1).episodes[0]
    assert episode.status == "policy_error" and "AssertionError: the policy's own check" in episode.error
    assert episode.length == 3


STANDS_STILL = """
class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        return 0
"""


def test_two_failures_at_one_step_each_get_their_own_clip(run_eval, write_policy):
    """A stall and a fall on one step: both clips were named seed0-step49, the second written over the first, so
    the stall's clip showed the fall's label."""
    result = run_eval(write_policy(STANDS_STILL, "still.py"), "tests.stall_then_fall:TASK", seeds=[0], video=True,
                      clip_episodes=1, clip_steps=10)
    assert sorted(e.kind for e in result.episodes[0].events) == ["fell", "stall"]
    assert len(result.clips) == 2 and len({c.mp4 for c in result.clips}) == 2 and not result.clip_errors
    assert all(c.step == 49 for c in result.clips)
    labels = sorted(c.label.split(": ", 1)[-1] for c in result.clips)
    assert labels[0].startswith("fell") and labels[1].startswith("stalled from step 0")


HANGS_WHEN_FILMED = """
import builtins
import time

STARTS = builtins.__dict__.setdefault("heurist_test_starts", [])  # process-wide, as TWO_FACED's


class Policy:
    def reset(self, seed):
        STARTS.append(seed)
        self.t = 0

    def act(self, obs, info):
        self.t += 1
        if len(STARTS) == 1 and self.t > 5:
            time.sleep(3600)  # alone in its process: the clip's re-simulation (its episodes ran two in lockstep)
        return 0
"""


def test_clips_are_made_within_the_evaluations_wall_clock_limit_and_one_not_made_says_why(run_eval, write_policy):
    """The evaluation's wall-clock limit bounds the whole evaluation: a clip whose re-simulation hangs was given
    twice the episode's limit and 30 s more, past it (37 minutes on deterministic Breakout), and a clip that could
    not be made said nothing."""
    policy = write_policy(HANGS_WHEN_FILMED, "hangs_filmed.py")
    limits = Limits(episode_timeout_s=60, episode_cpu_s=60, memory_mb=2048)
    result = run_eval(policy, "CartPole-v1", seeds=[0, 1], workers=1, lockstep=2, video=True, clip_episodes=1,
                      eval_timeout_s=15, limits=limits)
    assert [e.status for e in result.episodes] == ["ok", "ok"]
    assert result.clips == [] and len(result.clip_errors) == 1 and "not filmed" in result.clip_errors[0]
    assert result.wall_s < 60  # within the evaluation's 15 s, not the clip's 150 s (margin for a slow machine)


def test_a_clip_write_is_not_stopped_by_a_dead_writers_leftover_nor_by_another_write_and_cleans_up(tmp_path,
                                                                                                  monkeypatch):
    """Scenario films go to one folder under one name per scenario and policy: the temp file of a write a kill cut
    short stopped every later film of it (FileExistsError), and two loops filming it at once failed one of them.
    A write that fails removes its temp file; an mp4 that does not read back whole is not put in place."""
    import threading

    import numpy as np

    from envs import clips

    shots = [(t, np.full((32, 48, 3), t * 10, np.uint8)) for t in range(12)]
    (tmp_path / ".seed4-fell.tmp.mp4").write_bytes(b"")  # the name a write used before
    (tmp_path / f".seed4-fell.{os.getpid()}-deadbeef.tmp.mp4").write_bytes(b"half")
    written, failed = [], []

    def film() -> None:
        try:
            written.append(clips.write_clip(shots, tmp_path, "seed4-fell", 15.0, "fell"))
        except Exception as exc:  # noqa: BLE001 - what the test reports
            failed.append(exc)

    threads = [threading.Thread(target=film) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed and len(written) == 2 and written[0]["frames"] == 12
    assert (tmp_path / "seed4-fell.mp4").stat().st_size > 0 and (tmp_path / "seed4-fell.png").is_file()
    leftovers = {p.name for p in tmp_path.iterdir() if ".tmp" in p.name}
    assert leftovers == {".seed4-fell.tmp.mp4", f".seed4-fell.{os.getpid()}-deadbeef.tmp.mp4"}  # only the planted

    monkeypatch.setattr(clips, "_frames_in", lambda path: 5)  # as a full disk leaves it: fewer frames than written
    with pytest.raises(OSError, match="reads back with 5 of its 12 frames"):
        clips.write_clip(shots, tmp_path, "seed5-fell", 15.0, "fell")
    assert not (tmp_path / "seed5-fell.mp4").exists()
    assert {p.name for p in tmp_path.iterdir() if ".tmp" in p.name} == leftovers
