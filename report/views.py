"""The report's typed view of a run: what the template and the plots are given, and nothing they must compute."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Point(_View):
    """One dev-split evaluation on the score plot, at the env steps and model cost spent when it finished."""

    kind: Literal["start", "search", "candidate", "holdout"]
    mean: float
    env_steps: int
    usd: float
    tokens: int
    seeds: int
    iteration: int | None = None
    accepted: bool | None = None


class Part(_View):
    text: str | None = None
    image: str | None = None  # a file path (the transcript keeps images by path)


class Message(_View):
    role: str
    parts: list[Part]


class Entry(_View):
    """One transcript line, readable: a model call with its messages and reply, a parsed answer, or a decision."""

    kind: str
    heading: str
    time: str
    messages: list[Message] = []
    response: str | None = None
    parsed: str | None = None
    error: str | None = None
    details: str | None = None


class RoleTranscript(_View):
    role: str
    entries: list[Entry]
    calls: int
    tokens: int
    usd: float
    latency_s: float
    unpriced_tokens: int = 0
    prompt_tokens: int = 0  # the largest prompt this role sent this iteration (what trimming a prompt buys)


class ClipView(_View):
    seed: int
    step: int
    label: str
    mp4: str
    png: str | None


class Recalled(_View):
    type: str
    id: str
    similarity: float | None
    text: str


class IterationView(_View):
    iteration: int
    accepted: bool
    reason: str
    reasons: list[str]
    edit: str | None
    mean_before: float | None
    mean_candidate: float | None
    mean_after: float | None
    commit: str | None
    analyses: dict[str, str]
    diff: str
    check_error: str | None
    tests_written: dict[str, str]
    tests_added: list[str]
    failures: dict[str, int]
    failure_seeds: int
    clips: list[ClipView]
    recalled: list[Recalled]
    transcripts: list[RoleTranscript]
    spent: dict[str, float]


class MemoryRecordView(_View):
    type: str
    id: str
    text: str
    iteration: int | None
    detail: str


class ComplexityPoint(_View):
    """The kept policy's complexity after an iteration (0: the starting policy), ``envs.complexity``'s measures."""

    iteration: int
    lines: int
    branches: int
    ast_nodes: int
    simplified: bool = False  # the policy a simplify stage kept after this iteration (graph.simplify)


class LessonUse(_View):
    """A lesson this run was shown, and what became of the edits that followed."""

    id: str
    statement: str
    family: str
    iterations: list[int]  # where the coder was shown it
    accepted: int  # of those iterations, how many accepted their edit
    helped_everywhere: str  # its record across every run: helped N of M times recalled


class Commit(_View):
    commit: str
    subject: str
    body: str


class ReportData(_View):
    run_dir: str
    run_id: str
    task: str
    protocol: str
    roles_label: str
    status: str
    stop_reason: str | None
    created: str
    replay_of: str | None
    dev_seeds: list[int]
    target: float | None
    max_return: float | None
    start_mean: float | None
    best_mean: float | None
    start_failed: int | None = None  # episodes of its dev evaluation that failed: its mean is over the others
    best_failed: int | None = None
    holdout: dict[str, Any] | None
    holdout_enabled: bool
    spent: dict[str, float]
    points: list[Point]
    iterations: list[IterationView]
    failure_kinds: list[str]
    policy_label: str
    policy_source: str
    git_history: list[Commit]
    git_note: str | None = None  # why the workspace's history is not shown
    task_note: str | None = None  # why the task's target is not shown
    memory_note: str | None
    memory_added: list[MemoryRecordView]
    memory_used: list[MemoryRecordView]
    lessons_used: list[LessonUse] = []
    complexity: list[ComplexityPoint] = []
    torn_lines: int
