"""The task registry: required tasks, protocols, seed splits, HNS, plugins that fail loudly."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from pydantic import ValidationError

from common.errors import TaskError
from envs.atari_scores import ATARI57_SCORES
from envs.tasks import FailureRules, SeedSplits, TaskSpec, build_registry, get_task, registry

REQUIRED = ["CartPole-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Acrobot-v1", "Pendulum-v1",
            "LunarLander-v3", "BipedalWalker-v3", "HalfCheetah-v5", "Ant-v5", "Hopper-v5", "Walker2d-v5"]


def test_required_tasks_are_registered_with_fixed_disjoint_splits():
    for task_id in REQUIRED:
        spec = get_task(task_id)
        splits = [set(spec.seeds.seeds(s)) for s in ("dev", "holdout", "audit")]
        assert spec.seeds.dev == tuple(range(20))
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])


def test_every_ale_game_in_pixels_and_ram():
    atari = [s for s in registry().all() if s.family == "atari"]
    games = {s.gym_id for s in atari}
    assert len(games) == 104
    assert len(atari) == 2 * len(games)
    assert {s.obs_mode for s in atari} == {"pixels", "ram"}
    assert get_task("ALE/Breakout-ram-v5").make_kwargs == {"obs_type": "ram"}


def test_hns_covers_all_57_games_with_published_scores():
    assert len(ATARI57_SCORES) == 57
    with_hns = {s.gym_id for s in registry().all() if s.family == "atari" and s.human_score is not None}
    assert len(with_hns) == 57
    breakout = get_task("ALE/Breakout-v5")
    assert breakout.normalise(1.7) == pytest.approx(0.0)
    assert breakout.normalise(30.5) == pytest.approx(1.0)
    assert get_task("CartPole-v1").normalise(500) is None


@pytest.mark.parametrize("protocol,launched", [("deterministic", True), ("deterministic-no-fire", False)])
def test_the_deterministic_protocol_resets_as_envpool_did_so_the_ball_is_already_launched(protocol, launched):
    """EnvPool (use_fire_reset, noop_max=1) pressed FIRE once at reset: a policy that never fires still sees the
    ball in play and loses a life; reset as ALE does, the ball never leaves. The FIRE frame is the reset's, not a
    step: the step budget and the return count from after it."""
    env = get_task("ALE/Breakout-ram-v5").make_env(protocol, lean=True)
    try:
        obs, info = env.reset(seed=0)
        assert info["episode_frame_number"] == (1 if launched else 0)
        ball = set()
        for _ in range(300):
            obs, reward, terminated, truncated, info = env.step(0)  # NOOP, never FIRE
            ball.add((int(obs[99]), int(obs[101])))  # the ball's x and y in Breakout's RAM
        assert (len(ball) > 10, info["lives"] < 5) == (launched, launched)
        assert info["episode_frame_number"] == 300 + launched  # 300 steps after the reset's frame
    finally:
        env.close()
    results = [e.settings() for e in get_task("ALE/Breakout-v5").protocols if e.name == protocol]
    assert results[0]["fire_reset"] is launched and results[0]["noop_max"] == int(launched)


def test_box2d_tasks_get_a_fresh_env_per_episode_and_only_atari_may_act_at_reset():
    from envs.tasks import FailureRules, Protocol, TaskSpec

    rules = FailureRules(termination="failure", termination_kind="crash", termination_text="crashed")
    assert [get_task(t).reuse_env for t in ("LunarLander-v3", "BipedalWalker-v3", "CartPole-v1")] == [
        False, False, True]
    mine = TaskSpec(id="my/Car-v0", gym_id="CarRacing-v3", family="box2d", description="d", failure_rules=rules)
    assert mine.reuse_env is False  # a user's Box2D task too, unless it says otherwise
    with pytest.raises(ValueError, match="only atari tasks may set them"):
        TaskSpec(id="my/Pole-v0", gym_id="CartPole-v1", family="custom", description="d", failure_rules=rules,
                 protocols=(Protocol(name="standard", description="d", fire_reset=True),))


def test_atari_protocols_are_named_and_differ_as_the_anchor_says():
    spec = get_task("ALE/Breakout-v5")
    standard, deterministic = spec.protocol("standard"), spec.protocol("deterministic")
    assert spec.default_protocol == "standard"
    assert standard.make_kwargs["frameskip"] == 4 and standard.make_kwargs["repeat_action_probability"] == 0.25
    assert deterministic.make_kwargs["frameskip"] == 1 and deterministic.make_kwargs["repeat_action_probability"] == 0.0
    assert deterministic.max_episode_steps == 108_000
    env = spec.make_env("deterministic")
    try:
        assert env.spec.max_episode_steps == 108_000
        assert env.unwrapped._frameskip == 1
        _, info = env.reset(seed=0)
        assert info["lives"] == 5  # full game: lives are counted, an episode is not one life
    finally:
        env.close()
    with pytest.raises(TaskError, match="no protocol 'sticky'"):
        spec.protocol("sticky")


@pytest.mark.parametrize("task_id", REQUIRED + ["ALE/Pong-v5", "ALE/Pong-ram-v5"])
def test_each_task_builds_resets_and_steps(task_id):
    env = get_task(task_id).make_env()
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        env.action_space.seed(0)
        env.step(env.action_space.sample())
    finally:
        env.close()


def test_overlapping_splits_are_rejected():
    with pytest.raises(ValidationError, match="both"):
        SeedSplits(dev=(1, 2), holdout=(2, 3), audit=(4,))


def test_unseen_seeds_are_in_no_split_the_same_for_the_same_key_and_purpose_and_differ_otherwise():
    splits = SeedSplits()
    seeds = splits.unseen("secret", "simplify after iteration 3", 30)
    assert len(set(seeds)) == 30 and seeds == splits.unseen("secret", "simplify after iteration 3", 30)
    assert seeds[:10] == splits.unseen("secret", "simplify after iteration 3", 10)
    assert all(10**6 <= s < 2**31 - 1 for s in seeds)
    assert not set(seeds) & set(splits.unseen("secret", "simplify after iteration 4", 30))
    assert not set(seeds) & set(splits.unseen("another secret", "simplify after iteration 3", 30))
    # A task whose own splits lie where unseen seeds are drawn keeps them to itself.
    crowded = SeedSplits(dev=tuple(seeds[:10]), holdout=tuple(seeds[10:20]), audit=tuple(seeds[20:]))
    assert not set(crowded.unseen("secret", "simplify after iteration 3", 30)) & set(seeds)


def test_unknown_task_names_the_problem_and_suggests():
    with pytest.raises(TaskError, match="unknown task 'CartPole'.*CartPole-v1"):
        get_task("CartPole")
    with pytest.raises(TaskError, match="heurist envs"):
        get_task("NoSuchThing-v0")


def test_spec_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="Extra inputs"):
        TaskSpec(id="x", gym_id="CartPole-v1", family="custom", description="x",
                 failure_rules=FailureRules(termination="failure"), colour="red")


PLUGIN = '''
from envs.tasks import FailureRules, TaskSpec
SPEC = TaskSpec(id="MyPole-v0", gym_id="CartPole-v1", family="custom", description="a user's task",
                target=100.0, failure_rules=FailureRules(termination="failure"))
NOT_A_SPEC = {"id": "nope"}
SAME_ID = TaskSpec(id="MyPole-v0", gym_id="CartPole-v1", family="custom", description="another task of that id",
                   failure_rules=FailureRules(termination="failure"))
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_heurist_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_heurist_plugin", None)


def test_module_attr_task_path(plugin_module):
    reg = build_registry()
    spec = reg.get("my_heurist_plugin:SPEC")
    assert spec.id == "MyPole-v0" and reg.source("MyPole-v0") == "my_heurist_plugin:SPEC"
    with pytest.raises(TaskError, match="not an envs.tasks.TaskSpec"):
        reg.get("my_heurist_plugin:NOT_A_SPEC")
    with pytest.raises(TaskError, match="cannot load task"):
        reg.get("my_heurist_plugin:MISSING")


def test_a_module_attr_task_asked_again_is_the_same_task(plugin_module):
    """Asked a second time in one process (a campaign checks each task several times as it plans), a module:attr
    task was "registered twice" and refused. It is the task loaded the first time; another path that gives the same
    id is still refused."""
    reg = build_registry()
    first = reg.get("my_heurist_plugin:SPEC")
    assert reg.get("my_heurist_plugin:SPEC") is first and reg.get("MyPole-v0") is first
    with pytest.raises(TaskError, match="registered twice"):
        reg.get("my_heurist_plugin:SAME_ID")


def _install_entry_point(root, value):
    dist = root / "my_heurist_plugin-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-heurist-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[heurist.tasks]\nmypole = {value}\n")


def test_entry_point_plugin_registers(plugin_module):
    _install_entry_point(plugin_module, "my_heurist_plugin:SPEC")
    reg = build_registry()
    assert reg.get("MyPole-v0").target == 100.0
    assert "entry point mypole" in reg.source("MyPole-v0")
    env = reg.get("MyPole-v0").make_env()
    assert env.reset(seed=1)[0].shape == (4,)
    env.close()


def test_misdeclared_entry_point_fails_loudly(plugin_module):
    _install_entry_point(plugin_module, "my_heurist_plugin:NOT_A_SPEC")
    with pytest.raises(TaskError, match="entry point heurist.tasks:mypole gave dict"):
        build_registry()


def test_misdeclared_entry_point_that_cannot_import(plugin_module):
    _install_entry_point(plugin_module, "no_such_module_anywhere:SPEC")
    with pytest.raises(TaskError, match="task plugin 'mypole'.*failed to load"):
        build_registry()


def test_random_scores_of_ale_envs_are_finite_under_both_obs_modes():
    for task_id in ("ALE/Breakout-v5", "ALE/Breakout-ram-v5"):
        env = get_task(task_id).make_env()
        obs, _ = env.reset(seed=3)
        assert obs.shape == ((210, 160, 3) if "ram" not in task_id else (128,))
        assert np.isfinite(obs).all()
        env.close()
