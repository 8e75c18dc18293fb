"""What a policy's action must be for its task, checked in the env process before the env steps with it.

``action_coercer`` makes one fast validator per action space (type, shape, bounds, finiteness),
since it runs on every step; ``plain_actions`` writes actions as JSON for an episode's trace.
"""

from __future__ import annotations

import numpy as np

from envs.wire import describe


class InvalidAction(Exception):
    pass


def plain_actions(actions: list) -> list:
    """Actions as JSON: ints stay ints, vectors are rounded to 4 decimals (once, vectorised, not per step)."""
    if not actions:
        return []
    if isinstance(actions[0], int):
        return actions
    return np.round(np.asarray(actions, dtype=np.float64), 4).tolist()


def action_coercer(space):
    """A fast validator for one action space: returns the action the env gets, or raises InvalidAction and
    nothing else. The action is the policy's, so whatever checking it raises is that episode's invalid action:
    an exception of another kind would reach the code that runs every episode in flight (``envs.lockstep``), and
    end the episodes beside it too."""
    check = _checker(space)

    def coerce(action):
        try:
            return check(action)
        except InvalidAction:
            raise
        except Exception as exc:
            raise InvalidAction(f"act() returned {_named(action)}, which cannot be checked "
                                f"({type(exc).__name__}: {str(exc)[:200]})") from None

    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):  # the common case (every Atari step) first, with no call beyond this one
        lo, hi = int(space.start), int(space.start + space.n)

        def coerce_in_range(action):
            if action.__class__ is int and lo <= action < hi:  # comparing two ints raises nothing
                return action
            return coerce(action)

        return coerce_in_range
    return coerce


def _named(action) -> str:
    try:
        return describe(action)
    except Exception:  # its text cannot be made (an int past Python's digit limit): its type alone
        return f"a {type(action).__name__}"


def _checker(space):
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        lo, hi = int(space.start), int(space.start + space.n)

        def coerce_discrete(action):
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
                if isinstance(action, np.ndarray) and action.ndim == 0 and action.dtype.kind in "iu":
                    action = int(action)
                else:
                    raise InvalidAction(f"act() returned {describe(action)}; this task needs an int in [{lo}, {hi})")
            if not lo <= action < hi:
                raise InvalidAction(f"act() returned {int(action)}, outside the action range [{lo}, {hi})")
            return int(action)

        return coerce_discrete

    if isinstance(space, spaces.Box):
        low, high, shape = space.low.astype(np.float64), space.high.astype(np.float64), space.shape
        uniform = bool((low == low.flat[0]).all() and (high == high.flat[0]).all())
        low_min, high_max = float(low.min()), float(high.max())
        # A few numbers (a MuJoCo robot's torques) are checked as Python floats: two numpy reductions cost 3.7 us per
        # HalfCheetah action, comparing six floats half that. The same comparisons either way, NaN failing each of them.
        few = low.size <= 32
        bounds = list(zip(low.ravel().tolist(), high.ravel().tolist())) if few and not uniform else []

        def coerce_box(action):
            try:
                arr = np.asarray(action, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float64's range
                raise InvalidAction(f"act() returned {_named(action)}; "
                                    f"this task needs a float array of shape {shape}") from None
            if arr.shape != shape:
                raise InvalidAction(f"act() returned shape {arr.shape}; this task needs shape {shape}")
            # One range test on the hot path; NaN fails every comparison, so it lands below too.
            if few:
                values = arr.ravel().tolist()
                inside = all(low_min <= v <= high_max for v in values) if uniform else \
                    all(lo <= v <= hi for v, (lo, hi) in zip(values, bounds))
            elif uniform:
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
