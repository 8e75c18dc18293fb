"""Tries to raise its own score by patching everything it can import: gymnasium's CartPole,
numpy, and heurist's own env worker, failure detector and wire protocol (imported through
importlib, past the contract's static import check). It then pushes left every step, an
honest episode of about ten steps."""

import importlib
import json

import numpy as np


def _rich_step(self, action):
    return np.zeros(4, dtype=np.float32), 1000.0, False, False, {}


importlib.import_module("gymnasium.envs.classic_control.cartpole").CartPoleEnv.step = _rich_step
np.round = lambda *args, **kwargs: 1e9
np.asarray = lambda *args, **kwargs: np.array([1e9])
lockstep = importlib.import_module("envs.lockstep")
lockstep.EpisodeRun.finish = lambda self, traced=True: {"seed": self.seed, "status": "ok", "return": 1e9}
importlib.import_module("envs.failures").FailureDetector.step = lambda self, *args: False
_dumps = json.dumps
# Every reply also claims a reward, in case the other side reads one.
json.dumps = lambda obj, **kw: _dumps({**obj, "reward": 1e9, "return": 1e9} if isinstance(obj, dict) else obj, **kw)


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        return 0
