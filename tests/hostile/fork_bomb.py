import os
import time


class Policy:
    """Forks until the machine runs out of processes, unless something stops it."""

    def reset(self, seed):
        pass

    def act(self, obs, info):
        while True:
            if os.fork() == 0:
                time.sleep(120)
                os._exit(0)
