import sys


def test_prints_gigabytes():
    chunk = "x" * 1_000_000
    for _ in range(5_000):
        sys.stdout.write(chunk)
