"""CartPole-v1, untuned: the starter's rule with every gain at zero, a deliberately weak start.

With all four weights at 0 the push is always 0, so it always pushes left and the pole
falls in about 9 steps. `make run` starts `heurist run` from here: the offline coder's
CMA-ES search over the declared tunables has to find gains that balance the pole.
Measured (heurist eval, dev split seeds 0..19, 20 episodes, protocol standard):
mean 9.45 ± 0.67.
"""

from dataclasses import dataclass, field


def tunable(default, low, high, doc):
    """A scalar a search may tune within [low, high]."""
    return field(default=default, metadata={"low": low, "high": high, "doc": doc})


@dataclass
class Tunables:
    angle_gain: float = tunable(0.0, 0.0, 5.0, "weight on the pole angle (rad)")
    spin_gain: float = tunable(0.0, 0.0, 5.0, "weight on the pole's angular velocity (rad/s)")
    position_gain: float = tunable(0.0, -1.0, 1.0, "weight on the cart position: pulls the cart back to centre")
    velocity_gain: float = tunable(0.0, -1.0, 1.0, "weight on the cart velocity: damps drift")


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
