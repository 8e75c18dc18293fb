import time


class Policy:
    """Balances for 40 steps, then sleeps until the wall-clock kill (whose 40 env steps must still be counted)."""

    def reset(self, seed):
        self.t = 0

    def act(self, obs, info):
        self.t += 1
        if self.t > 40:
            time.sleep(10_000)
        return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
