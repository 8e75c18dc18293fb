"""What one sandboxed process tree may use: time, memory, output, files, processes, CPU, and which isolation applies.

Every part of the sandbox reads these (``envs/isolation.py``, ``envs/cgroups.py``, ``envs/sandbox.py``,
``envs/worker_pair.py``); they travel to a sandboxed process as JSON (``envs.limited``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# The most any limit may be: a limit is a number of seconds or MiB the kernel and the clocks take as such, and one
# past these (an "inf" given for "no limit") failed every episode in the policy's process, blamed on the policy.
MAX_SECONDS = 10.0**7  # about 116 days
MAX_MIB = 2**30  # a PiB


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    episode_timeout_s: float = Field(300.0, gt=0, le=MAX_SECONDS)
    episode_cpu_s: float = Field(300.0, gt=0, le=MAX_SECONDS)
    memory_mb: int = Field(4096, ge=1, le=MAX_MIB)
    fsize_mb: int = Field(64, ge=1, le=MAX_MIB)
    nofile: int = Field(256, ge=1, le=2**20)
    max_processes: int = Field(256, ge=1, le=2**22)  # processes and threads of one sandboxed tree
    tmp_mb: int = Field(256, ge=1, le=MAX_MIB)  # the private /tmp, which is also the home: RAM-backed, so bounded
    # CPU time of a whole sandbox per period, in cores (a cpu cgroup's quota, where one applies)
    cpus: float = Field(1.0, gt=0, le=2**16)
    network_isolation: bool = True
    filesystem_isolation: bool = True
