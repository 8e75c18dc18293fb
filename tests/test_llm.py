"""The LLM path through the real openai client against a scripted server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict

from roles.edits import Edit
from roles.llm import LLMClient
from roles.llm_replay import ReplayClient
from roles.llm_usage import LLMError, Usage
from store.config import LLMConfig, Price
from store.transcripts import TranscriptRecorder
from tests.scripted_openai import ScriptedOpenAI


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: str
    score: float


def chat(content: str | None, prompt_tokens: int = 100, completion_tokens: int = 20, refusal: str | None = None) -> dict:
    return {"json": {"id": "c1", "object": "chat.completion", "created": 0, "model": "scripted",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content, "refusal": refusal}}],
                     "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                               "total_tokens": prompt_tokens + completion_tokens}}}


@pytest.fixture
def server():
    with ScriptedOpenAI() as s:
        yield s


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = LLMConfig(model="scripted", base_url=server.base_url, retry_base_s=0.01, timeout_s=2,
                       prices={"scripted": Price(input=1.0, output=2.0)})
    return LLMClient(config, Usage())


def test_structured_reply_is_parsed_costed_and_recorded(tmp_path, server, client):
    server.queue(chat(json.dumps({"verdict": "accept", "score": 1.5})))
    transcript = TranscriptRecorder(tmp_path).for_role(3, "reviewer")
    answer = client.structured(transcript, [{"role": "user", "content": "judge"}], Answer)
    assert answer == Answer(verdict="accept", score=1.5)
    body = server.requests[0]["body"]
    assert body["model"] == "scripted" and body["response_format"]["json_schema"]["name"] == "Answer"
    assert client.usage.tokens == 120 and client.usage.usd == pytest.approx((100 * 1 + 20 * 2) / 1e6)
    kinds = [e.kind for e in transcript.entries()]
    assert kinds == ["llm_call", "parsed"]
    call = transcript.entries()[0]
    assert call.prompt_tokens == 100 and call.latency_s > 0 and call.messages[0]["content"] == "judge"
    assert transcript.path == tmp_path / "transcripts" / "0003" / "reviewer.jsonl"


def test_429_5xx_and_timeouts_are_retried(tmp_path, server, client):
    server.queue({"status": 429, "headers": {"Retry-After": "0.05"}, "json": {"error": {"message": "slow down"}}},
                 {"status": 503, "json": {"error": {"message": "overloaded"}}},
                 {"delay": 3, **chat("{}")},  # longer than the 2 s timeout
                 chat(json.dumps({"verdict": "ok", "score": 0})))
    transcript = TranscriptRecorder(tmp_path).for_role(0, "coder")
    assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).verdict == "ok"
    errors = [e.error or "" for e in transcript.entries() if e.kind == "llm_call"]
    assert "RateLimitError" in errors[0] and "InternalServerError" in errors[1] and "Timeout" in errors[2]
    assert transcript.entries()[0].retry_in_s == 0.05  # Retry-After was honoured


def test_invalid_json_is_asked_again_with_the_error(tmp_path, server, client):
    server.queue(chat("this is not json"), chat(json.dumps({"verdict": "ok"})),
                 chat(json.dumps({"verdict": "ok", "score": 2})))
    transcript = TranscriptRecorder(tmp_path).for_role(0, "coder")
    assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).score == 2
    third = server.requests[2]["body"]["messages"]
    assert "score: Field required" in third[-1]["content"]
    assert [e.kind for e in transcript.entries()].count("validation_error") == 2


def test_refusals_malformed_bodies_and_dead_servers_end_in_one_clear_error(tmp_path, server, client):
    server.queue(chat(None, refusal="I can't help with that"), {"raw": "{truncated", "status": 200},
                 chat(None, refusal="no"), chat(None, refusal="no"), chat(None, refusal="no"))
    transcript = TranscriptRecorder(tmp_path).for_role(0, "coder")
    with pytest.raises(LLMError, match="failed after 5 attempts: the model refused"):
        client.structured(transcript, [{"role": "user", "content": "x"}], Answer)
    dead = LLMClient(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1", max_retries=1, retry_base_s=0.01),
                     Usage())
    with pytest.raises(LLMError, match="APIConnectionError"):
        dead.structured(transcript, [{"role": "user", "content": "x"}], Answer)
    server.queue({"status": 400, "json": {"error": {"message": "bad model"}}})
    with pytest.raises(LLMError, match="refused the request"):
        client.structured(transcript, [{"role": "user", "content": "x"}], Answer)


def test_no_key_and_no_base_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match=r"no \$OPENAI_API_KEY and no --base-url"):
        LLMClient(LLMConfig(), Usage())


def test_replay_answers_from_recorded_transcripts(tmp_path, server, client):
    server.queue(chat(json.dumps({"verdict": "first", "score": 1})), chat(json.dumps({"verdict": "second", "score": 2})))
    recorded = TranscriptRecorder(tmp_path / "recorded")
    for _ in range(2):
        client.structured(recorded.for_role(1, "coder"), [{"role": "user", "content": "x"}], Answer)
    replay = ReplayClient(tmp_path / "recorded", Usage())
    again = TranscriptRecorder(tmp_path / "replayed").for_role(1, "coder")
    assert [replay.structured(again, [], Answer).verdict for _ in range(2)] == ["first", "second"]
    assert replay.usage.tokens == 240
    with pytest.raises(LLMError, match="no reply number 3"):
        replay.structured(again, [], Answer)
    # A recorded answer edited since, so that it no longer fits: the model's failure, said (it was "internal error").
    other = ReplayClient(tmp_path / "recorded", Usage())
    with pytest.raises(LLMError, match="reply number 1 of coder in iteration 1 is not a valid Edit"):
        other.structured(TranscriptRecorder(tmp_path / "again").for_role(1, "coder"), [], Edit)


# ---------------------------------------------------------------------------------------------- slow, local, strict

def local_client(server: ScriptedOpenAI, **settings) -> LLMClient:
    config = LLMConfig(base_url=server.base_url, retry_base_s=0.01,
                       **{"model": "scripted", "timeout_s": 2, "max_retries": 2, **settings})
    return LLMClient(config, Usage())


def chat_calls(server: ScriptedOpenAI) -> list[dict]:
    return [r["body"] for r in server.requests if r["path"].endswith("/chat/completions")]


def test_a_server_that_refuses_json_schema_is_asked_as_llama_cpp_asks(tmp_path):
    """llama-cpp-python answers a json_schema response format with a 500 naming the request's validation:
    heurist steps down to {"type": "json_object", "schema": ...} at once, with no retry, and keeps that mode."""
    with ScriptedOpenAI(profile="llama.cpp") as server:
        client = local_client(server)
        server.queue(chat(json.dumps({"verdict": "ok", "score": 1})), chat(json.dumps({"verdict": "again", "score": 2})))
        transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
        assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).verdict == "ok"
        assert client.structured(transcript, [{"role": "user", "content": "y"}], Answer).verdict == "again"
        formats = [body.get("response_format", {}).get("type") for body in chat_calls(server)]
    assert formats == ["json_schema", "json_object", "json_object"]  # the mode is kept for the next call
    assert "schema" in chat_calls(server)[1]["response_format"]
    refused = transcript.entries()[0]
    assert refused.kind == "llm_call" and "validation error" in refused.error and refused.retry_in_s is None
    assert refused.narrowed == "structured output json_schema -> json_object_schema"


def test_images_a_chat_template_cannot_take_are_described_by_path(tmp_path):
    """A message of parts makes llama-cpp-python's chat template fail with a 500 that names nothing; the same
    500 twice is the request's fault, and the images go as text."""
    with ScriptedOpenAI(profile="llama.cpp") as server:
        client = local_client(server, structured_mode="json_object_schema")
        server.queue(chat(json.dumps({"verdict": "seen", "score": 0})))
        transcript = TranscriptRecorder(tmp_path).for_role(1, "video_analyst")
        parts = [{"type": "text", "text": "what went wrong?"},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}, "path": "/clips/7.png"}]
        assert client.structured(transcript, [{"role": "user", "content": parts}], Answer).verdict == "seen"
        bodies = chat_calls(server)
    assert [isinstance(b["messages"][0]["content"], list) for b in bodies] == [True, True, False]
    assert "/clips/7.png" in bodies[2]["messages"][0]["content"] and "what went wrong?" in bodies[2]["messages"][0]["content"]
    assert all("path" not in part for part in bodies[0]["messages"][0]["content"])  # heurist's note stays home
    assert [e.narrowed for e in transcript.entries() if e.kind == "llm_call"][:2] == [
        None, "images -> described by path in text"]
    # Each call's transcript holds what that call sent (a real-model review, 2026-12-06, found the image recorded
    # for calls that sent its path as text): the image by path while it went, the text after.
    calls = [e for e in transcript.entries() if e.kind == "llm_call"]
    assert calls[0].messages[0]["content"][1] == {"type": "image", "path": "/clips/7.png"}
    assert calls[2].messages[0]["content"] == bodies[2]["messages"][0]["content"]


def test_a_request_refused_as_invalid_is_not_retried_and_names_the_settings(tmp_path):
    with ScriptedOpenAI() as server:
        client = local_client(server, structured_mode="json_schema")
        server.queue({"status": 400, "json": {"error": {"message": "Invalid schema for response_format 'Answer'",
                                                       "type": "invalid_request_error"}}})
        transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
        with pytest.raises(LLMError, match="refused the request as invalid .* set llm.structured_mode"):
            client.structured(transcript, [{"role": "user", "content": "x"}], Answer)
        assert len(chat_calls(server)) == 1  # the mode is fixed by the config: not narrowed, not retried


def test_reasoning_models_refusals_of_temperature_and_max_tokens_are_met(tmp_path):
    """OpenAI's reasoning models refuse max_tokens and any temperature but 1: heurist sends what they take."""
    with ScriptedOpenAI() as server:
        client = local_client(server)
        server.queue({"status": 400, "json": {"error": {"message": "Unsupported parameter: 'max_tokens' is not "
                                                                  "supported with this model. Use "
                                                                  "'max_completion_tokens' instead."}}},
                     {"status": 400, "json": {"error": {"message": "Unsupported value: 'temperature' does not "
                                                                  "support 0.2 with this model. Only the default "
                                                                  "(1) value is supported."}}},
                     chat(json.dumps({"verdict": "ok", "score": 1})))
        transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
        assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).verdict == "ok"
        last = chat_calls(server)[-1]
    assert "max_tokens" not in last and last["max_completion_tokens"] == 4096 and "temperature" not in last


def test_a_stalled_stream_is_abandoned_on_silence_closed_and_counted(tmp_path):
    """The timeout is on silence: a stream that stops mid-reply is left after timeout_s (not when the server
    would have finished), the connection is closed so the server stops, and what it cost is counted."""
    with ScriptedOpenAI() as server:
        client = local_client(server, timeout_s=5)
        stalled = {**chat(json.dumps({"verdict": "half way there", "score": 1})), "stall_after": 3,
                   "stall_s": "until_gone"}
        server.queue(stalled, chat(json.dumps({"verdict": "ok", "score": 2})))
        transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
        assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).score == 2
        abandoned = transcript.entries()[0]
        assert "no reply for 5 s" in abandoned.error and abandoned.latency_s < 60  # the client left: the stall did not end
        assert abandoned.partial and abandoned.tokens_estimated and abandoned.completion_tokens == 2
        assert client.usage.calls == 2 and client.usage.tokens > 120  # the abandoned call's tokens count too
        assert server.client_left.wait(30)  # the server saw the client leave: it stops generating


def test_a_call_cut_off_by_ctrl_c_is_in_its_transcript_and_counted_after_a_resume(tmp_path):
    """A Ctrl-C mid-stream stops the call at once, closes the connection, and the attempt is recorded first: its
    partial text, and its tokens billed (estimated from its text), so a resumed run counts them from the transcript."""
    from common import interrupts
    from runner.lifecycle import usage_from_transcripts

    with ScriptedOpenAI() as server:
        client = local_client(server, timeout_s=30)
        server.queue({**chat(json.dumps({"verdict": "a long and careful answer " * 8, "score": 1})),
                      "chunk_delay": 0.05, "chunk_chars": 4})
        def ctrl_c_after_three_chunks(role, fields):  # as the SIGINT handler does, read at the stream's next check
            if fields["call_tokens"] >= 3:
                interrupts.received.set()

        client.on_progress = ctrl_c_after_three_chunks
        recorder = TranscriptRecorder(tmp_path)
        try:
            with pytest.raises(KeyboardInterrupt):
                client.structured(recorder.for_role(1, "coder"), [{"role": "user", "content": "x"}], Answer)
        finally:
            interrupts.received.clear()
        assert server.client_left.wait(30)  # the server saw the client leave: it stops generating
    [call] = [e for e in recorder.read() if e.kind == "llm_call"]
    assert call.error.startswith("interrupted by Ctrl-C after ") and call.partial and call.response is None
    assert call.tokens_estimated and call.completion_tokens >= 3 and call.prompt_tokens > 0
    assert client.usage.calls == 1 and client.usage.tokens == call.prompt_tokens + call.completion_tokens
    resumed = usage_from_transcripts(TranscriptRecorder(tmp_path))
    assert (resumed.calls, resumed.tokens) == (1, client.usage.tokens)


def test_a_ctrl_c_stays_a_ctrl_c_when_its_call_cannot_be_recorded(tmp_path, monkeypatch):
    """A full disk while the cut-off call is written: the Ctrl-C goes on (the run stops as interrupted), not the
    write's error."""
    import errno

    from common import interrupts
    from store.transcripts import RoleTranscript

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with ScriptedOpenAI() as server:
        client = local_client(server, timeout_s=30)
        server.queue({**chat(json.dumps({"verdict": "an answer " * 8, "score": 1})), "chunk_delay": 0.05,
                      "chunk_chars": 4})
        client.on_progress = lambda role, fields: interrupts.received.set()
        monkeypatch.setattr(RoleTranscript, "write", disk_full)
        try:
            with pytest.raises(KeyboardInterrupt):
                client.structured(TranscriptRecorder(tmp_path).for_role(1, "coder"), [{"role": "user", "content": "x"}],
                                  Answer)
        finally:
            interrupts.received.clear()
    assert client.usage.calls == 1  # counted in this session all the same


def test_a_slow_stream_that_keeps_coming_is_never_cut_off(tmp_path):
    with ScriptedOpenAI() as server:
        client = local_client(server, timeout_s=2)
        server.queue({**chat(json.dumps({"verdict": "slow but steady " * 3, "score": 3})), "chunk_delay": 0.2,
                      "chunk_chars": 4})
        transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
        assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).score == 3
        [call] = [e for e in transcript.entries() if e.kind == "llm_call"]
    assert call.error is None and call.latency_s > 2  # longer than the silence allowed, and whole


def test_truncation_is_named_and_the_reask_has_room_and_differs(tmp_path):
    with ScriptedOpenAI() as server:
        client = local_client(server, max_tokens=50)
        cut = chat('{"verdict": "a long answer that')
        cut["json"]["choices"][0]["finish_reason"] = "length"
        server.queue(cut, chat("not json at all"), chat(json.dumps({"verdict": "ok", "score": 1})))
        transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
        assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).verdict == "ok"
        first, second, third = chat_calls(server)
    failures = [e for e in transcript.entries() if e.kind == "validation_error"]
    assert "cut off at max_tokens=50" in failures[0].error and "EOF" not in failures[0].error
    assert second["max_tokens"] == 100 and "cut off after 50 tokens" in second["messages"][-1]["content"]
    assert '"verdict": "a long answer that' not in json.dumps(second["messages"])  # the cut reply is not resent
    # Each re-ask differs from the request before it (seed and temperature), and only the last failure is quoted.
    assert len({(b["seed"], b["temperature"]) for b in (first, second, third)}) == 3
    assert len(third["messages"]) == len(first["messages"]) + 2 and "not json at all" in third["messages"][-2]["content"]


def test_the_live_view_shows_a_call_as_it_streams(tmp_path):
    """The client's progress reaches the panel: role, attempt, elapsed time, tokens so far and the text arriving."""
    from io import StringIO

    from rich.console import Console

    from cli.live import LiveView

    console = Console(file=StringIO(), width=160, force_terminal=False)
    view = LiveView(console)
    with ScriptedOpenAI() as server:
        client = local_client(server)
        client.on_progress = lambda role, fields: view("model_call", {"role": role, **fields})
        server.queue({**chat(json.dumps({"verdict": "thinking it over", "score": 1})), "chunk_delay": 0.1,
                      "chunk_chars": 4})
        client.structured(TranscriptRecorder(tmp_path).for_role(1, "coder"), [{"role": "user", "content": "x"}],
                          Answer)
    console.print(view.render())
    shown = console.file.getvalue()
    assert "coder · attempt 1 ·" in shown and "tokens so far" in shown and "gives up after 2 s of silence" in shown
    assert "thinking" in shown  # the text as it arrived


def test_the_live_view_names_every_analyst_in_flight_and_says_which_tokens_are_estimated():
    """A real-model review (2026-12-06): the panel read "analyse video analyst · role log_parser" (the last node's
    name beside another thread's role), and showed estimated tokens as counted."""
    from io import StringIO

    from rich.console import Console

    from cli.live import LiveView

    console = Console(file=StringIO(), width=200, force_terminal=False)
    view = LiveView(console)
    fields = {"tokens": 578, "usd": 0.0, "unpriced_tokens": 578, "estimated_tokens": 578}
    for kind, more in (("stage", {"node": "evaluate"}), ("stage", {"node": "analyse_video_analyst"}),
                       ("role", {"role": "video_analyst"}), ("stage", {"node": "analyse_log_parser"}),
                       ("role", {"role": "log_parser"})):
        view(kind, {**fields, **more})
    console.print(view.render())
    shown = " ".join(console.file.getvalue().split())
    assert "analysing the evaluation, the analysts side by side · role video_analyst, log_parser" in shown, shown
    assert "578 tokens (est.)" in shown
    view("stage", {**fields, "node": "recall"})
    view("role", {**fields, "role": "coder", "estimated_tokens": 500})
    console.print(view.render())
    shown = " ".join(console.file.getvalue().split())
    assert "role coder" in shown and "578 tokens (500 est.)" in shown


def test_a_resumed_session_marks_where_it_starts_in_each_transcript(tmp_path):
    from store.transcripts import Decision

    first = TranscriptRecorder(tmp_path)
    first.for_role(2, "coder").write(Decision, summary="before the kill")
    first.for_role(2, "coder").write(Decision, summary="same session, another attempt")
    second = TranscriptRecorder(tmp_path)  # the session after a resume
    second.for_role(2, "coder").write(Decision, summary="after the resume")
    second.for_role(2, "coder").write(Decision, summary="still after")
    second.for_role(3, "coder").write(Decision, summary="a new iteration: nothing to mark")
    assert [e.kind for e in second.read(2, "coder")] == ["decision", "decision", "resumed", "decision", "decision"]
    assert [e.kind for e in second.read(3, "coder")] == ["decision"]


def test_active_time_survives_a_kill_to_within_one_beat(tmp_path):
    """The session's seconds are written down as it runs; the next session starts from them, not from the
    state's count at the last iteration's end."""
    from store.active_time import ActiveTime

    killed = ActiveTime(tmp_path, at_least_before=30.0)
    killed.started -= 600  # ten minutes into a slow iteration ...
    killed.write()  # ... the last beat before the kill
    resumed = ActiveTime(tmp_path, at_least_before=30.0)
    assert resumed.before >= 630 and resumed.total_s() >= 630
    assert ActiveTime(tmp_path / "new", at_least_before=42.0).before == 42.0  # no beat yet: the state's count


def test_a_roles_next_call_in_the_same_iteration_is_not_the_same_request(tmp_path):
    """The coder asked again after a failed check must not get the identical answer from a local server that
    answers one request the same way: its seed and temperature move on."""
    with ScriptedOpenAI() as server:
        client = local_client(server, validation_retries=1)
        server.queue(chat(json.dumps({"verdict": "a", "score": 1})), chat(json.dumps({"verdict": "b", "score": 2})))
        recorder = TranscriptRecorder(tmp_path)  # one session of the run (another would take the first answer)
        for _ in range(2):
            client.structured(recorder.for_role(4, "coder"), [{"role": "user", "content": "x"}], Answer)
        first, second = chat_calls(server)
    assert (first["seed"], second["seed"]) == (0, 2) and second["temperature"] > first["temperature"]


def test_an_error_inside_a_stream_and_an_empty_cut_off_reply_fail_one_attempt_not_the_run(tmp_path):
    """OpenAI and vLLM send a failure mid-stream as data: {"error": ...}; a reasoning model can spend all of
    max_tokens before any content. Each is one recorded attempt; the call goes on."""
    with ScriptedOpenAI() as server:
        client = local_client(server, max_tokens=64)
        empty_cut = chat("")
        empty_cut["json"]["choices"][0]["finish_reason"] = "length"
        server.queue({**chat(json.dumps({"verdict": "x", "score": 1})), "stream_error": "CUDA out of memory"},
                     empty_cut, chat(json.dumps({"verdict": "ok", "score": 2})))
        transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
        assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).score == 2
        bodies = chat_calls(server)
    calls = [e for e in transcript.entries() if e.kind == "llm_call"]
    assert "CUDA out of memory" in calls[0].error and calls[0].retry_in_s is not None
    assert any("cut off at max_tokens=64" in e.error for e in transcript.entries() if e.kind == "validation_error")
    assert [b["max_tokens"] for b in bodies] == [64, 64, 128]


def test_the_runs_key_goes_only_to_the_runs_server(tmp_path, monkeypatch):
    """A role with a server of its own (a local coder) never gets the OpenAI key; it gets its own, if named."""
    from store.config import RoleLLM

    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-runs-key-0123456789")
    monkeypatch.setenv("LOCAL_KEY", "local-key-0123456789")
    with ScriptedOpenAI() as run_server, ScriptedOpenAI() as coder_server, ScriptedOpenAI() as tester_server:
        config = LLMConfig(model="scripted", base_url=run_server.base_url, roles={
            "coder": RoleLLM(base_url=coder_server.base_url),
            "test_writer": RoleLLM(base_url=tester_server.base_url, api_key_env="LOCAL_KEY")})
        client = LLMClient(config, Usage())
        for server, role in ((run_server, "reviewer"), (coder_server, "coder"), (tester_server, "test_writer")):
            server.queue(chat(json.dumps({"verdict": "ok", "score": 1})))
            client.structured(TranscriptRecorder(tmp_path).for_role(1, role), [{"role": "user", "content": "x"}],
                              Answer)
        auth = [s.requests[0]["auth"] for s in (run_server, coder_server, tester_server)]
    assert auth == ["Bearer sk-the-runs-key-0123456789", "Bearer not-needed", "Bearer local-key-0123456789"]


# ---------------------------------------------------------------------------------------------- today's OpenAI models

def post(server: ScriptedOpenAI, body: dict) -> tuple[int, str]:
    """A raw request, for what the client itself would never send."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(server.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_strict_server_refuses_what_the_real_api_refuses(server):
    user = {"role": "user", "content": "hi"}
    cases = {
        "Unrecognized request argument supplied: bogus": {"model": "gpt-4.1", "messages": [user], "bogus": 1},
        "'max_tokens' is not supported": {"model": "gpt-5-mini", "messages": [user], "max_tokens": 10},
        "'temperature' does not support 0.2": {"model": "o4-mini", "messages": [user], "temperature": 0.2},
        "'reasoning_effort' is not supported": {"model": "gpt-4.1", "messages": [user], "reasoning_effort": "low"},
        "content[0].path": {"model": "gpt-4.1", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "x", "path": "/tmp/a.png"}]}]},
        "must be a response to a preceding message with 'tool_calls'": {"model": "gpt-4.1", "messages": [
            user, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]},
        "did not have response messages: call_9": {"model": "gpt-4.1", "messages": [
            user, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, user]},
    }
    for words, body in cases.items():
        status, text = post(server, body)
        assert status == 400 and words in text, (words, status, text)
    # What the API takes: a reasoning model with max_completion_tokens and the default temperature.
    server.queue(chat("fine"))
    assert post(server, {"model": "gpt-5-mini", "messages": [user], "max_completion_tokens": 10,
                         "temperature": 1, "reasoning_effort": "minimal"})[0] == 200


@pytest.mark.parametrize("model", ["gpt-5-mini", "gpt-5.4", "o3", "o4-mini-2025-04-16", "openai/gpt-5-nano"])
def test_a_reasoning_model_is_sent_what_it_accepts_from_the_first_call(tmp_path, server, model):
    """No 400 to learn from: max_completion_tokens, no temperature, reasoning_effort where set, decided by name."""
    client = local_client(server, model=model, reasoning_effort="low")
    server.queue(chat(json.dumps({"verdict": "ok", "score": 1})))
    transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
    assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).verdict == "ok"
    body = chat_calls(server)[0]
    assert len(chat_calls(server)) == 1
    assert body["max_completion_tokens"] == 16384 and "max_tokens" not in body and "temperature" not in body
    assert body["reasoning_effort"] == "low"


def test_other_models_keep_their_temperature_and_the_config_overrides_the_name(tmp_path, server):
    server.queue(chat(json.dumps({"verdict": "ok", "score": 1})), chat(json.dumps({"verdict": "ok", "score": 1})))
    transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
    local_client(server, model="gpt-5-chat-latest", reasoning_effort="low").structured(
        transcript, [{"role": "user", "content": "x"}], Answer)
    local_client(server, model="my-o1-finetune-on-vllm", reasoning=False).structured(
        transcript, [{"role": "user", "content": "x"}], Answer)
    for body in chat_calls(server):
        assert body["max_tokens"] == 4096 and body["temperature"] == 0.2 and "reasoning_effort" not in body


# ("12" and true reach heurist as 12 and 1: the openai client's own models read them as counts.)
@pytest.mark.parametrize("count", [-1000, 0, float("nan"), float("inf"), 10.7, 10**12])
def test_a_servers_token_counts_that_are_no_counts_are_counted_from_the_text(tmp_path, server, client, count):
    """A server's usage is its word: negative counts took a run past its budget, zero let it go on for ever, NaN
    or text stopped it (on every resume). Such a count is no count: the call is counted from its text, as one
    with no usage at all is, and recorded as estimated."""
    import math

    reply = chat(json.dumps({"verdict": "accept", "score": 1.5}) + " " * 400)
    reply["json"]["usage"] = {"prompt_tokens": count, "completion_tokens": count, "total_tokens": count}
    server.queue(reply)
    transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
    assert client.structured(transcript, [{"role": "user", "content": "judge " * 200}], Answer).verdict == "accept"
    call = transcript.entries()[0]
    assert call.tokens_estimated and call.prompt_tokens >= 200 and call.completion_tokens > 0
    assert client.usage.tokens == call.prompt_tokens + call.completion_tokens
    assert math.isfinite(client.usage.usd) and client.usage.usd > 0
    # Three characters a token, so the estimate errs over a budget (four ran 22% under a real tokenizer's count on
    # code), and the run's totals say how much of them is estimated, here and after a resume (from the transcript).
    assert call.prompt_tokens >= len(json.dumps([{"role": "user", "content": "judge " * 200}])) // 3
    assert client.usage.estimated_tokens == client.usage.tokens
    from runner.lifecycle import usage_from_transcripts
    resumed = usage_from_transcripts(TranscriptRecorder(tmp_path))
    assert (resumed.tokens, resumed.estimated_tokens) == (client.usage.tokens, client.usage.tokens)
    # A replay of the run counts its recorded estimate as an estimate, and so does a resumed replay.
    replay = ReplayClient(tmp_path, Usage())
    replay.structured(TranscriptRecorder(tmp_path / "replayed").for_role(1, "coder"), [], Answer)
    assert (replay.usage.tokens, replay.usage.estimated_tokens) == (client.usage.tokens, client.usage.tokens)
    again = usage_from_transcripts(TranscriptRecorder(tmp_path / "replayed"))
    assert (again.tokens, again.estimated_tokens) == (client.usage.tokens, client.usage.tokens)


def test_estimated_tokens_are_said_to_be_estimated_wherever_totals_are_shown():
    """A real-model review (2026-12-06): llama.cpp's server streams no counts, heurist estimated them, and the
    summary, `heurist show`, the live panel and the report showed the totals as if counted."""
    from common.formatting import tokens_text

    assert tokens_text(23_212) == "23,212 LLM tokens"
    assert tokens_text(23_212, 23_212) == "23,212 LLM tokens (all estimated from the text: the server gave no counts)"
    assert tokens_text(23_212, 540) == "23,212 LLM tokens (540 estimated from the text: the server gave no counts)"
    usage = Usage()
    usage.add(100, 0.0)
    usage.add(40, None, estimated=True)
    assert (usage.tokens, usage.estimated_tokens, usage.unpriced_tokens) == (140, 40, 40)


def test_a_stream_that_never_goes_silent_is_still_bounded(tmp_path, server, monkeypatch):
    """The read timeout ends a silent stream, not one that keeps sending: chunks with nothing of the reply in them
    end the call after the silence allowed, and a reply past max_tokens is left where it passes it. Each call
    is billed for what came, and the server sees the client leave."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # Two seconds of silence allowed: enough for the scripted server's first byte on a loaded machine (with one, a
    # CI run beside other tests saw none within it), and the streams below outlast it many times over.
    config = LLMConfig(model="scripted", base_url=server.base_url, retry_base_s=0.01, timeout_s=2, max_retries=0,
                       max_tokens=50, prices={"scripted": Price(input=1.0, output=2.0)})
    client = LLMClient(config, Usage())
    transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
    # Empty chunks every 50 ms, for more than the silence allowed: ended, whatever this machine's speed.
    answer = json.dumps({"verdict": "ok", "score": 1})
    server.queue({**chat(answer), "empty_chunks": 200, "chunk_delay": 0.05})
    with pytest.raises(LLMError, match="nothing of the reply in them"):
        client.structured(transcript, [{"role": "user", "content": "x"}], Answer)
    # The cut at max_tokens needs no silence at all: a patient client, as the same usage.
    patient = LLMClient(config.model_copy(update={"timeout_s": 60}), client.usage)
    server.queue({**chat(answer + " " * 10_000), "chunk_chars": 1})  # 10,000 chunks against max_tokens 50
    with pytest.raises(LLMError, match="past the 50 tokens"):
        patient.structured(transcript, [{"role": "user", "content": "x"}], Answer)
    calls = [e for e in transcript.entries() if e.kind == "llm_call"]
    assert len(calls) == 2 and all(c.completion_tokens is not None for c in calls)  # each billed
    assert client.usage.tokens > 0
    # Keep-alive comments every 50 ms (for 30 s: long past any machine's delay): bytes, never a chunk, so the read
    # timeout never fires; ended at twice the silence allowed.
    server.queue({**chat(answer), "keepalives": 600, "chunk_delay": 0.05})
    with pytest.raises(LLMError, match="kept its connection busy"):
        client.structured(transcript, [{"role": "user", "content": "x"}], Answer)
    # Reasoning streamed apart (no reply text while the model thinks, for longer than the silence allowed) is
    # progress all the same: the answer comes.
    server.queue({**chat(answer), "reasoning_chunks": 60, "chunk_delay": 0.05})
    assert client.structured(transcript, [{"role": "user", "content": "x"}], Answer).verdict == "ok"


def test_a_model_without_a_price_is_counted_in_tokens_never_as_zero_dollars(tmp_path, server):
    from common.formatting import cost_text
    from store.config import ConfigError, RunConfig, check_priced

    client = local_client(server, model="qwen2.5-coder-local")
    server.queue(chat(json.dumps({"verdict": "ok", "score": 1}), prompt_tokens=300, completion_tokens=30))
    transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
    client.structured(transcript, [{"role": "user", "content": "x"}], Answer)
    call = transcript.entries()[0]
    assert call.usd is None and call.priced is False
    assert client.usage.usd == 0 and client.usage.unpriced_tokens == 330
    assert cost_text(client.usage.usd, client.usage.unpriced_tokens) == "unpriced (330 tokens)"
    # A USD budget cannot be kept on it: refused before the run starts, with the fix.
    config = RunConfig.model_validate({"task": "CartPole-v1", "budget": {"usd": 1.0},
                                       "llm": {"model": "qwen2.5-coder-local", "base_url": server.base_url}})
    with pytest.raises(ConfigError, match=r'has no price; add \[llm.prices."qwen2.5-coder-local"\]'):
        check_priced(config)


def test_prices_of_dated_snapshots_and_cached_prompt_tokens():
    config = LLMConfig()
    assert config.price("gpt-5-mini-2025-08-07") == config.price("gpt-5-mini")
    assert config.price("gpt-4.1-nano") is not None and config.price("llama-3-8b") is None
    client = LLMClient(LLMConfig(base_url="http://127.0.0.1:9/v1"), Usage())
    full = client.cost("gpt-5.4", 1_000_000, 0)
    assert full == pytest.approx(2.5) and client.cost("gpt-5.4", 1_000_000, 0, cached_tokens=1_000_000) == \
        pytest.approx(0.25)


def test_a_tool_turn_on_an_endpoint_in_json_object_mode(tmp_path, server):
    """A turn has no reply schema: a json_object or text endpoint gets no schema note, and the call goes out."""
    from tests.scripted_openai import tool_call_reply

    for mode in ("json_object", "text"):
        client = local_client(server, structured_mode=mode)
        server.queue(tool_call_reply(("read_file", {"path": "."})))
        reply = client.turn(TranscriptRecorder(tmp_path).for_role(1, "coder"), [{"role": "user", "content": "go"}],
                            [{"type": "function", "function": {"name": "read_file", "parameters": {}}}])
        assert [c["name"] for c in reply.tool_calls] == ["read_file"]
        assert "JSON schema" not in json.dumps(chat_calls(server)[-1]["messages"])


def test_every_variable_holding_a_key_is_named_the_runs_and_each_roles():
    """A run treats each as a secret whatever its name (runner.lifecycle): a role's own server's key, in a variable
    whose name does not look secret, reached transcripts, the ledger and the summary when a server echoed it."""
    config = LLMConfig.model_validate({"api_key_env": "MY_KEY", "roles": {
        "coder": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "CODER_BEARER"}, "reviewer": {"model": "m"}}})
    assert config.key_variables() == ["MY_KEY", "CODER_BEARER"]


def _odd(variant: str) -> dict:
    """A tool-calling reply with one field of a JSON type the API never sends (some servers and proxies do)."""
    from tests.scripted_openai import tool_call_reply

    if variant == "id":
        return tool_call_reply(("read_file", {"path": "."}), call_ids=[123])
    reply = tool_call_reply(("read_file", {"path": "."}))
    message = reply["json"]["choices"][0]["message"]
    if variant == "name":
        message["tool_calls"][0]["function"]["name"] = 7
    elif variant == "arguments":
        message["tool_calls"][0]["function"]["arguments"] = ["path", "."]
    elif variant == "text parts":  # some servers send content so: taken as the text it holds
        message["content"] = [{"type": "text", "text": "look"}, {"type": "text", "text": "ing"}]
    elif variant == "object arguments":  # some proxies send arguments so: taken as the JSON they are
        message["tool_calls"][0]["function"]["arguments"] = {"path": "."}
    else:
        message["content"] = [{"type": "image_url", "image_url": {"url": "x"}}]
    return reply


@pytest.mark.parametrize(("variant", "stream"), [("id", True), ("name", False), ("arguments", False),
                                                 ("content", False), ("content", True), ("text parts", True)])
def test_a_reply_field_of_the_wrong_json_type_fails_one_attempt_not_the_run(tmp_path, server, variant, stream):
    """Found by a red-team review (2026-12-05): a tool call's id or name that is a number, arguments
    sent as a list, or content that is no text went past the attempt into the transcript's records and the
    coder's journal, whose validation ended the run (for every role, for the content). Each is now a reply of an
    unexpected shape: one failed attempt, and the call goes on. (Streamed, even text parts are no chunk's content.)"""
    from tests.scripted_openai import tool_call_reply

    client = local_client(server, stream=stream)
    server.queue(_odd(variant), tool_call_reply(("read_file", {"path": "policy.py"})))
    transcript = TranscriptRecorder(tmp_path).for_role(1, "coder")
    reply = client.turn(transcript, [{"role": "user", "content": "go"}],
                        [{"type": "function", "function": {"name": "read_file", "parameters": {}}}])
    assert [(c["name"], json.loads(c["arguments"])) for c in reply.tool_calls] == [("read_file", {"path": "policy.py"})]
    calls = [e for e in transcript.entries() if e.kind == "llm_call"]
    assert len(calls) == 2 and "unexpected response shape" in calls[0].error and "not text" in calls[0].error


def test_a_node_run_again_after_a_crash_takes_the_answer_its_request_got_and_its_replay_gives_the_same(tmp_path,
                                                                                                     server):
    """Found by a red-team review (2026-12-05): a run killed between a role's answer and its node's checkpoint asked
    the model again on resume (a second paid call), acted on the second answer, and its replay gave the first.
    Now a request asked again in a resumed session takes the answer it got after the checkpoint the session
    resumed from, as many times as it got one; an answer a node got before that checkpoint was used, and the same
    request asked again later is a new question (a review of the first version handed such an answer out again)."""
    import time as clock

    asked = [{"role": "user", "content": "propose"}]
    first_session = local_client(server)
    server.queue(*[chat(json.dumps({"verdict": v, "score": 1})) for v in ("kept", "A", "A2")])
    before = TranscriptRecorder(tmp_path).for_role(1, "simplifier")
    assert first_session.structured(before, asked, Answer).verdict == "kept"  # a node whose result was checkpointed
    checkpoint = clock.time()
    while clock.time() <= checkpoint:  # the next lines are written after it, whatever the clock's resolution
        clock.sleep(0.001)
    assert [first_session.structured(before, asked, Answer).verdict for _ in range(2)] == ["A", "A2"]
    # Killed before the next checkpoint; a resume is another session, with its own client, from that checkpoint.
    recorder = TranscriptRecorder(tmp_path)
    recorder.resumed_after = checkpoint
    resumed = recorder.for_role(1, "simplifier")
    again = local_client(server)
    requests = len(chat_calls(server))
    assert [again.structured(resumed, asked, Answer).verdict for _ in range(2)] == ["A", "A2"]
    assert len(chat_calls(server)) == requests  # nothing asked, nothing paid
    server.queue(chat(json.dumps({"verdict": "C", "score": 3})), chat(json.dumps({"verdict": "D", "score": 4})))
    assert again.structured(resumed, asked, Answer).verdict == "C"  # a third time: never answered after it
    assert again.structured(resumed, [{"role": "user", "content": "other"}], Answer).verdict == "D"  # another request
    assert len([e for e in resumed.entries() if e.kind == "parsed" and e.reused]) == 2
    # A fresh start (no checkpoint) takes nothing from the transcript.
    fresh = TranscriptRecorder(tmp_path).for_role(1, "simplifier")
    server.queue(chat(json.dumps({"verdict": "E", "score": 5})))
    assert local_client(server).structured(fresh, asked, Answer).verdict == "E"

    replay = ReplayClient(tmp_path, Usage())
    replayed = TranscriptRecorder(tmp_path / "replay").for_role(1, "simplifier")
    assert [replay.structured(replayed, asked, Answer).verdict for _ in range(4)] == ["kept", "A", "A2", "C"]


@pytest.mark.parametrize("variant", ["text parts", "object arguments"])
def test_content_as_text_parts_and_arguments_as_an_object_are_taken_as_what_they_hold(tmp_path, server, variant):
    client = local_client(server, stream=False)
    server.queue(_odd(variant))
    reply = client.turn(TranscriptRecorder(tmp_path).for_role(1, "coder"), [{"role": "user", "content": "go"}],
                        [{"type": "function", "function": {"name": "read_file", "parameters": {}}}])
    assert [(c["name"], json.loads(c["arguments"])) for c in reply.tool_calls] == [("read_file", {"path": "."})]
    assert reply.content == ("looking" if variant == "text parts" else "")



def test_refusals_from_real_servers_give_up_what_they_name_and_no_more():
    """From a review against the servers' own words (2026-12-06): vLLM without its tool flags and llama.cpp without
    --jinja refuse `tools` in words heurist did not read (the coder failed instead of asking for each call as JSON;
    llama.cpp's 500 was retried as a passing fault); a context-length or max_tokens refusal turned images off for
    the rest of a run; gpt-5.4 and later refuse reasoning_effort beside tools, which took the effort off every call."""
    from roles.llm_requests import Capabilities, looks_invalid

    vllm = '400: "auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
    assert Capabilities().narrow(vllm, False, 0).startswith("tools -> ")
    llama = "500: tools param requires --jinja flag"
    assert looks_invalid(llama) and Capabilities().narrow(llama, True, 0).startswith("tools -> ")
    for other in ("400: max_tokens is too large: 40000. This model supports at most 16384",
                  "400: Invalid 'messages[2].tool_calls[0].id': string too long. Expected a string with maximum "
                  "length 40, but got a string with length 46 instead."):
        caps = Capabilities()
        assert caps.narrow(other, True, 0) is None and caps.images, other
    overflow = "400: This model's maximum context length is 8192 tokens. However, you requested 12000 tokens"
    assert Capabilities().narrow(overflow, True, 0) == "images -> described by path in text"  # theirs, maybe
    template = '500: can only concatenate str (not "list") to str'  # names nothing: still the images' (llama-cpp)
    assert Capabilities().narrow(template, True, 0) == "images -> described by path in text"
    effort = ("400: Function tools with reasoning_effort are not supported for gpt-5.5 in /v1/chat/completions. "
              "Please use /v1/responses instead.")
    caps = Capabilities()
    assert caps.narrow(effort, False, 0, had_tools=True).startswith("reasoning_effort -> not sent with tools")
    assert caps.reasoning_effort and caps.tools and not caps.effort_with_tools
    assert Capabilities().narrow("400: Unsupported parameter: 'reasoning_effort'", False, 0) == \
        "reasoning_effort -> the model's default"

    openai_api = {"base_url": "https://api.openai.com/v1"}  # no key needed: nothing is sent
    client = LLMClient(LLMConfig(model="gpt-5.5", reasoning_effort="low", **openai_api), Usage())
    s = client.settings_for("coder")
    tool = [{"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}]
    assert client._request(s, caps, [], None, 100, 0, tools=tool).get("reasoning_effort") is None
    assert client._request(s, caps, [], Answer, 100, 0)["reasoning_effort"] == "low"  # calls without tools keep it
    # A reasoning model streams nothing while it thinks: its silence allowed is 600 s unless the config says.
    assert s.timeout_s == 600 and client.settings_for("x").timeout_s == 600
    assert LLMClient(LLMConfig(model="gpt-4.1", **openai_api), Usage()).settings_for("coder").timeout_s == 120
    assert LLMClient(LLMConfig(model="gpt-5.5", timeout_s=30, **openai_api), Usage()).settings_for("c").timeout_s == 30


def test_a_model_served_only_by_the_responses_api_is_one_line_that_says_so(tmp_path):
    """gpt-5-codex, gpt-5-pro and o3-pro answer chat completions with a 404 naming v1/responses: the line says heurist
    calls chat completions and what to choose, not that the model may not exist (a review, 2026-12-06)."""
    with ScriptedOpenAI() as server:
        client = local_client(server, model="gpt-5-codex")
        server.queue({"status": 404, "json": {"error": {
            "message": "This model is only supported in v1/responses and not in v1/chat/completions.",
            "type": "invalid_request_error"}}})
        with pytest.raises(LLMError, match=r"'gpt-5-codex' is served only by the Responses API .* heurist calls "
                                           r"chat completions; choose a model chat completions serve in llm.model"):
            client.structured(TranscriptRecorder(tmp_path).for_role(1, "coder"), [{"role": "user", "content": "x"}],
                              Answer)
        assert len(chat_calls(server)) == 1  # not retried
