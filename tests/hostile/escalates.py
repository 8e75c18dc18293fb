"""Tries to regain privileges or leave its sandbox from inside the policy process: capabilities, remounting
heurist's code read-write (the env process imports it next), a new user namespace, root-only files, the user's
secrets, other runs, a file outside. Fails its episode, naming what escaped, if anything did."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

MS_REMOUNT, MS_BIND = 32, 4096
ENVS = Path(sys.modules["envs"].__file__).parent  # loaded in this process (importing heurist is refused)


class Policy:
    def reset(self, seed):
        escaped = []
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        escaped += [f"holds {f}" for f in ("CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd") if int(status[f], 16)]
        if 0 in (os.getuid(), os.geteuid()):
            escaped.append("runs as root")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(None, str(ENVS).encode(), None, MS_REMOUNT | MS_BIND, None) == 0:
            escaped.append("remounted heurist's code read-write")
        inner = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -o remount,rw,bind {ENVS} && "
                                f"echo '# owned' >> {ENVS}/worker.py && echo ESCAPED"], capture_output=True, text=True)
        if "ESCAPED" in inner.stdout:
            escaped.append("wrote heurist's code from a user namespace")
        for path in ("/etc/shadow", "/root/.ssh", "/root/.netrc", "/root/.bash_history"):
            try:
                os.listdir(path) if Path(path).is_dir() else Path(path).read_bytes()
                escaped.append(f"read {path}")
            except OSError:
                pass
        try:
            with open(ENVS / "worker.py", "a") as fh:
                fh.write("# owned\n")
            escaped.append("appended to envs/worker.py")
        except OSError:
            pass
        if escaped:
            raise RuntimeError("escaped: " + "; ".join(escaped))

    def act(self, obs, info):
        return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
