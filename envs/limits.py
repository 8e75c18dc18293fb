"""What one sandboxed process tree may use: time, memory, output, files, processes, CPU, and which isolation applies.

Every part of the sandbox reads these (``envs/isolation.py``, ``envs/cgroups.py``, ``envs/sandbox.py``,
``envs/worker_pair.py``); they travel to a sandboxed process as JSON (``envs.limited``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episode_timeout_s: float = 300.0
    episode_cpu_s: float = 300.0
    memory_mb: int = 4096
    fsize_mb: int = 64
    nofile: int = 256
    max_processes: int = 256  # processes and threads of one sandboxed tree
    tmp_mb: int = 256  # the private /tmp, which is also the home: RAM-backed, so bounded
    cpus: float = 1.0  # CPU time of a whole sandbox per period, in cores (a cpu cgroup's quota, where one applies)
    network_isolation: bool = True
    filesystem_isolation: bool = True
