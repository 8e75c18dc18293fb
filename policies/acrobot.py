"""Acrobot-v1 starter: a linear energy-pumping rule with a dead band.

Torque follows the sign of a weighted sum of the six observations (cos/sin of both
joint angles and both angular velocities); inside the dead band no torque is applied.
The weights were found by a CMA-ES scalar search on the dev seeds, so read them as a
tuned starting point rather than a derivation.
Measured (heurist eval, dev split seeds 0..19, 20 episodes, protocol standard):
mean -68.00 ± 4.69 (min -80.00, max -64.00).
"""

from dataclasses import dataclass, field

import numpy as np


def tunable(default, low, high, doc):
    """A scalar a search may tune within [low, high]."""
    return field(default=default, metadata={"low": low, "high": high, "doc": doc})


@dataclass
class Tunables:
    w_cos1: float = tunable(-0.5575, -10.0, 10.0, "weight on cos(theta1)")
    w_sin1: float = tunable(-3.6364, -10.0, 10.0, "weight on sin(theta1)")
    w_cos2: float = tunable(0.1031, -10.0, 10.0, "weight on cos(theta2)")
    w_sin2: float = tunable(-3.3638, -10.0, 10.0, "weight on sin(theta2)")
    w_vel1: float = tunable(-2.6202, -10.0, 10.0, "weight on theta1 angular velocity")
    w_vel2: float = tunable(6.8095, -10.0, 10.0, "weight on theta2 angular velocity")
    bias: float = tunable(-1.4596, -10.0, 10.0, "constant term")
    dead_band: float = tunable(1.0348, 0.0, 5.0, "|score| below this applies no torque")


class Policy:
    def __init__(self):
        self.p = Tunables()
        p = self.p
        self.weights = np.array([p.w_cos1, p.w_sin1, p.w_cos2, p.w_sin2, p.w_vel1, p.w_vel2])

    def reset(self, seed):
        pass

    def act(self, obs, info):
        score = float(self.weights @ np.asarray(obs, dtype=float)) + self.p.bias
        if score > self.p.dead_band:
            action, mode = 2, "torque_positive"
        elif score < -self.p.dead_band:
            action, mode = 0, "torque_negative"
        else:
            action, mode = 1, "coast"
        self.diagnostics = {"mode": mode, "score": round(score, 4)}
        return action
