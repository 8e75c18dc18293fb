"""What an Atari protocol does at reset, beyond ALE's own: EnvPool's no-ops and fire-reset.

The original's environments (EnvPool, ``use_fire_reset=True``, ``noop_max=1``) act on the emulator
once more at every reset: ``noop_max`` draws ``n`` in ``[0, noop_max)`` and takes ``n + 1`` no-ops,
one fewer where the game has a FIRE action, which then takes FIRE once. With ``noop_max=1``: FIRE
once in Breakout (the ball is launched before the policy's first step), one NOOP in a game without
FIRE. Those frames are the reset's, not steps: their reward is not the episode's and the step
budget counts from after them (EnvPool's ``elapsed_step`` stays 0). That one frame is the difference
between the original RAM Breakout policy's 864 and 416.

The actions go straight to the emulator (``ale.act``), under every other wrapper, so Gymnasium's step
counter is not advanced, as in EnvPool.
"""

from __future__ import annotations

import gymnasium as gym


class EnvPoolReset(gym.Wrapper):
    def __init__(self, env: gym.Env, fire_reset: bool, noop_max: int) -> None:
        super().__init__(env)
        import ale_py

        self._noop, self._fire = ale_py.Action.NOOP, ale_py.Action.FIRE
        # EnvPool fires at reset only where the game's action set has FIRE (sail-sg/envpool#221).
        self.fires = fire_reset and self._fire in env.unwrapped._action_set
        self.noop_max = noop_max

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        atari = self.env.unwrapped
        ale = atari.ale
        drawn = int(atari.np_random.integers(self.noop_max)) if self.noop_max > 1 else 0  # seeded by reset(seed)
        noops = (drawn + 1 - int(self.fires)) if self.noop_max >= 1 else 0
        for _ in range(noops):
            ale.act(self._noop)
            if ale.game_over():
                ale.reset_game()
        if self.fires:
            ale.act(self._fire)
        if noops or self.fires:
            obs, info = atari._get_obs(), {**info, **atari._get_info()}
        return obs, info


__all__ = ["EnvPoolReset"]
