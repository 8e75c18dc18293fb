import time


def test_sleeps_forever():
    time.sleep(10_000)
