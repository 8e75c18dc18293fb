"""The LLM path through the real openai client against a scripted server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict

from roles.llm import LLMClient, LLMError, ReplayClient, Usage
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
