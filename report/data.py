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
from typing import TYPE_CHECKING, Any

from common.events import (
    EvalFinished,
    IterationDone,
    LedgerEvent,
    RunFinished,
    RunStarted,
    SimplifyDone,
    read_events,
    steps_in,
)
from common.formatting import cost_text, finite_number
from common.ledger import Ledger
from common.safe_text import without_url_passwords
from envs.complexity import complexity
from envs.results import EvalResult
from report.views import (
    ClipView,
    Commit,
    ComplexityPoint,
    Entry,
    IterationView,
    LessonUse,
    MemoryRecordView,
    Message,
    Part,
    Point,
    Recalled,
    ReportData,
    RoleTranscript,
)
from store.rundir import (RunRecord, memory_config, names_code, read_record, recorded_model, run_status,
                          run_task, started_here)
from store.transcripts import (
    AgentTurn,
    Decision,
    LLMCall,
    Parsed,
    Resumed,
    RoleFailed,
    ToolRun,
    TranscriptLine,
    TranscriptRecorder,
    ValidationFailed,
    call_costs,
)
from envs.gitsafe import GitRefused
from store.workspace import Workspace, WorkspaceError

if TYPE_CHECKING:
    from memory.store import MemoryStore


def _iso_to_epoch(stamp: str) -> float:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (TypeError, ValueError, OverflowError):  # a damaged record's time: at the start, not the page's end
        return 0.0


def _numbers(values: Any) -> dict[str, float | int]:
    return {str(k): v for k, v in values.items() if finite_number(v) is not None} if isinstance(values, dict) else {}


def _holdout(value: Any) -> dict[str, Any] | None:
    """A recorded holdout result as the page shows it, or None where its parts are not what heurist writes."""
    if not isinstance(value, dict):
        return None
    seeds, episodes = value.get("seeds"), value.get("episodes")
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds) and isinstance(episodes, int)):
        return None
    failed = value.get("episodes_failed", 0)
    control = value.get("control")
    control = _holdout({k: v for k, v in control.items() if k != "control"}) if isinstance(control, dict) else None
    if control is not None:
        p = finite_number(control.get("p_value"))
        control.update(p_value=p, p_text="n/a" if p is None else f"{p:.2g}", differs=control.get("differs") is True)
    return {**value, "mean": finite_number(value.get("mean")), "std": finite_number(value.get("std")),
            "episodes_failed": failed if isinstance(failed, int) else 0, "control": control}


def _plain_records(records: list[LedgerEvent]) -> list[LedgerEvent]:
    """The records the page reads, their free-form parts (spent, holdout, the starting score) made what heurist writes:
    a value of the wrong type is dropped, not formatted."""
    plain: list[LedgerEvent] = []
    for r in records:
        if isinstance(r, RunFinished):
            r = r.model_copy(update={"holdout": _holdout(r.holdout), "spent": _numbers(r.spent)})
        elif isinstance(r, IterationDone):
            r = r.model_copy(update={"spent": _numbers(r.spent)})
        elif isinstance(r, RunStarted):
            start = dict(r.start) if isinstance(r.start, dict) else {}
            r = r.model_copy(update={"start": {**start, "mean": finite_number(start.get("mean"))}})
        plain.append(r)
    return plain


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S")


class _CostClock:
    """Cumulative model tokens and dollars at any moment of the run, from the transcripts' call records."""

    def __init__(self, entries: list[TranscriptLine]):
        costs = sorted(call_costs(entries))
        self.times = [c[0] for c in costs]
        self.tokens, self.usd = [0], [0.0]
        for cost in costs:
            self.tokens.append(self.tokens[-1] + cost.tokens)
            self.usd.append(self.usd[-1] + cost.usd)

    def at(self, epoch: float) -> tuple[int, float]:
        i = bisect.bisect_right(self.times, epoch)
        return self.tokens[i], self.usd[i]


def _points(records: list[LedgerEvent], start_sha: str | None, dev_seeds: list[int],
            clock: _CostClock) -> list[Point]:
    """Every scored dev evaluation, in the order it happened, at the env steps spent by then."""
    points: list[Point] = []
    steps, started = 0, False
    for r in records:
        steps += steps_in(r)  # as the run counts its own
        if isinstance(r, EvalFinished):
            if r.split != "dev" or r.mean is None or r.max_steps is not None:  # a cut evaluation is not a score
                continue
            tokens, usd = clock.at(_iso_to_epoch(r.time))
            if not started and r.policy_sha256 == start_sha and r.seeds == dev_seeds:
                points.append(Point(kind="start", mean=r.mean, env_steps=steps, usd=usd, tokens=tokens,
                                    seeds=len(r.seeds), iteration=0, accepted=True))
                started = True
            elif len(r.seeds) >= 2 and r.seeds != dev_seeds:
                # The coder's search and the test writer score candidates on a few dev seeds.
                points.append(Point(kind="search", mean=r.mean, env_steps=steps, usd=usd, tokens=tokens,
                                    seeds=len(r.seeds)))
        elif isinstance(r, IterationDone) and r.mean_candidate is not None:
            points.append(Point(kind="candidate", mean=r.mean_candidate, env_steps=steps,
                                usd=float(r.spent.get("usd", 0.0)), tokens=int(r.spent.get("tokens", 0)),
                                seeds=len(dev_seeds), iteration=r.iteration, accepted=r.accepted))
        elif isinstance(r, RunFinished) and r.holdout and r.holdout.get("mean") is not None:
            points.append(Point(kind="holdout", mean=r.holdout["mean"], env_steps=steps,
                                usd=float(r.spent.get("usd", 0.0)), tokens=int(r.spent.get("tokens", 0)),
                                seeds=r.holdout["episodes"]))
    return points


def _failed_on_dev(records: list[LedgerEvent], sha: str | None, dev_seeds: list[int]) -> int | None:
    """Episodes that failed in the last full dev evaluation of this policy (its mean is over the others), or None
    where there is none."""
    for r in reversed(records):
        if (isinstance(r, EvalFinished) and r.policy_sha256 == sha and r.split == "dev" and r.seeds == dev_seeds
                and r.max_steps is None):
            return r.episodes_failed
    return None


def inside_run(path: Path, run_dir: Path) -> Path | None:
    """``path`` as a regular file inside the run directory, links resolved; None for anything else.

    A run directory is data, and may come from someone else (a colleague's run, an archive): a clip or a policy file
    that is a link (or under a linked folder) to ``/etc/passwd`` or a key would be shown in the page, or copied into
    ``report/media`` to travel with it."""
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, a loop of links, unreadable
        return None
    if not resolved.is_relative_to(Path(run_dir).resolve()) or not resolved.is_file():
        return None
    return resolved


def run_text(path: Path, run_dir: Path, limit: int = 4 << 20) -> str | None:
    """A text file of the run as the page shows it: inside the run (``inside_run``), at most ``limit`` bytes, bytes
    that are not UTF-8 written as escapes. None where there is no such file."""
    found = inside_run(path, run_dir)
    if found is None:
        return None
    try:
        with open(found, "rb") as file:
            data = file.read(limit + 1)
    except OSError:
        return None
    text = data[:limit].decode("utf-8", "backslashreplace")
    return text + f"\n[cut: {found.name} is longer than {limit} bytes]" if len(data) > limit else text


def _local(path: str, run_dir: Path) -> Path | None:
    """A clip file recorded by absolute path, found again if the run directory has moved since; only inside the run."""
    recorded = Path(path)
    for candidate in ((recorded,) if recorded.is_absolute() else ()) + (
            run_dir / "clips" / recorded.parent.name / recorded.name,):
        found = inside_run(candidate, run_dir)
        if found is not None:
            return found
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


def _calls_text(calls: list[dict[str, str]] | None) -> str:
    return "\n".join(f"{c.get('name')}({c.get('arguments', '')})" for c in calls or [])


def _entry(e: TranscriptLine) -> Entry:
    when = _clock(e.time)
    if isinstance(e, LLMCall):
        if e.error:
            heading = f"model call {e.model}, attempt {e.attempt}: failed"
        else:
            heading = (f"model call {e.model}, attempt {e.attempt}: {e.prompt_tokens or 0:,} + "
                       f"{e.completion_tokens or 0:,} tokens, "
                       f"{cost_text(e.usd, 0, 5) if e.priced is not False else 'unpriced'}, {e.latency_s:.2f} s")
        return Entry(kind=e.kind, heading=heading, time=when,
                     messages=[Message(role=m.get("role", "?"), parts=_text_of(m.get("content")))
                               for m in e.messages],
                     response=e.response or _calls_text(e.tool_calls) or None, error=e.error or e.refusal or None)
    if isinstance(e, AgentTurn):
        names = ", ".join(c["name"] for c in e.tool_calls) or "no tool"
        return Entry(kind=e.kind, heading=f"{e.loop}, turn {e.turn}: called {names}" + (
            " (replayed)" if e.replayed else ""), time=when, response=e.content or None,
                     details=_calls_text(e.tool_calls) or None)
    if isinstance(e, ToolRun):
        return Entry(kind=e.kind, heading=f"{e.loop}, tool {e.name}: {e.seconds:.2f} s, {e.env_steps:,} env steps",
                     time=when, details=e.arguments, response=e.result + (f"\n[image {e.image}]" if e.image else ""))
    if isinstance(e, Parsed):
        return Entry(kind=e.kind, heading="parsed answer" + (" (replayed)" if e.replayed else ""), time=when,
                     parsed=json.dumps(e.parsed, indent=2))
    if isinstance(e, ValidationFailed):
        return Entry(kind=e.kind, heading=f"reply did not match the schema (attempt {e.attempt})", time=when,
                     error=e.error, response=e.response)
    if isinstance(e, RoleFailed):
        return Entry(kind=e.kind, heading="role failed", time=when, error=e.error, details=e.traceback)
    if isinstance(e, Resumed):
        return Entry(kind=e.kind, heading="the run was resumed: a later session wrote what follows", time=when)
    return Entry(kind=e.kind, heading=e.summary, time=when,
                 details=json.dumps(e.details, indent=2, default=str) if e.details else None)


def _transcripts(recorder: TranscriptRecorder, iteration: int) -> list[RoleTranscript]:
    """Each role's transcript of one iteration, in the order the roles first spoke."""
    by_role: dict[str, list[TranscriptLine]] = {}
    for entry in sorted(recorder.read(iteration), key=lambda e: e.time):
        by_role.setdefault(entry.role, []).append(entry)
    views = []
    for role, entries in by_role.items():
        costs = list(call_costs(entries))
        views.append(RoleTranscript(role=role, entries=[_entry(e) for e in entries], calls=len(costs),
                                    tokens=sum(c.tokens for c in costs), usd=sum(c.usd for c in costs),
                                    unpriced_tokens=sum(c.unpriced_tokens for c in costs),
                                    latency_s=sum(e.latency_s for e in entries if isinstance(e, LLMCall)),
                                    prompt_tokens=max((e.prompt_tokens or 0 for e in entries if isinstance(e, LLMCall)),
                                                      default=0)))
    return views


def _memory_view(record: Any, iteration: int | None = None) -> MemoryRecordView:
    kind = record.type
    if kind == "failure":
        detail = f"{record.kind} on seed {record.seed} at step {record.step}"
    elif kind == "fix":
        delta = record.score_delta
        detail = f"{record.outcome}" + (f", {delta:+.2f} dev mean" if delta is not None else "")
    elif kind == "scenario":
        moment = record.scenario
        detail = (f"saved moment {record.name}: {moment.event_kind} on seed {moment.seed} at step "
                  f"{moment.event_step}, {moment.event_step - moment.start} steps after it")
    else:
        detail = (f"{record.outcome.replace('_', ' ')}, from {len(record.source_fix_ids)} fixes; helped "
                  f"{record.times_helped} of {record.times_recalled} times recalled")
    return MemoryRecordView(type=kind, id=record.id, text=record.text, detail=detail,
                            iteration=iteration if iteration is not None else getattr(record, "iteration", None))


def _committed(workspace: Workspace, commit: str, otherwise: str) -> str:
    """The policy at a commit the ledger names, or ``otherwise`` where the ledger's commit is no commit id (a damaged
    or edited record: ``store.workspace.object_name``) or the repository does not hold it."""
    try:
        return workspace.source_at(commit)
    except WorkspaceError:
        return otherwise


def _complexity(run_dir: Path, workspace: Workspace, has_git: bool, iterations: list[IterationView],
                simplified: dict[int, str]) -> list[ComplexityPoint]:
    """The kept policy's complexity after each iteration: the starting policy's, then each accepted commit's, and
    after an iteration whose simplify stage kept a simplification (``simplified``: iteration -> commit), that one's
    too, at the same iteration (the plot drops there)."""
    source = run_text(run_dir / "starting_policy.py", run_dir)
    if source is None:
        return []
    points: list[ComplexityPoint] = []
    for iteration, view in [(0, None), *((v.iteration, v) for v in iterations)]:
        if view is not None and view.accepted and view.commit and has_git:
            source = _committed(workspace, view.commit, source)
        versions = [(source, False)]
        if iteration in simplified and has_git:
            source = _committed(workspace, simplified[iteration], source)
            versions.append((source, True))
        for text, after_simplify in versions:
            try:
                measured = complexity(text)
            except SyntaxError:  # only checked policies are committed; a starting file is the user's
                continue
            points.append(ComplexityPoint(iteration=iteration, simplified=after_simplify, **measured.model_dump()))
    return points


def _lessons_used(iterations: list[IterationView], found: dict[str, Any]) -> list[LessonUse]:
    """Each lesson shown to this run's coder: the iterations, and how many of them accepted their edit."""
    shown: dict[str, list[IterationView]] = {}
    for view in iterations:
        for hit in view.recalled:
            if hit.type == "lesson":
                shown.setdefault(hit.id, []).append(view)
    return [LessonUse(id=i, statement=found[i].text, family=found[i].family, iterations=[v.iteration for v in views],
                      accepted=sum(v.accepted for v in views),
                      helped_everywhere=f"{found[i].times_helped} of {found[i].times_recalled}")
            for i, views in shown.items() if i in found]


def _open_memory(record: RunRecord, run_dir: Path) -> MemoryStore | str:
    """The memory store the run names, or why the report does not read it. A report is a reader: it makes no store
    where none is (a run directory from elsewhere names a path on its own machine, or any path at all), and it
    contacts the Chroma server a run names only for a run started on this machine (``heurist runs``): a run
    directory from someone else would otherwise have the report reach out to a server of theirs when opened."""
    from memory.chroma import MARKER
    from memory.store import MemoryStore, default_memory_path  # Chroma loads only when a report shows memory

    config = memory_config(record, run_dir)
    if config.url:
        if not started_here(record, run_dir):
            return (f"the memory server this run names ({without_url_passwords(config.url)}) is not contacted: the run "
                    f"was not started on this machine (`heurist runs` lists those that were)")
    else:
        path = (config.path or default_memory_path()).expanduser()
        if not (path / MARKER).is_file():
            return f"no memory store at {path} on this machine"
    return MemoryStore(config)


class _NotRead(Exception):
    """The report does not read the memory store, for the reason given."""


def _iteration_views(run_dir: Path, iterations: list[IterationDone], start_sha: str | None, dev_seeds: list[int],
                     recorder: TranscriptRecorder) -> tuple[list[IterationView], dict[str, tuple[int, float | None]]]:
    """Each iteration as the report shows it, and the memory records each recalled (id -> first use)."""
    used_ids: dict[str, tuple[int, float | None]] = {}
    views = []
    previous_sha = start_sha
    for r in iterations:
        baseline = _baseline_eval(run_dir, r.baseline_sha256 or previous_sha, dev_seeds)
        recalled = []
        for entry in recorder.read(r.iteration, "recall"):
            for hit in entry.details.get("used", []) if isinstance(entry, Decision) else []:
                used_ids.setdefault(hit["id"], (r.iteration, hit.get("similarity")))
                recalled.append(hit)
        verdict = r.verdict or {}
        views.append(IterationView(
            iteration=r.iteration, accepted=r.accepted, reason=r.reason, reasons=verdict.get("reasons") or [r.reason],
            edit=r.rationale or r.edit, mean_before=r.mean_before, mean_candidate=r.mean_candidate,
            mean_after=r.mean_after, commit=r.commit, analyses=r.analyses, diff=r.diff, check_error=r.check_error,
            tests_written=r.tests_written, tests_added=r.tests_added, failures=baseline.failures if baseline else {},
            failure_seeds=sum(1 for e in baseline.episodes if e.events or e.status != "ok") if baseline else 0,
            clips=_clips(baseline, run_dir),
            recalled=[Recalled(type=h["type"], id=h["id"], similarity=h.get("similarity"), text="")
                      for h in recalled],
            transcripts=_transcripts(recorder, r.iteration), spent=r.spent))
        previous_sha = r.policy_sha256
    return views, used_ids


def gather(run_dir: Path) -> ReportData:
    """Everything the report shows, from the run directory and the memory store it names."""
    run_dir = Path(run_dir).resolve()
    record = read_record(run_dir)
    # A task of one's own is imported only for a run started here: a run directory from elsewhere names any module.
    spec = run_task(record) if not names_code(record) or started_here(record, run_dir) else None
    records, torn = read_events(Ledger(run_dir / "ledger.jsonl"))
    records = _plain_records([r for r in records if getattr(r, "run_id", record.run_id) == record.run_id])
    started = next((r for r in records if isinstance(r, RunStarted)), None)
    finished = next((r for r in reversed(records) if isinstance(r, RunFinished)), None)
    by_number = {r.iteration: r for r in records if isinstance(r, IterationDone)}  # once each, the last kept
    dev_seeds = list(started.dev_seeds) if started else []
    start = started.start if started else {}
    recorder = TranscriptRecorder(run_dir)
    clock = _CostClock(recorder.read())
    iterations, used_ids = _iteration_views(run_dir, [by_number[n] for n in sorted(by_number)], start.get("sha256"),
                                            dev_seeds, recorder)

    memory_note, added, used, lessons_used = None, [], [], []
    store = None
    try:
        opened = _open_memory(record, run_dir)
        if isinstance(opened, str):
            raise _NotRead(opened)
        store = opened
        added = [_memory_view(m) for m in store.records_of_run(record.run_id)]
        found = {m.id: m for m in store.get(used_ids)}
        used = [_memory_view(found[i], used_ids[i][0]) for i in used_ids if i in found]
        texts = {m.id: m.text for m in found.values()}
        lessons_used = _lessons_used(iterations, found)
        for view in iterations:
            view.recalled = [h.model_copy(update={"text": texts.get(h.id, "(no longer in memory)")})
                             for h in view.recalled]
    except _NotRead as why:
        memory_note = str(why)
    except Exception as exc:  # the memory is a view here: a store that cannot open must not hide the rest
        memory_note = f"the memory store could not be read: {type(exc).__name__}: {exc}"[:400]
    finally:
        if store is not None:
            store.close()

    workspace = Workspace(run_dir / "workspace")
    git_note = None
    has_git = (workspace.root / ".git").is_dir()
    if has_git:
        try:
            workspace.check()  # git runs here only in a repository that asks it to run nothing (envs.gitsafe)
        except GitRefused as exc:
            has_git, git_note = False, f"the workspace's history is not shown: {exc}"
    best = run_text(run_dir / "best_policy.py", run_dir)
    if best is not None:
        policy_label, policy_source = "the final policy (best_policy.py, tag heurist-final)", best
    elif has_git:
        policy_label, policy_source = "the incumbent so far (workspace HEAD)", workspace.source_at("HEAD")
    else:
        policy_label = "the starting policy (the run has not begun)"
        policy_source = run_text(run_dir / "starting_policy.py", run_dir) or "(starting_policy.py is not in the run)"
    history = [Commit(**c) for c in workspace.history()] if has_git else []
    simplified = {r.iteration: r.commit for r in records
                  if isinstance(r, SimplifyDone) and r.accepted and r.commit}
    complexity_points = _complexity(run_dir, workspace, has_git, iterations, simplified)

    last = by_number[max(by_number)] if by_number else None
    spent = (finished.spent if finished else None) or (last.spent if last else None) or {}
    kinds = sorted({k for view in iterations for k in view.failures})
    return ReportData(
        run_dir=str(run_dir), run_id=record.run_id, task=record.task, protocol=record.protocol,
        roles_label="offline roles" if record.offline else f"model {recorded_model(record.config)}",
        status=run_status(run_dir), stop_reason=finished.reason if finished else None, created=record.created,
        replay_of=record.replay_of, dev_seeds=dev_seeds, target=spec.target if spec else None,
        max_return=spec.max_return if spec else None,
        task_note=None if spec else ("no target shown: the module of this task of one's own is imported only for a "
                                     "run this machine's runs index lists in this directory (`heurist runs`); this "
                                     "one was moved here or started elsewhere"),
        start_mean=start.get("mean"), best_mean=last.mean_after if last else start.get("mean"),
        start_failed=_failed_on_dev(records, start.get("sha256"), dev_seeds),
        best_failed=_failed_on_dev(records, last.policy_sha256 if last else start.get("sha256"), dev_seeds),
        holdout=finished.holdout if finished else None, holdout_enabled=bool((record.config.get("eval") or {}).get("holdout", True)), spent=spent,
        points=_points(records, start.get("sha256"), dev_seeds, clock), iterations=iterations, failure_kinds=kinds,
        policy_label=policy_label, policy_source=policy_source, git_history=history, git_note=git_note,
        memory_note=memory_note,
        memory_added=added, memory_used=used, lessons_used=lessons_used, complexity=complexity_points,
        torn_lines=torn)
