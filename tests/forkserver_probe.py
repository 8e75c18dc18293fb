"""Started by tests/test_forkserver.py through the fork server: reports what the process it became looks like."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    report_fd, mode = int(sys.argv[1]), sys.argv[2]
    print("probe on stdout", flush=True)
    print("probe on stderr", file=sys.stderr, flush=True)
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    report = {"pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(), "environ": dict(os.environ),
              "initial_environ": open("/proc/self/environ", "rb").read().decode(errors="replace"),
              "fds": fds, "tempdir": tempfile.gettempdir(), "argv": sys.argv,
              "dumpable": ctypes.CDLL(None).prctl(3, 0, 0, 0, 0),  # PR_GET_DUMPABLE
              "imported": sorted(m for m in ("gymnasium", "chromadb", "matplotlib") if m in sys.modules),
              "flags": {"optimize": sys.flags.optimize, "safe_path": sys.flags.safe_path},
              "path": sys.path[:2]}
    os.write(report_fd, json.dumps(report).encode())
    os.close(report_fd)
    if mode == "exit3":
        sys.exit(3)
    if mode == "raise":
        raise RuntimeError("the probe failed on purpose")
    if mode == "wait":
        signal.pause()
    if mode == "shell":  # what Python's exit does: the thread's line comes before the atexit handler's
        atexit.register(lambda: print("atexit handler ran", flush=True))
        threading.Thread(target=lambda: (time.sleep(0.2), print("thread finished", flush=True))).start()
        global POOL  # a pool still held at exit: threading's exit hook ends its idle worker, or exit waits forever
        POOL = ThreadPoolExecutor(1)
        POOL.submit(print, "pool task ran", file=sys.stderr, flush=True).result()
        sys.exit(5)


if __name__ == "__main__":
    main()
