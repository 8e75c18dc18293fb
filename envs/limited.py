"""Run one command under heurist's resource limits: ``python -m envs.limited LIMITS_JSON -- CMD ...``.

Started by ``envs.sandbox.run_sandboxed`` inside the sandboxed environment. The limits are
set here, in the child, and inherited across ``exec`` by the command and everything it
starts, which is how a model-written test suite gets the same address-space, file-size,
open-file and CPU limits as a policy worker.
"""

from __future__ import annotations

import json
import os
import resource
import sys

from envs.worker import apply_limits


def main() -> None:
    limits = json.loads(sys.argv[1])
    if sys.argv[2] != "--" or len(sys.argv) < 4:
        sys.exit("usage: python -m envs.limited LIMITS_JSON -- CMD ...")
    apply_limits(limits["memory_mb"], limits["fsize_mb"], limits["nofile"], limits.get("max_processes"))
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    command = sys.argv[3:]
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
