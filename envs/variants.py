"""Task variants heurist registers with Gymnasium: the same simulator with one physical parameter changed.

They exist so that what a run learned can be tried on a related task (lessons that travel,
``memory.lessons``): ``CartPoleLongPole-v1`` is CartPole-v1 with a pole twice as long (half-length
1.0 m instead of 0.5 m; its mass unchanged), which falls more slowly, so the same kind of controller
balances it with other gains. Imported by the task's ``register_module`` before ``gymnasium.make``.
"""

from __future__ import annotations

import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

LONG_POLE_HALF_LENGTH = 1.0  # metres; CartPole-v1's is 0.5


class LongPoleCartPole(CartPoleEnv):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.length = LONG_POLE_HALF_LENGTH
        self.polemass_length = self.masspole * self.length


if "heurist/CartPoleLongPole-v1" not in gym.registry:
    gym.register(id="heurist/CartPoleLongPole-v1", entry_point="envs.variants:LongPoleCartPole",
                 max_episode_steps=500, reward_threshold=475.0)
