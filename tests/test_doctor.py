"""``heurist doctor`` on this machine, through the installed command: real probes, and the real openai client
against the scripted server on 127.0.0.1 for the endpoint check."""

from __future__ import annotations

import json
import os
import socket
import subprocess

from tests.scripted_openai import ScriptedOpenAI, tool_call_reply
from tests.test_cli import HEURIST
from tests.test_llm import chat


def doctor(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run([HEURIST, "doctor", "--json", *args], capture_output=True, text=True, timeout=300,
                          env={**base, **(env or {})}, cwd=cwd)


def test_doctor_checks_the_installation_and_names_every_part(tmp_path):
    # Run from a folder of the user's: doctor leaves nothing there (MuJoCo's MUJOCO_LOG.TXT was left, 2026-12-06).
    (here := tmp_path / "project").mkdir()
    done = doctor("--skip-llm", env={"HEURIST_HOME": str(tmp_path / "home")}, cwd=here)
    assert list(here.iterdir()) == []
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


def answers_ok(body: dict) -> dict:
    if body.get("tools"):
        return tool_call_reply(("ping", {}))
    return chat('{"ok": true}', prompt_tokens=9, completion_tokens=1)


def answers_in_text(body: dict) -> dict:
    """As llama-cpp-python's generic chat handler does: `tools` taken, the call left in the text."""
    return chat('<tool_call>{"name": "ping", "arguments": {}}</tool_call>' if body.get("tools") else '{"ok": true}')


def test_doctor_asks_the_endpoint_for_one_token_then_probes_what_it_can_do(tmp_path):
    with ScriptedOpenAI(responder=answers_ok) as server:
        done = doctor("--base-url", server.base_url, "--model", "my-local-model",
                      env={"HEURIST_HOME": str(tmp_path / "home")})
        calls = [r["body"] for r in server.requests if r["path"].endswith("/chat/completions")]
    assert done.returncode == 0, done.stdout + done.stderr
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    llm = checks["LLM endpoint"]
    assert llm["status"] == "ok" and "my-local-model" in llm["detail"] and "10 tokens" in llm["detail"]
    assert calls[0]["max_tokens"] == 1 and calls[0]["model"] == "my-local-model"
    assert checks["LLM structured output"]["detail"].startswith("heurist will use json_schema")
    for name in ("LLM images", "LLM streaming", "LLM tool calls"):
        assert checks[name]["status"] == "ok", checks[name]
    assert len(calls) == 5  # one token, then one small call a capability


def test_doctor_finds_llama_cpps_mode_and_runs_start_from_it(tmp_path, monkeypatch):
    """llama-cpp-python refuses json_schema and messages of parts: doctor says which mode heurist will use,
    records it, and a run's first call is put in that mode (no refused request every run)."""
    from roles.llm import LLMClient
    from roles.llm_usage import Usage
    from store.config import LLMConfig
    from store.transcripts import TranscriptRecorder
    from tests.test_llm import Answer

    home = tmp_path / "home"
    with ScriptedOpenAI(responder=answers_in_text, profile="llama.cpp") as server:
        done = doctor("--base-url", server.base_url, "--model", "qwen", env={"HEURIST_HOME": str(home)})
        assert done.returncode == 0, done.stdout + done.stderr
        checks = {c["name"]: c for c in json.loads(done.stdout)}
        assert checks["LLM structured output"]["status"] == "warn"
        assert checks["LLM structured output"]["detail"].startswith("heurist will use json_object_schema")
        assert "json_schema: refused (500" in checks["LLM structured output"]["detail"]
        assert checks["LLM images"]["status"] == "warn" and "refused (500" in checks["LLM images"]["detail"]
        profile = json.loads((home / "endpoints.json").read_text())[f"{server.base_url} qwen"]
        assert profile["structured"] == "json_object_schema"
        # A model that leaves its tool call in the text: the coder's agent will ask for calls as JSON objects.
        assert profile["tools"] is False and "answered in text" in checks["LLM tool calls"]["detail"]

        monkeypatch.setenv("HEURIST_HOME", str(home))
        before = len(server.requests)
        server.queue(chat(json.dumps({"verdict": "ok", "score": 1})))
        client = LLMClient(LLMConfig(model="qwen", base_url=server.base_url), Usage())
        client.structured(TranscriptRecorder(tmp_path).for_role(1, "coder"), [{"role": "user", "content": "x"}],
                          Answer)
        [first] = [r["body"] for r in server.requests[before:]]
    assert first["response_format"]["type"] == "json_object" and "schema" in first["response_format"]


def test_doctor_fails_with_the_fix_when_the_endpoint_is_down():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = doctor("--base-url", f"http://127.0.0.1:{port}/v1")
    assert done.returncode == 1
    llm = next(c for c in json.loads(done.stdout) if c["name"] == "LLM endpoint")
    assert llm["status"] == "fail" and "cannot connect" in llm["detail"] and "start the server" in llm["fix"]


def test_doctor_never_shows_a_key_a_server_echoes_whatever_its_variables_name(tmp_path):
    """The key's variable is the config's (here one whose name does not look secret), and the server's error
    quotes the key back: doctor's answer names the variable, never the value. A reply whose usage is no object is
    an answer all the same, not a crash."""
    from tests.scripted_openai import ScriptedOpenAI

    key = "opaque-value-0123456789abcdef"
    with ScriptedOpenAI() as server:
        config = tmp_path / "run.toml"
        config.write_text(f'[llm]\nbase_url = "{server.base_url}"\napi_key_env = "LLM_BEARER"\n')
        server.queue({"status": 500, "json": {"error": {"message": f"bad bearer {key}", "type": "server_error"}}})
        done = doctor("--config", str(config), env={"LLM_BEARER": key, "HEURIST_HOME": str(tmp_path / "home")})
        assert key not in done.stdout + done.stderr and "[redacted $LLM_BEARER]" in done.stdout, done.stdout[-2000:]
        server.queue({"json": {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "usage": "odd",
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": "OK"}}]}})
        from doctor.checks import check_llm

        llm = check_llm(server.base_url, "m")  # it raised AttributeError, and doctor said "internal error"
    assert llm.status == "ok" and "(? tokens)" in llm.detail


def test_doctor_gives_each_call_a_deadline_and_reads_replies_of_any_shape(tmp_path, monkeypatch):
    """A server that drips a byte at a time held doctor for ever (the client's timeout counts the silence between
    reads); a reply of no chat completion's shape ({}, choices that are a string, a tool call that is a string)
    was an internal error that lost every other check, or called "ok"; a server that answers stream=true with one
    JSON body was said to stream, and the run's streamed calls then failed."""
    import threading

    from doctor.checks import check_llm
    from doctor.endpoint import probe_endpoint

    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    with ScriptedOpenAI(responder=answers_ok) as server:
        server.queue({**chat("OK"), "drip_s": 0.5})
        answer: list = []
        asking = threading.Thread(target=lambda: answer.append(check_llm(server.base_url, "m", timeout_s=3)))
        asking.start()
        asking.join(60)
        assert not asking.is_alive() and answer[0].status == "fail"
        assert "no whole reply within 6 s" in answer[0].detail
        server.queue({"json": {}})
        empty = check_llm(server.base_url, "m")
        assert empty.status == "fail" and "no chat completion" in empty.detail
        # One token, then: structured output ({} then a string for choices), images, streaming (stream=true
        # answered with one JSON body, twice: with usage and without), tool calls (a call that is a string).
        plain = json.dumps(chat('{"ok": true}')["json"])
        odd_call = chat("")
        odd_call["json"]["choices"][0]["message"]["tool_calls"] = "ping"
        for reply in (chat("OK"), {"json": {}}, {"json": {"choices": "nope"}}, chat('{"ok": true}'),
                      chat('{"ok": true}'), {"raw": plain}, {"raw": plain}, odd_call):
            server.queue(reply)
        checks = {c.name: c for c in probe_endpoint(server.base_url, "m", timeout_s=5)}
    assert checks["LLM structured output"].status == "warn" and "no chat completion" in \
        checks["LLM structured output"].detail
    assert checks["LLM streaming"].status == "warn"
    assert checks["LLM tool calls"].status == "warn"
    profile = json.loads((tmp_path / "home" / "endpoints.json").read_text())[f"{server.base_url} m"]
    assert profile["stream"] is False  # runs wait for whole replies from this server


def test_doctor_shows_no_part_of_a_key_nor_a_password_in_the_url(tmp_path, monkeypatch):
    """A message was cut to 200 or 300 characters before it was redacted: a key straddling the cut was shown in part
    (20 of its 44 characters). And a password written into --base-url was shown, and kept in endpoints.json."""
    from doctor.checks import check_llm
    from doctor.endpoint import probe_endpoint

    key = "sk-proj-SECRETSECRETSECRETSECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    with ScriptedOpenAI(responder=answers_ok) as server:
        url = server.base_url.replace("http://", "http://alice:hunter2-db-password@")
        for pad in (250, 160):  # the one-token check cuts at 300, the probes at 200
            server.queue({"status": 400, "json": {"error": {"message": "x" * pad + key, "type": "invalid"}}})
        refused = check_llm(url, "m")
        server.queue(chat("OK"))
        checks = [check_llm(url, "m"), *probe_endpoint(url, "m")]
    shown = " ".join(c.detail for c in [refused, *checks])
    assert refused.status == "fail" and key[:12] not in shown and "hunter2" not in shown
    assert "alice:[redacted]@127.0.0.1" in checks[0].detail
    assert "hunter2" not in (tmp_path / "home" / "endpoints.json").read_text()


def test_doctor_checks_each_roles_own_server_and_model():
    """A role given its own server (or model) in llm.roles is called by a run, so doctor checks it too: before,
    a coder's server that was down gave five ok and nothing failing."""
    from cli.doctor_commands import endpoints
    from store.config import LLMConfig

    llm = LLMConfig.model_validate({"base_url": "http://127.0.0.1:8000/v1", "model": "big", "roles": {
        "coder": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "CODER_KEY"},
        "test_writer": {"model": "small"}, "reviewer": {"model": "big"},
        "log_parser": {"base_url": "http://127.0.0.1:9/v1"}, "video_analyst": {"offline": True, "model": "v"}}})
    assert endpoints(llm, None, None) == {
        ("http://127.0.0.1:8000/v1", "big", "OPENAI_API_KEY"): [],
        ("http://127.0.0.1:9/v1", "big", "CODER_KEY"): ["coder"],
        ("http://127.0.0.1:9/v1", "big", ""): ["log_parser"],
        ("http://127.0.0.1:8000/v1", "small", "OPENAI_API_KEY"): ["test_writer"]}
