"""A task of one's own (for tests/test_lockstep.py) whose env gives a reward no return can hold: CartPole that, on
seed 1, rewards NaN at step 5; on seed 2, +inf at step 3; on seed 3, None at step 2; on seed 4, 1e308 at every
step (the return passes a float's range at step 1); and on seed 0, its usual +1 a step."""

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from envs.tasks import FailureRules, TaskSpec

ODD_REWARDS = {1: (5, float("nan")), 2: (3, float("inf")), 3: (2, None)}


class UnscorableRewards(CartPoleEnv):
    def reset(self, *, seed=None, options=None):
        self.seed_, self.t = seed, 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self.t += 1
        if self.seed_ == 4:
            reward = 1e308
        odd = ODD_REWARDS.get(self.seed_)
        if odd is not None and self.t == odd[0] + 1:
            reward = odd[1]
        return obs, reward, terminated, truncated, info


if "heurist-tests/UnscorableRewards-v0" not in gym.registry:
    gym.register(id="heurist-tests/UnscorableRewards-v0", entry_point=UnscorableRewards, max_episode_steps=50)
TASK = TaskSpec(id="UnscorableRewards-v0", gym_id="heurist-tests/UnscorableRewards-v0", family="custom",
                description="rewards that are not finite numbers", register_module="tests.unscorable_rewards",
                failure_rules=FailureRules(termination="failure", termination_kind="fell", termination_text="fell"))
