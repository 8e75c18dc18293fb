"""What a run's report shows, gathered from the run directory alone.

Read-only, and built only from records a crash cannot lose: the ledger, the transcripts,
the cached evaluations, the workspace's git history and the memory store. So a report of
a run killed an hour ago shows everything up to the kill, and a report written while the
run goes on shows the run as it stands.
"""

from __future__ import annotations

import bisect
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from envs.evaluator import EvalResult
from envs.ledger import Ledger
from envs.tasks import get_task
from graph.run import read_record, run_status
from graph.transcripts import TranscriptRecorder, call_costs
from graph.workspace import Workspace

# Transcript fields every entry has; the rest is the entry's own content.
_ENTRY_FRAME = {"time", "iteration", "role", "kind"}


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
    holdout: dict[str, Any] | None
    holdout_enabled: bool
    spent: dict[str, float]
    points: list[Point]
    iterations: list[IterationView]
    failure_kinds: list[str]
    policy_label: str
    policy_source: str
    git_history: list[Commit]
    memory_note: str | None
    memory_added: list[MemoryRecordView]
    memory_used: list[MemoryRecordView]
    torn_lines: int


def _iso_to_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


class _CostClock:
    """Cumulative model tokens and dollars at any moment of the run, from the transcripts' call records."""

    def __init__(self, entries: list[dict[str, Any]]):
        costs = sorted(call_costs(entries))
        self.times = [c[0] for c in costs]
        self.tokens, self.usd = [0], [0.0]
        for _, tokens, usd in costs:
            self.tokens.append(self.tokens[-1] + tokens)
            self.usd.append(self.usd[-1] + usd)

    def at(self, epoch: float) -> tuple[int, float]:
        i = bisect.bisect_right(self.times, epoch)
        return self.tokens[i], self.usd[i]


def _points(records: list[dict[str, Any]], start_sha: str | None, dev_seeds: list[int],
            clock: _CostClock) -> list[Point]:
    """Every scored dev evaluation, in the order it happened, at the env steps spent by then."""
    points: list[Point] = []
    steps, started = 0, False
    for r in records:
        event = r.get("event")
        if event in ("eval_finished", "tests_run"):
            steps += int(r.get("env_steps") or 0)
        if event == "eval_finished" and r.get("split") == "dev" and r.get("mean") is not None:
            tokens, usd = clock.at(_iso_to_epoch(r["time"]))
            if not started and r.get("policy_sha256") == start_sha and r.get("seeds") == dev_seeds:
                points.append(Point(kind="start", mean=r["mean"], env_steps=steps, usd=usd, tokens=tokens,
                                    seeds=len(r["seeds"]), iteration=0, accepted=True))
                started = True
            elif len(r.get("seeds") or []) >= 2 and r.get("seeds") != dev_seeds:
                # The coder's search and the test writer score candidates on a few dev seeds.
                points.append(Point(kind="search", mean=r["mean"], env_steps=steps, usd=usd, tokens=tokens,
                                    seeds=len(r["seeds"])))
        elif event == "iteration" and r.get("mean_candidate") is not None:
            spent = r.get("spent") or {}
            points.append(Point(kind="candidate", mean=r["mean_candidate"], env_steps=steps,
                                usd=float(spent.get("usd", 0.0)), tokens=int(spent.get("tokens", 0)),
                                seeds=len(dev_seeds), iteration=r["iteration"], accepted=r["accepted"]))
        elif event == "run_finished" and r.get("holdout") and r["holdout"].get("mean") is not None:
            spent = r.get("spent") or {}
            points.append(Point(kind="holdout", mean=r["holdout"]["mean"], env_steps=steps,
                                usd=float(spent.get("usd", 0.0)), tokens=int(spent.get("tokens", 0)),
                                seeds=r["holdout"]["episodes"]))
    return points


def _local(path: str, run_dir: Path) -> Path | None:
    """A clip file recorded by absolute path, found again if the run directory has moved since."""
    recorded = Path(path)
    for candidate in (recorded, run_dir / "clips" / recorded.parent.name / recorded.name):
        if candidate.is_file():
            return candidate
    return None


def _clips(result: EvalResult | None, run_dir: Path) -> list[ClipView]:
    views = []
    for clip in result.clips if result else []:
        mp4, png = _local(clip.mp4, run_dir), _local(clip.png, run_dir)
        if mp4 is not None:
            views.append(ClipView(seed=clip.seed, step=clip.step, label=clip.label, mp4=str(mp4),
                                  png=str(png) if png else None))
    return views


def _baseline_eval(run_dir: Path, sha: str | None, dev_seeds: list[int]) -> EvalResult | None:
    """The incumbent's evaluation an iteration analysed: all dev seeds, with its failure clips."""
    if not sha:
        return None
    found = []
    for path in (run_dir / "evals").glob(f"{sha[:12]}-dev-*.json"):
        try:
            result = EvalResult.model_validate_json(path.read_text())
        except (OSError, ValueError):
            continue  # a damaged cache file: the report shows the iteration without clips
        if result.seeds == dev_seeds:
            found.append(result)
    return max(found, key=lambda r: len(r.clips), default=None)


def _text_of(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [Part(text=content)]
    parts = []
    for part in content or []:
        if part.get("type") == "image":
            parts.append(Part(image=part.get("path")))
        else:
            parts.append(Part(text=part.get("text", json.dumps(part))))
    return parts


def _entry(e: dict[str, Any]) -> Entry:
    kind, when = e.get("kind", "?"), _clock(e.get("time", 0.0))
    if kind == "llm_call":
        if e.get("error"):
            heading = f"model call {e.get('model')}, attempt {e.get('attempt')}: failed"
        else:
            heading = (f"model call {e.get('model')}, attempt {e.get('attempt')}: {e.get('prompt_tokens', 0):,} + "
                       f"{e.get('completion_tokens', 0):,} tokens, ${e.get('usd', 0.0):.5f}, "
                       f"{e.get('latency_s', 0.0):.2f} s")
        return Entry(kind=kind, heading=heading, time=when,
                     messages=[Message(role=m.get("role", "?"), parts=_text_of(m.get("content")))
                               for m in e.get("messages", [])],
                     response=e.get("response") or None, error=e.get("error") or e.get("refusal") or None)
    if kind == "parsed":
        return Entry(kind=kind, heading="parsed answer" + (" (replayed)" if e.get("replayed") else ""), time=when,
                     parsed=json.dumps(e.get("parsed"), indent=2))
    if kind == "validation_error":
        return Entry(kind=kind, heading=f"reply did not match the schema (attempt {e.get('attempt')})", time=when,
                     error=e.get("error"), response=e.get("response"))
    if kind == "error":
        return Entry(kind=kind, heading="role failed", time=when, error=e.get("error"), details=e.get("traceback"))
    details = {k: v for k, v in e.items() if k not in _ENTRY_FRAME | {"summary"}}
    return Entry(kind=kind, heading=str(e.get("summary", kind)), time=when,
                 details=json.dumps(details, indent=2, default=str) if details else None)


def _transcripts(recorder: TranscriptRecorder, iteration: int) -> list[RoleTranscript]:
    """Each role's transcript of one iteration, in the order the roles first spoke."""
    by_role: dict[str, list[dict[str, Any]]] = {}
    for entry in sorted(recorder.read(iteration), key=lambda e: e.get("time", 0.0)):
        by_role.setdefault(entry.get("role", "?"), []).append(entry)
    views = []
    for role, entries in by_role.items():
        costs = list(call_costs(entries))
        views.append(RoleTranscript(role=role, entries=[_entry(e) for e in entries], calls=len(costs),
                                    tokens=sum(c[1] for c in costs), usd=sum(c[2] for c in costs),
                                    latency_s=sum(e.get("latency_s", 0.0) for e in entries
                                                  if e.get("kind") == "llm_call")))
    return views


def _memory_view(record: Any, iteration: int | None = None) -> MemoryRecordView:
    kind = record.type
    if kind == "failure":
        detail = f"{record.kind} on seed {record.seed} at step {record.step}"
    elif kind == "fix":
        delta = record.score_delta
        detail = f"{record.outcome}" + (f", {delta:+.2f} dev mean" if delta is not None else "")
    else:
        detail = f"from {len(record.source_fix_ids)} fixes"
    return MemoryRecordView(type=kind, id=record.id, text=record.text, detail=detail,
                            iteration=iteration if iteration is not None else getattr(record, "iteration", None))


def _open_memory(record: Any, run_dir: Path) -> Any:
    from graph.config import RunConfig
    from memory.store import MemoryConfig, MemoryStore

    config = RunConfig.model_validate(record.config)
    return MemoryStore(MemoryConfig(path=run_dir / "memory") if record.replay_of else config.memory)


def gather(run_dir: Path) -> ReportData:
    """Everything the report shows, from the run directory and the memory store it names."""
    run_dir = Path(run_dir).resolve()
    record = read_record(run_dir)
    spec = get_task(record.task)
    records, torn = Ledger(run_dir / "ledger.jsonl").read()
    records = [r for r in records if r.get("run_id") in (None, record.run_id)]
    started = next((r for r in records if r.get("event") == "run_started"), None)
    finished = next((r for r in reversed(records) if r.get("event") == "run_finished"), None)
    iteration_records = {r["iteration"]: r for r in records if r.get("event") == "iteration"}
    dev_seeds = list(started["dev_seeds"]) if started else []
    start = (started or {}).get("start") or {}
    recorder = TranscriptRecorder(run_dir)
    clock = _CostClock(recorder.read())

    used_ids: dict[str, tuple[int, float | None]] = {}
    iterations = []
    previous_sha = start.get("sha256")
    for number in sorted(iteration_records):
        r = iteration_records[number]
        baseline = _baseline_eval(run_dir, r.get("baseline_sha256") or previous_sha, dev_seeds)
        recalled = []
        for entry in recorder.read(number, "recall"):
            for hit in entry.get("used", []):
                used_ids.setdefault(hit["id"], (number, hit.get("similarity")))
                recalled.append(hit)
        verdict = r.get("verdict") or {}
        iterations.append(IterationView(
            iteration=number, accepted=r["accepted"], reason=r["reason"], reasons=verdict.get("reasons") or [r["reason"]],
            edit=r.get("rationale") or r.get("edit"), mean_before=r.get("mean_before"), mean_candidate=r.get("mean_candidate"),
            mean_after=r.get("mean_after"), commit=r.get("commit"), analyses=r.get("analyses") or {},
            diff=r.get("diff") or "", check_error=r.get("check_error"), tests_written=r.get("tests_written") or {},
            tests_added=r.get("tests_added") or [], failures=baseline.failures if baseline else {},
            failure_seeds=sum(1 for e in baseline.episodes if e.events or e.status != "ok") if baseline else 0,
            clips=_clips(baseline, run_dir),
            recalled=[Recalled(type=h["type"], id=h["id"], similarity=h.get("similarity"), text="")
                      for h in recalled],
            transcripts=_transcripts(recorder, number), spent=r.get("spent") or {}))
        previous_sha = r.get("policy_sha256")

    memory_note, added, used = None, [], []
    store = None
    try:
        store = _open_memory(record, run_dir)
        added = [_memory_view(m) for m in store.records_of_run(record.run_id)]
        found = {m.id: m for m in store.get(used_ids)}
        used = [_memory_view(found[i], used_ids[i][0]) for i in used_ids if i in found]
        texts = {m.id: m.text for m in found.values()}
        for view in iterations:
            view.recalled = [h.model_copy(update={"text": texts.get(h.id, "(no longer in memory)")})
                             for h in view.recalled]
    except Exception as exc:  # the memory is a view here: a store that cannot open must not hide the rest
        memory_note = f"the memory store could not be read: {type(exc).__name__}: {exc}"[:400]
    finally:
        if store is not None:
            store.close()

    workspace = Workspace(run_dir / "workspace")
    best = run_dir / "best_policy.py"
    if best.is_file():
        policy_label, policy_source = "the final policy (best_policy.py, tag heurist-final)", best.read_text()
    elif (workspace.root / ".git").is_dir():
        policy_label, policy_source = "the incumbent so far (workspace HEAD)", workspace.source_at("HEAD")
    else:
        policy_label, policy_source = "the starting policy (the run has not begun)", (
            run_dir / "starting_policy.py").read_text()
    history = [Commit(**c) for c in workspace.history()] if (workspace.root / ".git").is_dir() else []

    last = iteration_records[max(iteration_records)] if iteration_records else None
    spent = (finished or {}).get("spent") or (last or {}).get("spent") or {}
    kinds = sorted({k for view in iterations for k in view.failures})
    return ReportData(
        run_dir=str(run_dir), run_id=record.run_id, task=record.task, protocol=record.protocol,
        roles_label="offline roles" if record.offline else f"model {record.config['llm']['model']}",
        status=run_status(run_dir), stop_reason=(finished or {}).get("reason"), created=record.created,
        replay_of=record.replay_of, dev_seeds=dev_seeds, target=spec.target, max_return=spec.max_return,
        start_mean=start.get("mean"), best_mean=last["mean_after"] if last else start.get("mean"),
        holdout=(finished or {}).get("holdout"), holdout_enabled=bool(record.config["eval"]["holdout"]), spent=spent,
        points=_points(records, start.get("sha256"), dev_seeds, clock), iterations=iterations, failure_kinds=kinds,
        policy_label=policy_label, policy_source=policy_source, git_history=history, memory_note=memory_note,
        memory_added=added, memory_used=used, torn_lines=torn)
