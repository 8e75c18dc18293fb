import os


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        os._exit(3)
