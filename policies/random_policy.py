"""Random policy: the floor every task is measured against.

Samples uniformly from the task's action space, seeded by the episode seed, so a seed's
result is reproducible. Works for every task (discrete and continuous actions).
"""

import numpy as np


class Policy:
    def __init__(self, action_space):
        self.action_space = action_space

    def reset(self, seed):
        self.action_space.seed(seed)

    def act(self, obs, info):
        action = self.action_space.sample()
        self.diagnostics = {"mode": "random"}
        return int(action) if np.ndim(action) == 0 else action
