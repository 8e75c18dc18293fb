"""``heurist doctor`` on this machine, through the installed command: real probes, and the real openai client
against the scripted server on 127.0.0.1 for the endpoint check."""

from __future__ import annotations

import json
import os
import socket
import subprocess

from tests.scripted_openai import ScriptedOpenAI
from tests.test_cli import HEURIST
from tests.test_llm import chat


def doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run([HEURIST, "doctor", "--json", *args], capture_output=True, text=True, timeout=300,
                          env={**base, **(env or {})})


def test_doctor_checks_the_installation_and_names_every_part(tmp_path):
    done = doctor("--skip-llm", env={"HEURIST_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    for name in ("python", "package langgraph", "package chromadb", "ALE ROMs", "MuJoCo rendering", "offline embedder",
                 "sandbox: user", "sandbox: privileges", "sandbox: network", "sandbox: file system",
                 "sandbox: processes", "sandbox: memory", "sandbox: cpu", "git", "ffmpeg (clips)", "disk"):
        assert name in checks, name
        assert checks[name]["status"] in ("ok", "warn"), checks[name]
    # Asked from inside a sandbox: who it runs as and what it holds (the "say which applies").
    privileges = checks["sandbox: privileges"]["detail"]
    assert "uid 0," not in privileges and "effective 0000000000000000" in privileges, privileges
    assert "/etc/shadow unreadable" in privileges and "new user namespaces refused" in privileges
    assert "no capabilities" in checks["sandbox: user"]["detail"]
    assert checks["ALE ROMs"]["status"] == "ok" and "Breakout resets" in checks["ALE ROMs"]["detail"]
    assert "frame (480, 480, 3)" in checks["MuJoCo rendering"]["detail"]
    assert "384 dimensions" in checks["offline embedder"]["detail"]
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok")  # whatever is not fine says how to fix it
    assert "LLM endpoint" not in checks


def test_doctor_asks_the_endpoint_for_one_token():
    with ScriptedOpenAI() as server:
        server.queue(chat("OK", prompt_tokens=9, completion_tokens=1))
        done = doctor("--base-url", server.base_url, "--model", "my-local-model")
        calls = [r["body"] for r in server.requests if r["path"].endswith("/chat/completions")]
    assert done.returncode == 0, done.stdout + done.stderr
    llm = next(c for c in json.loads(done.stdout) if c["name"] == "LLM endpoint")
    assert llm["status"] == "ok" and "my-local-model" in llm["detail"] and "10 tokens" in llm["detail"]
    assert len(calls) == 1 and calls[0]["max_tokens"] == 1 and calls[0]["model"] == "my-local-model"


def test_doctor_fails_with_the_fix_when_the_endpoint_is_down():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = doctor("--base-url", f"http://127.0.0.1:{port}/v1")
    assert done.returncode == 1
    llm = next(c for c in json.loads(done.stdout) if c["name"] == "LLM endpoint")
    assert llm["status"] == "fail" and "cannot connect" in llm["detail"] and "start the server" in llm["fix"]
