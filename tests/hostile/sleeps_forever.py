import time


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        time.sleep(10_000)
