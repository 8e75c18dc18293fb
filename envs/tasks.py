"""Task specs and the task registry.

A task is a typed, registered spec in the spirit of Gymnasium's ``EnvSpec``: which
gymnasium id to build with which kwargs, the observation mode, named protocols, fixed
seed splits, the success target, score normalisation and the rules that turn an
episode trace into failure events. Registration is explicit and fails loudly: built-in
tasks live here, third-party tasks arrive through the ``heurist.tasks`` entry point
group or a ``module:attr`` path given where a task id is expected.
"""

from __future__ import annotations

import difflib
import hmac
import importlib
import os
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.errors import TaskError
from envs.atari_scores import ATARI57_SCORES

# Headless rendering defaults; a user's explicit setting wins.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

# "custom": seeds a user names (``heurist eval --seeds``), in no fixed split; refused where they overlap a
# protected split unless confirmed, and then counted as a use of it.
Split = Literal["dev", "holdout", "audit", "custom"]
PROTECTED_SPLITS: frozenset[str] = frozenset({"holdout", "audit"})
# Where unseen seeds are drawn (``SeedSplits.unseen``): far from the anchor's splits, and below 2**31, which every
# simulator here takes as a seed.
UNSEEN_SEEDS = (10**6, 2**31 - 1)
_SIMULATOR_MODELS: dict[tuple[str, str], Path | None] = {}  # TaskSpec.simulator_model, once per process


class _Strict(BaseModel):
    # A task's numbers are finite: JSON writes NaN as null (a task travels to its env process as JSON, and a NaN
    # stall threshold killed it), and a NaN target made `heurist eval --json` print what is not JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SeedSplits(_Strict):
    """Fixed seeds per split. The anchor's protocol: dev 0..19, holdout 1000..1049, audit 2000..2049."""

    # Gymnasium takes seeds from 0 to 2**64 - 1; a seed outside failed every episode, blamed on the policy.
    dev: tuple[Annotated[int, Field(ge=0, lt=2**64)], ...] = tuple(range(0, 20))
    holdout: tuple[Annotated[int, Field(ge=0, lt=2**64)], ...] = tuple(range(1000, 1050))
    audit: tuple[Annotated[int, Field(ge=0, lt=2**64)], ...] = tuple(range(2000, 2050))

    @model_validator(mode="after")
    def _never_overlap(self) -> SeedSplits:
        seen: dict[int, str] = {}
        for name in ("dev", "holdout", "audit"):
            seeds = getattr(self, name)
            if not seeds:
                raise ValueError(f"seed split {name!r} is empty")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seed split {name!r} repeats a seed")
            for seed in seeds:
                if seed in seen:
                    raise ValueError(f"seed {seed} is in both {seen[seed]!r} and {name!r} splits")
                seen[seed] = name
        return self

    def seeds(self, split: Split) -> tuple[int, ...]:
        return () if split == "custom" else getattr(self, split)

    def unseen(self, key: str, purpose: str, n: int) -> tuple[int, ...]:
        """``n`` seeds in no split, drawn for ``purpose`` from ``key``, a secret no model is shown: the same for the
        same key and purpose (a stage that runs twice evaluates the same seeds, from the cache), and not to be
        guessed without the key, so a policy fitted to the seeds a model was shown meets seeds it could not fit."""
        taken = {*self.dev, *self.holdout, *self.audit}
        seeds: list[int] = []
        counter = 0
        while len(seeds) < n:
            digest = hmac.digest(key.encode(), f"{purpose}:{counter}".encode(), "sha256")
            seed = UNSEEN_SEEDS[0] + int.from_bytes(digest[:8], "big") % (UNSEEN_SEEDS[1] - UNSEEN_SEEDS[0])
            if seed not in taken and seed not in seeds:
                seeds.append(seed)
            counter += 1
        return tuple(seeds)


class Protocol(_Strict):
    """A named way of running a task: kwargs layered over the task's own, an episode budget, and what happens at
    reset beyond the env's own (``envs.atari_reset``: EnvPool's fire-reset and no-ops, Atari only)."""

    name: str
    description: str
    make_kwargs: dict[str, Any] = Field(default_factory=dict)
    max_episode_steps: int | None = Field(None, ge=1)
    fire_reset: bool = False
    noop_max: int = Field(0, ge=0, description="EnvPool's: n in [0, noop_max) drawn, n + 1 no-ops at reset (one "
                                               "fewer where the game fires); 0: none.")

    def settings(self) -> dict[str, Any]:
        """Every setting, as ``heurist envs --protocols`` prints it and every result records it."""
        return {**self.make_kwargs, "max_episode_steps": self.max_episode_steps, "fire_reset": self.fire_reset,
                "noop_max": self.noop_max}


class StallRule(_Strict):
    """A stall: ``info[info_key]`` stays below ``below`` for ``steps`` consecutive steps."""

    info_key: str
    below: float
    steps: int = Field(ge=1)


class FailureRules(_Strict):
    """How an episode's trace becomes failure events (see envs/failures.py).

    termination: what ``terminated=True`` means for this task. "failure" (a pole fell, a
    robot fell), "success" (the goal was reached), "by_reward" (a failure when the last
    reward is at or below ``crash_reward``, as LunarLander's -100 crash), "neutral"
    (the game simply ended; Atari reports lost lives separately).
    """

    termination: Literal["failure", "success", "by_reward", "neutral"]
    termination_kind: str = "terminated"
    termination_text: str = "episode terminated"
    crash_reward: float | None = None
    lives: bool = False
    stall: StallRule | None = None


class TaskSpec(_Strict):
    """Everything needed to build, judge and describe one task."""

    id: str
    gym_id: str
    family: Literal["classic_control", "box2d", "atari", "mujoco", "custom"]
    description: str
    obs_mode: Literal["vector", "ram", "pixels"] = "vector"
    make_kwargs: dict[str, Any] = Field(default_factory=dict)
    protocols: tuple[Protocol, ...] = (Protocol(name="standard", description="gymnasium defaults"),)
    seeds: SeedSplits = SeedSplits()
    target: float | None = None
    # The most one episode can return, where the game has a ceiling (CartPole 500, Breakout 864,
    # Pong 21): a dev mean there leaves nothing to improve, so a run may stop.
    max_return: float | None = None
    random_score: float | None = None
    human_score: float | None = None
    failure_rules: FailureRules
    starter_policy: str | None = None
    # Imported before gymnasium.make so that the env id is registered (e.g. "ale_py").
    register_module: str | None = None
    # A variant of another task (``envs.variants``): registered to carry what a run learned to a related task, left
    # out of suites and of the starters' measured scores (the starter's docstring names the task it was made for).
    variant_of: str | None = None
    # Whether an env may run another seed after its episode ends. Box2D's world keeps state across resets
    # (BipedalWalker's returns changed with the episodes its env ran before), so those tasks get a fresh env per
    # episode: an episode's result must depend on its task, protocol, policy and seed alone.
    reuse_env: bool | None = None  # default: every family but box2d

    @model_validator(mode="after")
    def _reset_rules(self) -> TaskSpec:
        if self.family != "atari" and any(p.fire_reset or p.noop_max for p in self.protocols):
            raise ValueError(f"task {self.id}: fire_reset and noop_max are EnvPool's Atari reset; only atari tasks "
                             f"may set them")
        if self.random_score is not None and self.random_score == self.human_score:
            raise ValueError(f"task {self.id}: random_score and human_score are both {self.random_score:g}, so no "
                             f"score can be normalised between them; give the published scores, or neither")
        if self.reuse_env is None:
            object.__setattr__(self, "reuse_env", self.family != "box2d")  # frozen: set once, here
        return self

    @field_validator("protocols")
    @classmethod
    def _protocols_named_once(cls, protocols: tuple[Protocol, ...]) -> tuple[Protocol, ...]:
        names = [p.name for p in protocols]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"protocols must be non-empty with unique names, got {names}")
        return protocols

    @property
    def default_protocol(self) -> str:
        return self.protocols[0].name

    def protocol(self, name: str | None) -> Protocol:
        name = name or self.default_protocol
        for protocol in self.protocols:
            if protocol.name == name:
                return protocol
        known = ", ".join(p.name for p in self.protocols)
        raise TaskError(f"task {self.id} has no protocol {name!r}; choose one of: {known}")

    def normalise(self, score: float) -> float | None:
        """Human-normalised score where random and human scores are published, else None."""
        if self.random_score is None or self.human_score is None:
            return None
        return (score - self.random_score) / (self.human_score - self.random_score)

    def episode_step_cap(self, protocol: str | None = None) -> int | None:
        """The most steps one episode of this task can take under ``protocol`` (its own cap, else Gymnasium's
        time limit, else ALE's frame limit over its frameskip); None where nothing caps it."""
        chosen = self.protocol(protocol)
        if chosen.max_episode_steps is not None:
            return chosen.max_episode_steps
        import gymnasium as gym

        self._register()
        try:
            registered = gym.spec(self.gym_id)
        except gym.error.Error:
            return None
        if registered.max_episode_steps is not None:
            return registered.max_episode_steps
        kwargs = {**registered.kwargs, **self.make_kwargs, **chosen.make_kwargs}
        frames, skip = kwargs.get("max_num_frames_per_episode"), kwargs.get("frameskip", 1)
        if isinstance(frames, int) and frames > 0 and isinstance(skip, int) and skip > 0:
            return -(-frames // skip)
        return None

    def _register(self) -> None:
        """Import the module that registers this task's env id with Gymnasium, or say in one line what is missing."""
        if not self.register_module:
            return
        import gymnasium as gym

        try:
            module = importlib.import_module(self.register_module)
        except ImportError as exc:
            raise TaskError(f"task {self.id} needs the module {self.register_module}, which cannot be imported "
                            f"({exc}); install the package that provides it") from None
        gym.register_envs(module)

    def simulator_model(self, protocol: str | None = None) -> Path | None:
        """The file this task's simulator is built from (a Gymnasium MuJoCo env's XML), for a policy that plans with
        its own copy of the model; None where the task has none. Read from the env's class and kwargs, as Gymnasium
        resolves it, without making the env (MuJoCo would write its warnings' log into the current folder)."""
        key = (self.model_dump_json(), protocol or self.default_protocol)
        if key not in _SIMULATOR_MODELS:
            _SIMULATOR_MODELS[key] = self._find_simulator_model(protocol)
        return _SIMULATOR_MODELS[key]

    def _find_simulator_model(self, protocol: str | None) -> Path | None:
        if self.family not in ("mujoco", "custom"):
            return None
        import inspect

        import gymnasium as gym
        from gymnasium.envs.registration import load_env_creator

        self._register()
        try:
            registered = gym.spec(self.gym_id)
            creator = load_env_creator(registered.entry_point) if isinstance(registered.entry_point, str) \
                else registered.entry_point
            from gymnasium.envs.mujoco.mujoco_env import MujocoEnv, expand_model_path
        except Exception:  # not registered here, or no MuJoCo: the episodes say what is wrong
            return None
        if not (isinstance(creator, type) and issubclass(creator, MujocoEnv)):
            return None
        kwargs = {**registered.kwargs, **self.make_kwargs, **self.protocol(protocol).make_kwargs}
        default = inspect.signature(creator.__init__).parameters.get("xml_file")
        xml = kwargs.get("xml_file", default.default if default is not None else None)
        if not isinstance(xml, str):
            return None
        try:
            return Path(expand_model_path(xml)).resolve()
        except OSError:
            return None

    def make_env(self, protocol: str | None = None, render_mode: str | None = None, lean: bool = False):
        """Build the gymnasium environment for a protocol. Runs inside worker processes.

        ``lean`` leaves out the two wrappers that check how the env is called and change nothing it
        returns (Gymnasium's passive checker, which looks at the first step only, and the reset-order
        check, which the evaluator's episode loop makes true by construction): a step through each
        costs a few hundred nanoseconds, a tenth of a CartPole step."""
        import gymnasium as gym
        from gymnasium.wrappers import OrderEnforcing

        chosen = self.protocol(protocol)
        self._register()
        kwargs = {**self.make_kwargs, **chosen.make_kwargs}
        if chosen.max_episode_steps is not None:
            kwargs["max_episode_steps"] = chosen.max_episode_steps
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        if lean:
            kwargs["disable_env_checker"] = True
        env = gym.make(self.gym_id, **kwargs)
        if chosen.fire_reset or chosen.noop_max:
            from envs.atari_reset import EnvPoolReset

            env = EnvPoolReset(env, chosen.fire_reset, chosen.noop_max)
        if lean:
            outer, inner = None, env
            while isinstance(inner, gym.Wrapper) and not isinstance(inner, OrderEnforcing):
                outer, inner = inner, inner.env
            if isinstance(inner, OrderEnforcing):
                if outer is None:
                    env = inner.env
                else:
                    outer.env = inner.env
        return env


# --------------------------------------------------------------------------- built-ins

_SHORT_OF_TARGET = "truncated short of the target"


def _classic_and_box2d() -> list[TaskSpec]:
    timeout = FailureRules(termination="success")
    return [
        TaskSpec(
            id="CartPole-v1", gym_id="CartPole-v1", family="classic_control", target=475.0, max_return=500.0,
            description="Balance a pole on a cart; +1 per step, 500 steps max. obs: x, x_dot, theta, theta_dot.",
            failure_rules=FailureRules(termination="failure", termination_kind="pole_fell",
                                       termination_text="pole fell past 12 degrees or cart left the track"),
            starter_policy="cartpole.py",
        ),
        TaskSpec(
            id="CartPoleLongPole-v1", gym_id="heurist/CartPoleLongPole-v1", family="classic_control", target=475.0,
            max_return=500.0, register_module="envs.variants", variant_of="CartPole-v1",
            description="CartPole-v1 with a pole twice as long (half-length 1.0 m): it falls more slowly. +1 per "
                        "step, 500 steps max. obs: x, x_dot, theta, theta_dot.",
            failure_rules=FailureRules(termination="failure", termination_kind="pole_fell",
                                       termination_text="pole fell past 12 degrees or cart left the track"),
            starter_policy="cartpole.py",
        ),
        TaskSpec(
            id="MountainCar-v0", gym_id="MountainCar-v0", family="classic_control", target=-110.0,
            description="Drive an underpowered car up a hill; -1 per step, 200 steps max. obs: position, velocity.",
            failure_rules=timeout, starter_policy="mountaincar.py",
        ),
        TaskSpec(
            id="MountainCarContinuous-v0", gym_id="MountainCarContinuous-v0", family="classic_control",
            target=90.0, description="Continuous MountainCar: +100 at the goal minus 0.1*force^2 per step, 999 steps max.",
            failure_rules=timeout, starter_policy="mountaincar_continuous.py",
        ),
        TaskSpec(
            id="Acrobot-v1", gym_id="Acrobot-v1", family="classic_control", target=-100.0,
            description="Swing a two-link arm's tip above a line; -1 per step, 500 steps max. obs: cos/sin of both joints, their velocities.",
            failure_rules=timeout, starter_policy="acrobot.py",
        ),
        TaskSpec(
            id="Pendulum-v1", gym_id="Pendulum-v1", family="classic_control", target=-200.0,
            description="Swing up and hold a pendulum; cost theta^2+0.1*theta_dot^2+0.001*u^2, 200 steps. obs: cos, sin, theta_dot.",
            failure_rules=FailureRules(termination="neutral"), starter_policy="pendulum.py",
        ),
        TaskSpec(
            id="LunarLander-v3", gym_id="LunarLander-v3", family="box2d", target=200.0,
            description="Land between the flags; -100 for a crash, +100 for resting, fuel costs. 1000 steps max.",
            failure_rules=FailureRules(termination="by_reward", crash_reward=-100.0, termination_kind="crash",
                                       termination_text="lander crashed or flew off screen"),
            starter_policy="lunarlander.py",
        ),
        TaskSpec(
            id="BipedalWalker-v3", gym_id="BipedalWalker-v3", family="box2d", target=300.0,
            description="Walk a 2D biped to the end of rough terrain; -100 for falling, 1600 steps max.",
            failure_rules=FailureRules(termination="by_reward", crash_reward=-100.0, termination_kind="fall",
                                       termination_text="walker's hull touched the ground"),
        ),
    ]


def _mujoco() -> list[TaskSpec]:
    stall = StallRule(info_key="x_velocity", below=0.1, steps=50)
    fall = FailureRules(termination="failure", termination_kind="fall",
                        termination_text="robot became unhealthy (fell or flipped)", stall=stall)
    return [
        TaskSpec(id="HalfCheetah-v5", gym_id="HalfCheetah-v5", family="mujoco", target=2000.0,
                 description="Run a planar cheetah forward; reward forward velocity minus 0.1*|a|^2, 1000 steps.",
                 failure_rules=FailureRules(termination="neutral", stall=stall),
                 starter_policy="halfcheetah.py"),
        TaskSpec(id="Ant-v5", gym_id="Ant-v5", family="mujoco", target=1000.0,
                 description="Walk a quadruped forward; healthy reward 1/step plus forward velocity minus costs, 1000 steps.",
                 failure_rules=fall, starter_policy="ant.py"),
        TaskSpec(id="Hopper-v5", gym_id="Hopper-v5", family="mujoco", target=3000.0,
                 description="Hop a one-legged robot forward without falling; 1000 steps.", failure_rules=fall),
        TaskSpec(id="Walker2d-v5", gym_id="Walker2d-v5", family="mujoco", target=3000.0,
                 description="Walk a planar biped forward without falling; 1000 steps.", failure_rules=fall),
    ]


ATARI_PROTOCOLS = (
    Protocol(name="standard", description="ALE v5: frameskip 4, sticky actions 0.25, 108,000 frames max",
             make_kwargs={"frameskip": 4, "repeat_action_probability": 0.25, "max_num_frames_per_episode": 108_000}),
    # The original's (EnvPool: frame_skip 1, repeat_action_probability 0, use_fire_reset, noop_max 1, no episodic
    # life, no reward clipping, max_episode_steps 108,000). The reset's frames are not steps, and EnvPool sets no
    # frame limit of ALE's: ALE's is off (0) and the step budget is Gymnasium's TimeLimit, as EnvPool's is its own.
    Protocol(name="deterministic",
             description="the anchor's Breakout-864 protocol, as EnvPool ran it: frameskip 1, no sticky actions, "
                         "FIRE once at reset where the game has FIRE (else one no-op), full game (no episodic "
                         "life), no reward clipping, 108,000 steps max",
             make_kwargs={"frameskip": 1, "repeat_action_probability": 0.0, "max_num_frames_per_episode": 0},
             max_episode_steps=108_000, fire_reset=True, noop_max=1),
    Protocol(name="deterministic-no-fire",
             description="the deterministic protocol without EnvPool's reset: frameskip 1, no sticky actions, "
                         "full game, 108,000 steps max, reset as ALE does (no FIRE, no no-op); what heurist "
                         "called deterministic before",
             make_kwargs={"frameskip": 1, "repeat_action_probability": 0.0, "max_num_frames_per_episode": 108_000},
             max_episode_steps=108_000),
)

_ATARI_STARTERS = {"Breakout": "breakout.py", "Pong": "pong.py"}


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return out


# Games with a ceiling: Breakout's two walls of bricks are worth 864, Pong ends at 21 points.
_ATARI_MAX_RETURN = {"Breakout": 864.0, "Pong": 21.0}


def _atari() -> list[TaskSpec]:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    games = sorted(k[len("ALE/"):-len("-v5")] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))
    rules = FailureRules(termination="neutral", lives=True, termination_kind="game_over",
                         termination_text="game over")
    specs = []
    for game in games:
        scores = ATARI57_SCORES.get(_snake(game))
        random_score, human_score = scores if scores else (None, None)
        for obs_mode, obs_type, suffix in (("pixels", "rgb", ""), ("ram", "ram", "-ram")):
            specs.append(TaskSpec(
                id=f"ALE/{game}{suffix}-v5", gym_id=f"ALE/{game}-v5", family="atari", obs_mode=obs_mode,
                description=f"Atari {game} ({obs_mode} observations)", make_kwargs={"obs_type": obs_type},
                protocols=ATARI_PROTOCOLS, random_score=random_score, human_score=human_score,
                failure_rules=rules, register_module="ale_py",
                starter_policy=_ATARI_STARTERS.get(game) if obs_mode == "pixels" else None,
                target=human_score, max_return=_ATARI_MAX_RETURN.get(game),
            ))
    return specs


# --------------------------------------------------------------------------- registry

class TaskRegistry:
    """Explicit registration; a duplicate id or a misdeclared plugin is an error, never a silent skip."""

    def __init__(self) -> None:
        self._specs: dict[str, TaskSpec] = {}
        self._sources: dict[str, str] = {}
        self._paths: dict[str, str] = {}  # module:attr -> the id of the task it gave (it is loaded once)

    def register(self, spec: TaskSpec, source: str = "heurist") -> None:
        if not isinstance(spec, TaskSpec):
            raise TaskError(f"{source} registered {type(spec).__name__}, not a TaskSpec: build one with envs.tasks.TaskSpec(...)")
        if spec.id in self._specs:
            raise TaskError(f"task {spec.id} is registered twice ({self._sources[spec.id]} and {source}); rename one")
        self._specs[spec.id] = spec
        self._sources[spec.id] = source

    def get(self, task_id: str) -> TaskSpec:
        if task_id in self._specs:
            return self._specs[task_id]
        if task_id in self._paths:  # a module:attr asked again (a run reads it at start and at each resume)
            return self._specs[self._paths[task_id]]
        if ":" in task_id and "/" not in task_id:
            spec = _load_spec_path(task_id)
            self.register(spec, source=task_id)
            self._paths[task_id] = spec.id
            return spec
        by_case = {t.lower(): t for t in self._specs}
        close = [t for t in self._specs if task_id.lower() in t.lower()][:3]
        close += [by_case[t] for t in difflib.get_close_matches(task_id.lower(), by_case, n=3, cutoff=0.75)
                  if by_case[t] not in close]
        hint = f"did you mean {', '.join(close)}?" if close else "run `heurist envs` to list registered tasks"
        raise TaskError(f"unknown task {task_id!r}: {hint}")

    def source(self, task_id: str) -> str:
        return self._sources[task_id]

    def all(self) -> list[TaskSpec]:
        return list(self._specs.values())


def _as_specs(obj: Any, where: str) -> list[TaskSpec]:
    if callable(obj) and not isinstance(obj, TaskSpec):
        obj = obj()
    items = obj if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not isinstance(item, TaskSpec):
            raise TaskError(f"{where} gave {type(item).__name__}, not an envs.tasks.TaskSpec: declare your task with TaskSpec(...)")
    return list(items)


def _load_spec_path(path: str) -> TaskSpec:
    module_name, _, attr = path.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TaskError(f"cannot load task {path!r}: {exc}; give an importable module:attribute") from exc
    except Exception as exc:  # the module itself failed (a TaskSpec it declares refused, say): named, not hidden
        raise TaskError(f"cannot load task {path!r}: importing {module_name} raised {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:500]}; fix the module") from exc
    try:
        specs = _as_specs(obj, path)
    except TaskError:
        raise
    except Exception as exc:  # a task factory that raised
        raise TaskError(f"cannot load task {path!r}: calling {attr} raised {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:500]}; fix it") from exc
    if len(specs) != 1:
        raise TaskError(f"{path} gives {len(specs)} tasks; a module:attr task id must name exactly one")
    return specs[0]


def build_registry() -> TaskRegistry:
    """Built-in tasks plus every ``heurist.tasks`` entry point; ``registry()`` caches one."""
    reg = TaskRegistry()
    for spec in _classic_and_box2d() + _mujoco() + _atari():
        reg.register(spec)
    for ep in entry_points(group="heurist.tasks"):
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must be named, not hidden
            raise TaskError(f"task plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        for spec in _as_specs(loaded, f"entry point heurist.tasks:{ep.name}"):
            reg.register(spec, source=f"entry point {ep.name} ({ep.value})")
    return reg


@lru_cache(maxsize=1)
def registry() -> TaskRegistry:
    return build_registry()


def get_task(task_id: str) -> TaskSpec:
    return registry().get(task_id)
