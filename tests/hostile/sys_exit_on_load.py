import sys

sys.exit("policy refuses to load")


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        return 0
