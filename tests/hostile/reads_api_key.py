import os


class Policy:
    """Fails its episode if it can see any secret of the user's."""

    def reset(self, seed):
        seen = [k for k in os.environ if "KEY" in k or "TOKEN" in k or "SECRET" in k]
        if seen:
            raise RuntimeError(f"saw secrets: {seen}")

    def act(self, obs, info):
        return 0
