"""HalfCheetah-v5 starter: an open-loop gait from one sine oscillator per joint.

Each joint's torque is ``amp * sin(2*pi*frequency*time + phase) + offset``, clipped to
[-1, 1]; the policy ignores its observations, which keeps it a readable baseline for
structural edits (feedback from body pitch or contacts is the obvious next step).
Some seeds start the gait badly and the cheetah flips onto its back: the worst failure to fix first.
The amplitudes, phases and offsets were found by a CMA-ES scalar search on dev seeds 0..5.
Measured (heurist eval, dev split seeds 0..19, 20 episodes, protocol standard):
mean 2529.12 ± 525.22 (min 958.51, max 3027.79).
"""

import math
from dataclasses import dataclass, field

import numpy as np

JOINTS = ("back_thigh", "back_shin", "back_foot", "front_thigh", "front_shin", "front_foot")  # the action vector's order
TIMESTEP = 0.05  # simulated seconds per env step (frame_skip 5 x 0.01 s)


def tunable(default, low, high, doc):
    """A scalar a search may tune within [low, high]."""
    return field(default=default, metadata={"low": low, "high": high, "doc": doc})


@dataclass
class Tunables:
    frequency: float = tunable(3.1549, 0.2, 5.0, "gait cycles per second of simulated time")
    amp_back_thigh: float = tunable(1.7365, -5.0, 5.0, "amplitude of the back thigh oscillation")
    amp_back_shin: float = tunable(-1.1107, -5.0, 5.0, "amplitude of the back shin oscillation")
    amp_back_foot: float = tunable(-0.5463, -5.0, 5.0, "amplitude of the back foot oscillation")
    amp_front_thigh: float = tunable(3.7630, -5.0, 5.0, "amplitude of the front thigh oscillation")
    amp_front_shin: float = tunable(1.2523, -5.0, 5.0, "amplitude of the front shin oscillation")
    amp_front_foot: float = tunable(-0.5563, -5.0, 5.0, "amplitude of the front foot oscillation")
    phase_back_thigh: float = tunable(1.1181, -6.3, 6.3, "phase of the back thigh (rad)")
    phase_back_shin: float = tunable(0.6121, -6.3, 6.3, "phase of the back shin (rad)")
    phase_back_foot: float = tunable(-1.7695, -6.3, 6.3, "phase of the back foot (rad)")
    phase_front_thigh: float = tunable(-2.8871, -6.3, 6.3, "phase of the front thigh (rad)")
    phase_front_shin: float = tunable(2.7397, -6.3, 6.3, "phase of the front shin (rad)")
    phase_front_foot: float = tunable(-1.5921, -6.3, 6.3, "phase of the front foot (rad)")
    offset_back_thigh: float = tunable(0.0589, -4.0, 4.0, "centre of the back thigh oscillation")
    offset_back_shin: float = tunable(-2.2434, -4.0, 4.0, "centre of the back shin oscillation")
    offset_back_foot: float = tunable(-3.4274, -4.0, 4.0, "centre of the back foot oscillation")
    offset_front_thigh: float = tunable(-3.2039, -4.0, 4.0, "centre of the front thigh oscillation")
    offset_front_shin: float = tunable(-2.6734, -4.0, 4.0, "centre of the front shin oscillation")
    offset_front_foot: float = tunable(-1.6286, -4.0, 4.0, "centre of the front foot oscillation")


class Policy:
    def __init__(self):
        p = Tunables()
        self.p = p
        self.amp = np.array([getattr(p, f"amp_{j}") for j in JOINTS])
        self.phase = np.array([getattr(p, f"phase_{j}") for j in JOINTS])
        self.offset = np.array([getattr(p, f"offset_{j}") for j in JOINTS])

    def reset(self, seed):
        self.t = 0

    def act(self, obs, info):
        angle = 2.0 * math.pi * self.p.frequency * self.t * TIMESTEP
        self.t += 1
        self.diagnostics = {"mode": "gait", "cycle": round((angle / (2.0 * math.pi)) % 1.0, 3)}
        return np.clip(self.amp * np.sin(angle + self.phase) + self.offset, -1.0, 1.0)
