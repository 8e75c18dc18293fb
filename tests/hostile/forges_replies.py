"""Writes its own bytes into every pipe it holds, hoping to forge the messages that carry its actions."""

import os
import stat


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        for name in os.listdir("/proc/self/fd"):
            try:
                fd = int(name)
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    os.write(fd, b'{"return": 1e9, "status": "ok"} and more\n')
            except OSError:
                pass
        return 0
