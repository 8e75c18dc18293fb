"""Replaces the file its output goes to with a link to /proc/self/environ (which, opened by heurist, would be
heurist's own environment, API key included) and to a user's file, prints, and dies."""

import os
import sys


def test_swaps_its_log_and_dies():
    for fd in (1, 2):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}").replace(" (deleted)", "")
            os.unlink(target)
            os.symlink("/proc/self/environ" if fd == 1 else "{outside}", target)
        except OSError:
            pass
    sys.stdout.write("last words\n")
    sys.stdout.flush()
    os._exit(3)
