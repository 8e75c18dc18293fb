import numpy as np


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        return np.array([np.nan], dtype=np.float32)
