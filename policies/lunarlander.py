"""LunarLander-v3 starter: steer the angle toward the pad, hover down in proportion to the offset.

Adapted from the heuristic that ships with Gymnasium's lunar_lander.py (MIT licence),
rewritten with named, tunable gains. obs: x, y, vx, vy, angle, angular velocity, left
and right leg contact. Actions: 0 noop, 1 left engine, 2 main engine, 3 right engine.
Measured (heurist eval, dev split seeds 0..19, 20 episodes, protocol standard):
mean 263.88 ± 38.91 (min 180.04, max 319.98).
"""

from dataclasses import dataclass, field


def tunable(default, low, high, doc):
    """A scalar a search may tune within [low, high]."""
    return field(default=default, metadata={"low": low, "high": high, "doc": doc})


@dataclass
class Tunables:
    aim_offset: float = tunable(0.5, 0.0, 2.0, "target angle per unit of horizontal offset")
    aim_speed: float = tunable(1.0, 0.0, 3.0, "target angle per unit of horizontal speed")
    max_tilt: float = tunable(0.4, 0.05, 1.0, "largest target tilt (rad)")
    hover_slope: float = tunable(0.55, 0.0, 2.0, "target altitude per unit of horizontal offset")
    angle_gain: float = tunable(0.5, 0.0, 2.0, "gain on angle error")
    spin_damping: float = tunable(1.0, 0.0, 3.0, "gain on angular velocity")
    height_gain: float = tunable(0.5, 0.0, 2.0, "gain on altitude error")
    sink_damping: float = tunable(0.5, 0.0, 2.0, "gain on vertical speed")
    deadband: float = tunable(0.05, 0.0, 0.5, "errors below this fire no engine")


class Policy:
    def __init__(self):
        self.p = Tunables()

    def reset(self, seed):
        pass

    def act(self, obs, info):
        x, y, vx, vy, angle, spin, left_leg, right_leg = (float(v) for v in obs)
        p = self.p
        target_angle = max(-p.max_tilt, min(p.max_tilt, p.aim_offset * x + p.aim_speed * vx))
        target_height = p.hover_slope * abs(x)
        angle_todo = (target_angle - angle) * p.angle_gain - spin * p.spin_damping
        hover_todo = (target_height - y) * p.height_gain - vy * p.sink_damping
        mode = "fly"
        if left_leg or right_leg:  # touched down: only soften the landing
            angle_todo, hover_todo, mode = 0.0, -vy * p.sink_damping, "landed"
        if hover_todo > abs(angle_todo) and hover_todo > p.deadband:
            action = 2
        elif angle_todo < -p.deadband:
            action = 3
        elif angle_todo > p.deadband:
            action = 1
        else:
            action = 0
        self.diagnostics = {"mode": mode, "angle_todo": round(angle_todo, 4), "hover_todo": round(hover_todo, 4)}
        return action
