"""Resource limits for untrusted code, and ``python -m envs.limited LIMITS_JSON -- CMD ...``.

``apply_limits`` is how the sandboxed policy process (``envs.policy_host``) limits itself
before it reads any policy code. The command form is started by ``envs.sandbox.run_sandboxed``
inside the sandboxed environment: the limits are set here, in the child, and inherited across
``exec`` by the command and everything it starts, which is how a model-written test suite gets
the same address-space, file-size, open-file and CPU limits as a policy.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path


def apply_limits(memory_mb: int, fsize_mb: int, nofile: int, max_processes: int | None = None) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb * 2**20, fsize_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if max_processes is not None and os.getuid() != 0:
        # RLIMIT_NPROC counts every process and thread of the user, so the cap is "what runs now + this many".
        cap = _my_tasks() + max_processes
        resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))


def _my_tasks() -> int:
    """Processes and threads this user runs now (the count RLIMIT_NPROC is checked against)."""
    count = 0
    for proc_dir in Path("/proc").iterdir():
        try:
            if proc_dir.name.isdigit() and proc_dir.stat().st_uid == os.getuid():
                count += len(os.listdir(proc_dir / "task"))
        except OSError:
            continue  # it ended while we looked
    return count


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
