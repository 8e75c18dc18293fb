"""A task of one's own (for tests/test_evaluator.py) where two failure events fire on one step, as a stall rule and a
failure termination can on Hopper, Walker2d and Ant: CartPole whose info reports a forward speed (the action) and
that ends at step 50 whatever the policy does; its frames change shade with the step."""

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from envs.tasks import FailureRules, StallRule, TaskSpec


class StallThenFall(CartPoleEnv):
    def reset(self, **kw):
        self.t = 0
        obs, _ = super().reset(**kw)
        return obs, {"x_velocity": 1.0}

    def step(self, action):
        obs, reward, _, truncated, _ = super().step(action)
        self.t += 1
        return obs, reward, self.t == 50, truncated, {"x_velocity": float(action)}

    def render(self):
        return np.full((64, 64, 3), (self.t * 5) % 256, np.uint8)


if "heurist-tests/StallThenFall-v0" not in gym.registry:
    gym.register(id="heurist-tests/StallThenFall-v0", entry_point=StallThenFall, max_episode_steps=500)
TASK = TaskSpec(id="StallThenFall-v0", gym_id="heurist-tests/StallThenFall-v0", family="custom",
                description="a stall and a fall on one step", register_module="tests.stall_then_fall",
                failure_rules=FailureRules(termination="failure", termination_kind="fell", termination_text="fell",
                                           stall=StallRule(info_key="x_velocity", below=0.5, steps=50)))
