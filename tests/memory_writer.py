"""A separate process that writes N failure records to a memory store (for concurrency and kill tests).

With a fourth argument ``progress`` it prints ``added K`` after each record, so a test can wait for records to be
written (an event) rather than for a guessed number of seconds."""

import sys
from pathlib import Path

from memory import FailureRecord, MemoryConfig, MemoryStore

path, run_id, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
progress = sys.argv[4:] == ["progress"]
with MemoryStore(MemoryConfig(path=path)) as store:
    print("open", flush=True)
    for i in range(count):
        store.add_failure(FailureRecord(
            run_id=run_id, description=f"writer {run_id} episode {i}: the cart left the track on the right",
            task="CartPole-v1", family="classic_control", protocol="standard", iteration=i, seed=i, step=10 + i,
            kind="pole_fell", policy_sha256="0" * 64))
        if progress:
            print(f"added {i + 1}", flush=True)
    print("done", flush=True)
