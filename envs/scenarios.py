"""Failure scenarios: the simulator's full state a few steps before a recorded failure, saved, verified and replayed.

A regression test that replays a whole Breakout game to reach the moment it lost a life spends 100,000 frames
on a few hundred that matter. A scenario is that moment kept: the env's full state ``before`` steps ahead of a
failure event (ALE ``cloneState`` with its RNG; MuJoCo's integration state; classic control's state vector),
the env's random generator and time-limit count, the observations (and infos) the policy saw in the steps before
it, so a stateful policy can be warmed up to the same internal state, and the actions recorded from there to
the failure.

- ``record_scenario`` (in the trusted env process) re-runs the episode from its seed (the policy's actions again,
  checked against the recorded ones: an episode depends on its seed alone), checks that it fails as recorded,
  saves the state at the window's start with the failure detector's own (lives seen, a stall's run), and
  verifies it: a fresh env restored from the saved state and given the same actions must reproduce every
  observation, reward and ending, and the failure, or the scenario is discarded with the reason. A task whose
  simulator cannot be saved (Box2D's world) says so.
- ``run_scenario`` restores the state, warms a fresh policy up on the saved observations (its actions then
  are ignored), and runs the window with the policy's own actions, and as long again past the failure's step
  (a fix must carry the policy beyond that moment); what happened (return, length, failure events, whether
  the scenario's failure happened again) is the result. Its env steps are counted by the
  env process, as an episode's are.

Everything in a scenario is plain JSON (the ALE state as its own serialisation, base64), never a pickle: a
scenario file is data heurist reads.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.safe_text import printable
from envs.actions import plain_actions
from envs.failures import FailureDetector

MAX_WARMUP = 64  # observations kept before a scenario's start, at most
FILM_BEFORE, FILM_AFTER = 48, 16  # a filmed replay keeps the steps around the recorded failure, as a clip does
TRACE_OBS_NUMBERS = 64  # a recorded step keeps its observation up to this size (a state vector, not a frame)
MAX_WINDOW = 5_001  # steps from a scenario's start to its failure, at most (``scenarios.before`` is at most 5,000)


MAX_OBSERVATION_BYTES = 64 << 20  # one saved observation, unpacked (an Atari frame is 100 KiB)
STATE_KINDS = ("ale", "mujoco", "classic")
MAX_STATE_NUMBERS = 1 << 20  # MuJoCo's integration state of the largest task is thousands of numbers
MAX_ALE_STATE_CHARS = 4 << 20  # base64 of ALE's serialised state (a few KiB)


class SavedObservation(BaseModel):
    """One observation the policy saw, as exact bytes (zlib, base64) with its dtype and shape, and its info."""

    model_config = ConfigDict(extra="forbid")

    data: str
    dtype: str = Field(..., max_length=16)
    shape: list[Annotated[int, Field(ge=0)]] = Field(..., max_length=8)
    info: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded(self) -> SavedObservation:
        try:
            itemsize = np.dtype(self.dtype).itemsize
        except Exception:  # numpy raises TypeError, ValueError, even SyntaxError on odd dtype strings
            raise ValueError(f"an observation dtype numpy does not know: {self.dtype!r}") from None
        if int(np.prod(self.shape, dtype=np.float64)) * itemsize > MAX_OBSERVATION_BYTES:
            raise ValueError(f"an observation of shape {self.shape} is larger than heurist saves")
        return self

    @classmethod
    def of(cls, obs: Any, info: dict) -> SavedObservation:
        arr = np.ascontiguousarray(np.asarray(obs))
        return cls(data=base64.b64encode(zlib.compress(arr.tobytes(), 6)).decode(), dtype=arr.dtype.str,
                   shape=list(arr.shape), info=_plain_info(info))

    def array(self) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"a saved observation of dtype {dtype}")
        size = int(np.prod(self.shape)) * dtype.itemsize
        raw = zlib.decompressobj().decompress(base64.b64decode(self.data), size + 1)  # bounded: no zip bomb
        return np.frombuffer(raw[:size], dtype=dtype).reshape(self.shape).copy()


class Scenario(BaseModel):
    """A failure's moment, ready to replay (see the module's docstring)."""

    # Bounded, since a scenario may come from memory (a store shared between runs): its fields reach a prompt, a
    # file name, a test's source (its name, checked by envs.scenario_files) and the simulator's own restore.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")  # a diverged simulator's NaN kept

    name: str = Field(..., max_length=200)
    task: str = Field(..., max_length=1000)
    protocol: str = Field(..., max_length=200)
    seed: int
    event_kind: str = Field(..., min_length=1, max_length=200)  # a task's own kind: any printable line
    event_step: int = Field(..., ge=0)
    event_description: str
    start: int = Field(..., ge=0)  # the step the state was saved before; the window runs start..event_step
    state: dict[str, Any]
    detector: dict[str, Any] = Field(default_factory=dict)  # the failure detector's state at ``start`` (lives, stall)
    observation: SavedObservation  # what the policy acts on at ``start``
    warmup: list[SavedObservation] = Field(default_factory=list, max_length=MAX_WARMUP)  # seen just before
    actions: list[Any] = Field(..., min_length=1, max_length=MAX_WINDOW)  # recorded, start..event_step
    return_before: float  # the episode's return before ``start``
    trajectory_sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")  # of the recorded window, which the restore
    # reproduced when it was saved

    @field_validator("event_kind")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if printable(value) != value or "\n" in value or "\t" in value:
            raise ValueError("a failure kind with control characters in it")
        return value

    @field_validator("event_description")
    @classmethod
    def _shown(cls, value: str) -> str:
        return printable(value)[:500]  # shown in prompts and lists: printable, and bounded after escaping

    @model_validator(mode="after")
    def _state_known(self) -> Scenario:
        """Only a state heurist saves: one simulator's, with the env's generator and time-limit count."""
        kinds = [k for k in STATE_KINDS if k in self.state]
        unknown = set(self.state) - {*STATE_KINDS, "rng", "elapsed_steps", "steps_beyond_terminated"}
        if len(kinds) != 1 or unknown or "rng" not in self.state:
            raise ValueError(f"a scenario state with keys {sorted(self.state)[:8]}, not one heurist saves")
        value = self.state[kinds[0]]
        if kinds[0] == "ale" and not (isinstance(value, str) and len(value) <= MAX_ALE_STATE_CHARS):
            raise ValueError("an ALE state that is not base64 text of a bounded size")
        if kinds[0] != "ale":
            try:  # a custom env's state may be an array of any shape; numbers, and bounded
                numbers = np.asarray(value, dtype=np.float64) if isinstance(value, list) else None
            except (TypeError, ValueError):
                numbers = None
            if numbers is None or numbers.size > MAX_STATE_NUMBERS:
                raise ValueError(f"a {kinds[0]} state that is not a bounded array of numbers")
        if self.event_step < self.start or self.event_step - self.start + 1 != len(self.actions):
            raise ValueError("a scenario whose actions do not span its window")
        return self


def scenario_name(seed: int, kind: str, step: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in kind)[:40]
    return f"seed{seed}-{safe}-step{step}"


def _plain_info(info: dict) -> dict[str, Any]:
    """The info's plain scalars (lives, frame numbers): what a policy reads from it, JSON-safe."""
    out: dict[str, Any] = {}
    for key, value in (info or {}).items():
        if isinstance(value, (bool, int, float, str)) and isinstance(key, str):
            out[key] = value
        elif isinstance(value, np.generic):
            out[key] = value.item()
    return out


# --------------------------------------------------------------------------- saving and restoring the simulator


def _time_limit(env):
    from gymnasium.wrappers import TimeLimit

    inner = env
    while inner is not None:
        if isinstance(inner, TimeLimit):
            return inner
        inner = getattr(inner, "env", None)
    return None


def save_state(env) -> dict[str, Any] | None:
    """The env's full state as JSON, or None where its simulator cannot be saved (Box2D's world)."""
    u = env.unwrapped
    state: dict[str, Any] = {"rng": _jsonable_rng(u.np_random.bit_generator.state)}
    limit = _time_limit(env)
    if limit is not None:
        state["elapsed_steps"] = int(limit._elapsed_steps or 0)
    if hasattr(u, "ale"):
        state["ale"] = base64.b64encode(u.ale.cloneState(include_rng=True).serialize()).decode()
    elif hasattr(u, "data") and hasattr(u, "model") and hasattr(u, "set_state"):
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        full = np.empty(mujoco.mj_stateSize(u.model, spec))
        mujoco.mj_getState(u.model, u.data, full, spec)
        state["mujoco"] = full.tolist()
    elif isinstance(getattr(u, "state", None), (np.ndarray, list, tuple)) and not hasattr(u, "world"):
        state["classic"] = np.asarray(u.state, dtype=np.float64).tolist()
        if hasattr(u, "steps_beyond_terminated"):
            state["steps_beyond_terminated"] = u.steps_beyond_terminated
    else:
        return None
    return state


def restore_state(env, state: dict[str, Any]) -> None:
    """Put a freshly reset env in the saved state."""
    u = env.unwrapped
    u.np_random.bit_generator.state = _rng_state(state["rng"])
    limit = _time_limit(env)
    if limit is not None and "elapsed_steps" in state:
        limit._elapsed_steps = int(state["elapsed_steps"])
    if "ale" in state:
        import ale_py

        u.ale.restoreState(ale_py.ALEState(base64.b64decode(state["ale"])))
    elif "mujoco" in state:
        import mujoco

        mujoco.mj_setState(u.model, u.data, np.asarray(state["mujoco"], dtype=np.float64),
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(u.model, u.data)
    elif "classic" in state:
        u.state = np.asarray(state["classic"], dtype=np.float64)
        if "steps_beyond_terminated" in state:
            u.steps_beyond_terminated = state["steps_beyond_terminated"]
    else:
        raise ValueError("a scenario state of no kind heurist knows")


def _jsonable_rng(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable_rng(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rng_state(value: Any) -> Any:
    if isinstance(value, dict) and "__array__" in value:
        return np.asarray(value["__array__"], dtype=np.dtype(value["dtype"]))
    if isinstance(value, dict):
        return {k: _rng_state(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- recording and verifying


def _step_digest(obs: Any, reward: float, terminated: bool, truncated: bool) -> bytes:
    arr = np.ascontiguousarray(np.asarray(obs))
    return hashlib.sha256(arr.dtype.str.encode() + str(arr.shape).encode() + arr.tobytes()
                          + np.float64(reward).tobytes() + bytes([terminated, truncated])).digest()


def record_scenario(spec, protocol: str, seed: int, act, event_kind: str, event_step: int, event_description: str,
                    before: int, warmup: int, coerce, counter) -> Scenario | str:
    """The scenario of one failure event, verified; or why there is none.

    ``act(t, obs, info, feedback)`` gives the action of step ``t``: the policy's own, re-run (an episode depends on
    its seed alone, so it takes the recorded actions again; the caller checks that it does), or recorded actions
    where they are exact. ``coerce`` turns an action into what the env takes; ``counter(n)`` counts env steps.
    The replay from the seed must fail as recorded (the failure detector sees the same event at the same step), and
    a replay of the same actions from the saved state must reproduce every observation, reward and ending, and the
    failure, exactly."""
    start = max(0, event_step - before)
    if event_step - start + 1 > MAX_WINDOW:
        return f"a window of {event_step - start + 1} steps is over {MAX_WINDOW}"
    env = spec.make_env(protocol, lean=True)
    detector = FailureDetector(spec.failure_rules, spec.target)
    taken: list[Any] = []  # the window's actions, exactly as the env got them
    digests: list[bytes] = []  # one per window step: the observations themselves are not kept
    try:
        obs, info = env.reset(seed=seed)
        seen: list[tuple[Any, dict]] = []
        total, running, state, feedback = 0.0, 0.0, None, None
        start_obs = start_info = detector_state = None
        for t in range(event_step + 1):
            if t == start:
                state = save_state(env)
                if state is None:
                    return f"the {spec.family} simulator of {spec.id} cannot be saved; test the whole episode"
                start_obs, start_info, detector_state = obs, info, detector.state()
            elif t < start and warmup > 0:
                seen = [*seen[-(min(warmup, MAX_WARMUP) - 1):], (obs, info)] if min(warmup, MAX_WARMUP) > 1 \
                    else [(obs, info)]
            action = coerce(act(t, obs, info, feedback))
            obs, reward, terminated, truncated, info = env.step(action)
            counter(1)
            feedback = [float(reward), False, False]
            running += float(reward)
            detector.step(t, obs, float(reward), running, bool(terminated), bool(truncated), info)
            if t < start:
                total += float(reward)
            else:
                taken.append(action)
                digests.append(_step_digest(obs, float(reward), bool(terminated), bool(truncated)))
            if (terminated or truncated) and t < event_step:
                return f"the replayed episode ended at step {t}, before the event at {event_step}"
    finally:
        env.close()
    if not any(e.kind == event_kind and e.step == event_step for e in detector.events):
        return f"replayed from its seed, the episode did not fail with {event_kind} at step {event_step}"
    replay = spec.make_env(protocol, lean=True)
    again = FailureDetector(spec.failure_rules, spec.target)
    again.resume(detector_state)
    try:
        replay.reset(seed=seed)
        restore_state(replay, state)
        running = total
        for i, action in enumerate(taken):
            obs, reward, terminated, truncated, info = replay.step(action)
            counter(1)
            running += float(reward)
            again.step(start + i, obs, float(reward), running, bool(terminated), bool(truncated), info)
            if _step_digest(obs, float(reward), bool(terminated), bool(truncated)) != digests[i]:
                return f"restored from its saved state, the episode diverged at step {start + i}; not a scenario"
    finally:
        replay.close()
    if not any(e.kind == event_kind and e.step == event_step for e in again.events):
        return f"restored from its saved state, the replay does not show {event_kind} at step {event_step}"
    return Scenario(name=scenario_name(seed, event_kind, event_step), task=spec.id, protocol=protocol, seed=seed,
                    event_kind=event_kind, event_step=event_step, event_description=event_description[:300],
                    start=start, state=state, detector=detector_state,
                    observation=SavedObservation.of(start_obs, start_info),
                    warmup=[SavedObservation.of(o, i) for o, i in seen], actions=plain_actions(taken),
                    return_before=total, trajectory_sha256=hashlib.sha256(b"".join(digests)).hexdigest())


def run_scenario(spec, scenario: Scenario, policy_act, coerce, counter, steps: int | None = None,
                 record: bool = False, film: list | None = None) -> dict[str, Any]:
    """Replay the scenario's window with the policy's own actions (``policy_act(obs, info, feedback)``, a fresh
    policy already reset with the scenario's seed; ``feedback`` the last step's reward, terminated and truncated,
    for a policy's ``observe``, None at first): warm it up on the saved observations (observations only: their
    actions are not taken), then step. What happened; with ``record``, also each step (``trace``: its step
    number, action and reward, and the observation it was taken on where that is at most ``TRACE_OBS_NUMBERS``
    numbers), for the coder's scenario tool; with ``film`` (a list), the rendered frames of the steps around the
    recorded failure (``FILM_BEFORE`` up to it, ``FILM_AFTER`` past it) are appended to it as (step, frame)."""
    for saved in scenario.warmup:  # the policy's internal state as it was
        policy_act(saved.array(), dict(saved.info), None)
    env = spec.make_env(scenario.protocol, lean=True, render_mode="rgb_array" if film is not None else None)
    filmed = range(scenario.event_step - FILM_BEFORE + 1, scenario.event_step + FILM_AFTER + 1)
    detector = FailureDetector(spec.failure_rules, spec.target)
    detector.resume(scenario.detector)
    # Past the moment the recorded policy failed, by as long again: a fix must carry the policy beyond it.
    horizon = steps if steps is not None else 2 * len(scenario.actions)
    total, length, ending = scenario.return_before, 0, None
    trace: list[dict[str, Any]] = []
    try:
        env.reset(seed=scenario.seed)
        restore_state(env, scenario.state)
        obs, info = scenario.observation.array(), dict(scenario.observation.info)
        feedback = None
        for t in range(scenario.start, scenario.start + horizon):
            action = coerce(policy_act(obs, info, feedback))
            if record:
                seen = np.asarray(obs)
                small = seen.size <= TRACE_OBS_NUMBERS and seen.dtype.kind in "biuf"
                trace.append({"t": t, "action": plain_actions([action])[0], "obs": (
                    (seen.round(4) if seen.dtype.kind == "f" else seen).tolist() if small else None)})
            obs, reward, terminated, truncated, info = env.step(action)
            counter(1)  # first: a step taken is counted whatever fails after it
            if record:
                trace[-1]["reward"] = float(reward)
            if film is not None and t in filmed:
                film.append((t, env.render()))
            feedback = [float(reward), False, False]
            total += float(reward)
            length += 1
            detector.step(t, obs, float(reward), total, bool(terminated), bool(truncated), info)
            if terminated or truncated:
                ending = "terminated" if terminated else "truncated"
                break
    finally:
        env.close()
    events = [e.model_dump() for e in detector.events]
    result = {"scenario": scenario.name, "return": total - scenario.return_before, "length": length,
              "ending": ending, "events": events,
              "failed_again": any(e["kind"] == scenario.event_kind for e in events)}
    return {**result, "trace": trace} if record else result


__all__ = ["SavedObservation", "Scenario", "record_scenario", "restore_state", "run_scenario", "save_state",
           "scenario_name"]
