"""Ant-v5 starter: an open-loop gait from one sine oscillator per joint.

Each joint's torque is ``amp * sin(2*pi*frequency*time + phase) + offset``, clipped to
[-1, 1]; the policy ignores its observations, which keeps it a readable baseline for
structural edits (feedback from body pitch or contacts is the obvious next step).
Ant earns 1 per healthy step, so a gentle gait that never falls beats a fast one that does.
The amplitudes, phases and offsets were found by a CMA-ES scalar search on seeds 0 and 1.
Measured (heurist eval, dev split seeds 0..19, 20 episodes, protocol standard):
mean 1179.52 ± 85.27 (min 1043.93, max 1302.30).
"""

import math
from dataclasses import dataclass, field

import numpy as np

JOINTS = ("hip_4", "ankle_4", "hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3")  # the action vector's order
TIMESTEP = 0.05  # simulated seconds per env step (frame_skip 5 x 0.01 s)


def tunable(default, low, high, doc):
    """A scalar a search may tune within [low, high]."""
    return field(default=default, metadata={"low": low, "high": high, "doc": doc})


@dataclass
class Tunables:
    frequency: float = tunable(0.8283, 0.2, 5.0, "gait cycles per second of simulated time")
    amp_hip_4: float = tunable(0.1870, -5.0, 5.0, "amplitude of the hip 4 oscillation")
    amp_ankle_4: float = tunable(0.1492, -5.0, 5.0, "amplitude of the ankle 4 oscillation")
    amp_hip_1: float = tunable(-0.1097, -5.0, 5.0, "amplitude of the hip 1 oscillation")
    amp_ankle_1: float = tunable(0.0414, -5.0, 5.0, "amplitude of the ankle 1 oscillation")
    amp_hip_2: float = tunable(-0.0613, -5.0, 5.0, "amplitude of the hip 2 oscillation")
    amp_ankle_2: float = tunable(-0.0174, -5.0, 5.0, "amplitude of the ankle 2 oscillation")
    amp_hip_3: float = tunable(-0.1871, -5.0, 5.0, "amplitude of the hip 3 oscillation")
    amp_ankle_3: float = tunable(-0.1593, -5.0, 5.0, "amplitude of the ankle 3 oscillation")
    phase_hip_4: float = tunable(0.0265, -6.3, 6.3, "phase of the hip 4 (rad)")
    phase_ankle_4: float = tunable(0.9311, -6.3, 6.3, "phase of the ankle 4 (rad)")
    phase_hip_1: float = tunable(0.6381, -6.3, 6.3, "phase of the hip 1 (rad)")
    phase_ankle_1: float = tunable(1.1899, -6.3, 6.3, "phase of the ankle 1 (rad)")
    phase_hip_2: float = tunable(1.8721, -6.3, 6.3, "phase of the hip 2 (rad)")
    phase_ankle_2: float = tunable(2.1042, -6.3, 6.3, "phase of the ankle 2 (rad)")
    phase_hip_3: float = tunable(2.7556, -6.3, 6.3, "phase of the hip 3 (rad)")
    phase_ankle_3: float = tunable(3.0193, -6.3, 6.3, "phase of the ankle 3 (rad)")
    offset_hip_4: float = tunable(0.3352, -4.0, 4.0, "centre of the hip 4 oscillation")
    offset_ankle_4: float = tunable(0.0514, -4.0, 4.0, "centre of the ankle 4 oscillation")
    offset_hip_1: float = tunable(0.0068, -4.0, 4.0, "centre of the hip 1 oscillation")
    offset_ankle_1: float = tunable(-0.1255, -4.0, 4.0, "centre of the ankle 1 oscillation")
    offset_hip_2: float = tunable(0.1598, -4.0, 4.0, "centre of the hip 2 oscillation")
    offset_ankle_2: float = tunable(0.0431, -4.0, 4.0, "centre of the ankle 2 oscillation")
    offset_hip_3: float = tunable(0.0694, -4.0, 4.0, "centre of the hip 3 oscillation")
    offset_ankle_3: float = tunable(-0.1530, -4.0, 4.0, "centre of the ankle 3 oscillation")


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
