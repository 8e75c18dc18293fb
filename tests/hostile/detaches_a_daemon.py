import os
import time


class Policy:
    """Leaves a daemon behind: a double fork and a new session take it out of its process group, so killing the
    group does not reach it. Its pid goes to a file in {pids} (filled in by the test), once it runs."""

    def reset(self, seed):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open(os.path.join("{pids}", f"{os.getpid()}.pid"), "w") as mark:
                    mark.write("running")
                time.sleep(1000)
            os._exit(0)
        os.wait()
        while len(os.listdir("{pids}")) <= seed:  # its daemon has said it runs (one per episode, seeds 0, 1, ...)
            time.sleep(0.01)

    def act(self, obs, info):
        return 0
