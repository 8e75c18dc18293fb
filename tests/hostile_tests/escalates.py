"""Tries every way it knows to regain privileges or leave its sandbox: capabilities, a remount of a read-only
bind, a new user namespace with a remount inside it, setns into another process's namespaces, root-only files,
heurist's own code, the user's secrets and other runs. Passes only if every attempt failed."""

import ctypes
import os
import subprocess
from pathlib import Path

MS_REMOUNT, MS_BIND = 32, 4096


def _status():
    return dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)


def test_nothing_escapes():
    escaped = []
    status = _status()
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb", "CapBnd"):
        if int(status[field], 16):
            escaped.append(f"holds {field} {status[field].strip()}")
    if os.getuid() == 0 or os.geteuid() == 0:
        escaped.append("runs as root")
    libc = ctypes.CDLL(None, use_errno=True)
    for target in ("/usr", "{heurist_envs}"):
        if libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND, None) == 0:
            escaped.append(f"remounted {target} read-write")
    inner = subprocess.run(["unshare", "-Urm", "sh", "-c",
                            "mount -o remount,rw,bind {heurist_envs} && echo '# owned' >> {heurist_envs}/worker.py "
                            "&& echo ESCAPED"], capture_output=True, text=True)
    if "ESCAPED" in inner.stdout:
        escaped.append("wrote heurist's code from a new user namespace")
    for ns in ("mnt", "user", "pid", "net"):
        try:
            fd = os.open(f"/proc/1/ns/{ns}", os.O_RDONLY)
            if libc.setns(fd, 0) == 0:
                escaped.append(f"joined pid 1's {ns} namespace")
            os.close(fd)
        except OSError:
            pass
    for path in ("/etc/shadow", "{heurist_envs}/worker.py", "/root/.ssh/id_rsa", "/root/.netrc",
                 "/root/.bash_history", "{heurist_home}/runs.jsonl", "{checkout}/runs", "{checkout}/.git/config"):
        try:
            if Path(path).is_dir():
                os.listdir(path)
                escaped.append(f"listed {path}")
            elif path.endswith("worker.py"):
                with open(path, "a") as fh:
                    fh.write("# owned\n")
                escaped.append(f"appended to {path}")
            else:
                Path(path).read_bytes()
                escaped.append(f"read {path}")
        except OSError:
            pass
    try:
        Path("{outside}").write_text("escaped")  # under /tmp this lands in its private /tmp: the harness checks
    except OSError:
        pass
    assert not escaped, escaped
