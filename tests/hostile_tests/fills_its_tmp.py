"""Writes into its private /tmp (RAM) until something stops it: file after file, each under the file-size limit."""

import os


def test_fills_tmp():
    chunk = b"x" * (1 << 20)
    for n in range(10_000):
        with open(f"/tmp/fill-{n}", "wb") as fh:
            for _ in range(8):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
