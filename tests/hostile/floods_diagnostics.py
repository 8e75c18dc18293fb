"""Sends the largest diagnostics the reply limit lets through (long keys and values, a 4,000-digit integer), a new
mode name every step, after patching its own process's trimming away: the env process must bound what it keeps
itself."""

import importlib
import itertools

for name in ("envs.wire", "envs.policy_host"):  # the policy process's own trimming, wherever it is called from
    module = importlib.import_module(name)
    module.plain_diag = lambda diag: diag
    module.jsonable = lambda value, depth=0: value
_counter = itertools.count()


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        n = next(_counter)
        self.diagnostics = {"mode": f"mode-{n}-" + "m" * 5000, "big": 10 ** 4000,
                            **{f"key-{n}-{i}-" + "k" * 300: "v" * 300 for i in range(70)}}
        return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
