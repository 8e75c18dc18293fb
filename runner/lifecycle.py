"""Start, resume and replay runs: build a run's services and drive its checkpointed graph to an end.

The run directory itself (``run.json``, the lock, the status) is ``store.rundir``'s; this module
is the one place that puts the loop's pieces together: the services (``graph.context``), the
nodes, the topology and LangGraph's SQLite checkpointer, then streams the graph and rewrites
the report after every iteration.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Command

from common import interrupts
from common.events import RunResumed
from common.ledger import Ledger
from common.safe_text import also_secret, redact
from envs.isolation import filesystem_confined
from envs.tasks import get_task
from graph.budget import stop_reason
from graph.context import Services
from graph.nodes import Nodes
from graph.topology import build
from memory.store import MemoryStore
from roles.llm import LLMClient
from roles.llm_replay import ReplayClient
from roles.llm_usage import Usage
from roles.registry import stage_roles, unmet_facts
from runner.report_child import ReportFailed, rebuild, warm_up
from store.active_time import ActiveTime
from store.config import RunConfig
from store.rundir import (WORKSPACE_FORMAT, RunError, RunRecord, locked, memory_config, read_record, run_config,
                          run_task, keyed, storage_failure)
from store.scalars import run_rows, write_run_scalars
from store.transcripts import TranscriptRecorder, call_costs
from store.wandb_log import by_index, log_scalars
from store.workspace import Workspace

EventFn = Callable[[str, dict[str, Any]], None]

def usage_from_transcripts(recorder: TranscriptRecorder) -> Usage:
    """Tokens and dollars already spent, counted from the transcripts, which survive any crash."""
    costs = list(call_costs(recorder.read()))
    return Usage(sum(c.tokens for c in costs), sum(c.usd for c in costs), len(costs),
                 unpriced_tokens=sum(c.unpriced_tokens for c in costs),
                 estimated_tokens=sum(c.estimated_tokens for c in costs))


def open_services(run_dir: Path, on_event: EventFn | None = None) -> tuple[Services, Nodes, RunRecord]:

    record = keyed(run_dir, read_record(run_dir))
    if record.workspace_format < WORKSPACE_FORMAT:
        raise RunError(f"{run_dir} was made by heurist {record.heurist_version}, whose regression tests ran the policy "
                       f"inside the test; they cannot be trusted to run as this version runs tests. Start a new run "
                       f"from its best policy: heurist run --env {record.task} --policy "
                       f"{Path(run_dir) / 'workspace' / 'policy.py'}")
    config = run_config(record, run_dir)
    for name in config.llm.key_variables():  # whatever their names, the keys are never recorded
        also_secret(name)
    spec = run_task(record)
    if not record.offline and not config.eval.allow_unconfined and not filesystem_confined():
        raise RunError("model-written code would run without a confined file system here (bubblewrap is missing "
                       "or cannot make namespaces; `heurist doctor` says which): install bubblewrap, or set "
                       "eval.allow_unconfined = true in the run config to accept that")
    recorder = TranscriptRecorder(run_dir)
    usage = usage_from_transcripts(recorder)
    usage.max_tokens, usage.max_usd = config.budget.tokens, config.budget.usd
    llm: Any = None
    if record.replay_of:
        llm = None if record.offline else ReplayClient(Path(record.replay_of), usage)
    elif not record.offline:
        llm = LLMClient(config.llm, usage)
    memory = MemoryStore(memory_config(record, run_dir))
    # A run made before roles declared their facts may leave one unmet: it goes on as it was started, and says so.
    roles = stage_roles(config.stages, require_facts=False)
    # This process holds the run's lock, so a git lock file left here is a crash's leftover, not a live git.
    if (run_dir / "workspace" / ".git").is_dir():
        Workspace(run_dir / "workspace").clear_crash_locks()
    services = Services(run_dir=run_dir, run_id=record.run_id, search_key=record.search_key,
                        screen_key=record.screen_key or "", config=config, spec=spec,
                        protocol=record.protocol, workspace=Workspace(run_dir / "workspace"),
                        ledger=Ledger(run_dir / "ledger.jsonl"), memory=memory, llm=llm, usage=usage,
                        recorder=recorder, roles=roles, on_event=on_event,
                        replay_of=Path(record.replay_of) if record.replay_of else None)
    if isinstance(llm, LLMClient):  # the live view follows each call as it streams
        llm.on_progress = lambda role, fields: services.event("model_call", role=role, **fields)
    for problem in unmet_facts(roles):
        services.event("warning", message=f"this run's [stages] leave a fact unmet: {problem}")
    return services, Nodes(services, (run_dir / "starting_policy.py").read_text()), record


def execute(run_dir: Path, on_event: EventFn | None = None) -> dict[str, Any]:
    """Run (or continue) the graph to its end, a pause, or an interruption; returns the final state."""
    run_dir = Path(run_dir).resolve()
    read_record(run_dir)
    try:
        return _execute(run_dir, on_event)
    except Exception as exc:
        reason = storage_failure(exc, run_dir)
        if reason is None:
            raise
        # Every write is atomic or an append that takes itself back, and the checkpoint is SQLite's:
        # the run stopped at its last checkpoint and continues from there.
        raise RunError(f"the run cannot go on: it could not write ({reason}); free some space or make {run_dir} "
                       f"and $HEURIST_HOME writable, then `heurist resume {run_dir}` continues from its last "
                       f"checkpoint") from exc


def _execute(run_dir: Path, on_event: EventFn | None) -> dict[str, Any]:


    with locked(run_dir):
        services, nodes, record = open_services(run_dir, on_event)
        connection = sqlite3.connect(run_dir / "checkpoints.sqlite", check_same_thread=False)
        try:
            # Plain types only: by default LangGraph rebuilds any object a checkpoint names (imports its module and
            # calls it), so an edited checkpoints.sqlite ran code on resume. heurist's state is plain data.
            app = build(nodes, SqliteSaver(connection, serde=JsonPlusSerializer(allowed_msgpack_modules=None)))
            cfg = {"configurable": {"thread_id": record.run_id}, "recursion_limit": 1_000_000}
            try:
                snapshot = app.get_state(cfg)
            except sqlite3.DatabaseError as exc:
                raise RunError(f"{run_dir / 'checkpoints.sqlite'} is damaged ({exc}), so the run cannot continue "
                               f"from it; its ledger, transcripts and workspace are intact: `heurist report "
                               f"{run_dir}` shows it, `heurist replay {run_dir}` re-runs it from its transcripts") from None
            values = snapshot.values or {}
            # A node that asked a model after this checkpoint was cut off, and runs again: the answers it got then
            # are the ones it takes again (RoleTranscript.answered_before); those of nodes checkpointed before are not.
            if snapshot.created_at:
                services.recorder.resumed_after = datetime.fromisoformat(snapshot.created_at).timestamp()
            # Active time from the last beat of the session before (a kill loses at most one beat), never less
            # than the state's count at its last iteration's end.
            clock = ActiveTime(run_dir, at_least_before=float((values.get("spent") or {}).get("elapsed_s", 0.0)))
            services.elapsed_before, services.session_started = clock.before, clock.started
            # The graph ended only where its state says so. An empty `next` alone is not an end: a kill between
            # a node's saved writes and the step's checkpoint leaves a checkpoint whose only task is done, whose
            # `next` is empty; continuing from it applies those writes and goes on.
            ended = not snapshot.next and values.get("status") in ("finished", "paused")
            if not values:
                if any(r.get("event") in ("iteration", "run_finished") for r in services.ledger.read()[0]):
                    # Nodes write those records many checkpoints after the first: the checkpoints are gone (deleted,
                    # or the run directory copied without them), and starting over would rewrite the summary of a run
                    # that went on. A kill cannot do this.
                    raise RunError(f"{run_dir / 'checkpoints.sqlite'} holds no checkpoint, though the ledger "
                                   f"records iterations of this run, so the run cannot continue from it; its ledger, "
                                   f"transcripts and workspace are intact: `heurist report {run_dir}` shows it, "
                                   f"`heurist replay {run_dir}` re-runs it from its transcripts")
                start: dict[str, Any] | Command | None = {"run_id": record.run_id}
            elif not ended:
                start = None  # continue at the node that did not finish
                services.ledger.append(RunResumed(run_id=record.run_id, iteration=values.get("iteration"),
                                                  at=list(snapshot.next) or [task.name for task in snapshot.tasks]))
            elif values.get("status") == "paused":
                # Re-entered where remember would have routed with the pause undone: the next iteration, or the
                # finish if a budget ran out on the iteration that paused. LangGraph's Command makes the update
                # and the jump one checkpointed step (update_state(as_node=...) gives routers no context).
                undone = {"status": "running", "stop_reason": None, "llm_failures": 0}
                goto = "finish" if stop_reason({**values, **undone}, services.config, services.spec) else "evaluate"
                services.ledger.append(RunResumed(run_id=record.run_id, at=[goto], iteration=values.get("iteration"),
                                                  after="pause"))
                start = Command(update=undone, goto=goto)
            else:
                return values  # finished: nothing to do
            if services.config.report:
                warm_up()  # the report's fork server imports while the run evaluates
            with clock:
                services.event("started", run_id=record.run_id, task=record.task, offline=record.offline,
                               model=services.config.llm.model, budget=services.config.budget.model_dump(),
                               iteration=values.get("iteration", 0),
                               spent={**(values.get("spent") or {}), "elapsed_s": clock.before},
                               best=(values.get("incumbent") or {}).get("mean"), history=values.get("history") or [])
                for update in app.stream(start, cfg, stream_mode="updates", durability="sync", context=services):
                    for node in update:
                        services.event("node", node=node)
                        if node in ("remember", "finish", "pause"):
                            _publish_scalars(services)
                            if services.config.report:
                                _publish_report(services)
                    # A Ctrl-C that something in the node swallowed stops the run here, once what the node's end
                    # publishes (scalars, the report) is out.
                    interrupts.check()
                return app.get_state(cfg).values
        finally:
            connection.close()
            if services.memory is not None:
                services.memory.close()

def _publish_scalars(services: Services) -> None:
    """Rewrite RUN_DIR/tensorboard from the ledger (CleanRL's scalar names): a view, so a failure is told and the
    run goes on."""
    try:
        write_run_scalars(services.run_dir)
    except Exception as exc:  # a view of records kept elsewhere: the run never stops for it
        services.event("warning", message=f"the TensorBoard scalars were not updated: {type(exc).__name__}: "
                                          f"{exc}"[:300] + "; the run goes on")
    if services.config.wandb.enabled:
        try:
            log_scalars(services.run_dir, services.run_id, services.config.wandb,
                        by_index(run_rows(services.run_dir), "heurist/iteration"),
                        {"task": services.spec.id, "protocol": services.protocol, "run_id": services.run_id})
        except Exception as exc:  # W&B down, a bad key: the run goes on; the next iteration sends what is missing
            services.event("warning", message=redact(f"W&B was not updated: {type(exc).__name__}: {exc}"[:300])
                           + "; the run goes on, and the next iteration sends what is missing")


def _publish_report(services: Services) -> None:
    """Rewrite the run's report so it is always current, in a child process (``runner/report_child.py``). It is a
    view of records kept elsewhere, so a report that cannot be written is told to the user and the run goes on."""
    try:
        path = rebuild(services.run_dir)
    except ReportFailed as exc:
        problem = str(exc)
    else:
        services.event("report", path=str(path))
        return
    services.event("warning", message=f"the report was not updated: {problem}"[:300]
                   + f"; the run goes on (`heurist report {services.run_dir}` rewrites it)")


def mermaid(config: RunConfig) -> str:
    """The graph's topology for this config, as a Mermaid diagram (no run needed)."""

    # Nothing runs: the services only shape the graph (which analyse nodes exist), so they point nowhere.
    spec = get_task(config.task)
    services = Services(run_dir=Path("."), run_id="", search_key="", screen_key="", config=config, spec=spec, protocol="",
                        workspace=Workspace(Path(".")), ledger=Ledger(Path("/dev/null")), memory=None, llm=None,
                        usage=Usage(), recorder=TranscriptRecorder(Path(".")), roles=stage_roles(config.stages))
    return build(Nodes(services, "")).get_graph().draw_mermaid()

