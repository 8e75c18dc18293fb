"""CartPole-v1 starter: push the cart toward where the pole is falling.

A linear rule over the four observations: push right when the pole leans or swings
right, corrected by the cart's own position and velocity so it does not drift off the
track. Measured (heurist eval, dev split seeds 0..19, 20 episodes, protocol standard):
mean 500.00 ± 0.00 (min 500.00, max 500.00).
"""

from dataclasses import dataclass, field


def tunable(default, low, high, doc):
    """A scalar a search may tune within [low, high]."""
    return field(default=default, metadata={"low": low, "high": high, "doc": doc})


@dataclass
class Tunables:
    angle_gain: float = tunable(1.0, 0.0, 5.0, "weight on the pole angle (rad)")
    spin_gain: float = tunable(0.5, 0.0, 5.0, "weight on the pole's angular velocity (rad/s)")
    position_gain: float = tunable(0.05, -1.0, 1.0, "weight on the cart position: pulls the cart back to centre")
    velocity_gain: float = tunable(0.1, -1.0, 1.0, "weight on the cart velocity: damps drift")


class Policy:
    def __init__(self):
        self.p = Tunables()

    def reset(self, seed):
        pass

    def act(self, obs, info):
        x, x_dot, theta, theta_dot = (float(v) for v in obs)
        p = self.p
        push = p.angle_gain * theta + p.spin_gain * theta_dot + p.position_gain * x + p.velocity_gain * x_dot
        action = 1 if push > 0 else 0
        self.diagnostics = {"mode": "balance", "push": round(push, 4), "reason": "pole falling right" if push > 0 else "pole falling left"}
        return action
