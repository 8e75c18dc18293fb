"""Evaluation spread over a Ray cluster: worker pairs run as Ray tasks on other nodes, each under the same sandbox.

For a policy whose steps are expensive (model-predictive control spends a CPU-second per step), one
machine's cores set the pace of a run. With ``eval.backend = "ray"`` (or ``heurist eval --backend
ray``), the evaluator splits its seeds into shards and runs each shard as a Ray task holding one
CPU. The task is the body of a local evaluation on whatever node Ray picks: the same
``envs.scheduling`` over one ``envs.worker_pair`` (a trusted env process and the policy process
under that node's full containment), so an episode's limits, failures and accounting are exactly
those of the local backend, and so are its results: an episode's result depends on its task,
protocol, policy and seed alone, never on which shard or node ran it (tested).

What stays on the machine that asked: the ledger lines, the statistics, the clips (re-simulated
locally, since they are written to the run's folder). What travels: the task, protocol, policy
source and limits in each shard's arguments (a policy folder's files once, in Ray's object store; each node
stages its own read-only copy and finds the task's simulator model in its own packages), and plain episode results back; no key or token is
ever an argument, and each node's sandbox scrubs its own environment as it does locally.

A lost node fails its shard with Ray's error; Ray runs the shard again elsewhere
(``LOST_NODE_RETRIES``). The env steps the lost attempt took are not counted: they died with the
node (DEVELOPERS.md, Known gaps).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from common import interrupts
from common.errors import HeuristError
from common.safe_text import redact
from common.scratch import ScratchDir
from envs.limits import Limits
from envs.policy_files import PolicyBundle
from envs.results import EpisodeResult

LOST_NODE_RETRIES = 2  # Ray starts a shard again this many times when its node or worker dies
SHARD_SLACK_S = 120.0  # beyond the evaluation's own limit: a shard's start on its node and its way back
CANCEL_GRACE_S = 10.0  # how long a cancelled shard has to kill its worker pair before its Ray worker is killed


class RayBackendError(HeuristError):
    pass


def unreachable(address: str | None) -> str | None:
    """Why nothing answers at a cluster address of the host:port form; None when something does, or when the
    address is of another form (``auto``, ``ray://``), which Ray resolves itself. Checked first because Ray
    retries an address nothing answers on for minutes before it gives up."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            if not _speaks_grpc(connection):
                return ("something answers there, but not as a Ray cluster's head (a gRPC server) does: is it the "
                        "dashboard's port (8265) or another service's? The head's address is the one "
                        "`ray start --head` printed, port 6379 unless chosen")
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


# HTTP/2's client preface and an empty SETTINGS frame: a gRPC server (a Ray head's GCS) answers with a SETTINGS frame
# of its own. Ray itself, given any other service's address (the dashboard's HTTP port, say), retried it for 14
# minutes before giving up (a red-team review, 2026-12-05).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
H2_SETTINGS = 4
GRPC_PROBE_S = 5.0


def _speaks_grpc(connection: socket.socket) -> bool:
    """Whether the server at the other end answers HTTP/2's preface with a SETTINGS frame, as a gRPC server does.
    A cluster using TLS (``RAY_USE_TLS``) is not asked: its handshake comes first, and Ray checks it itself."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    connection.settimeout(GRPC_PROBE_S)
    try:
        connection.sendall(H2_PREFACE)
        header = b""
        while len(header) < 9:
            chunk = connection.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:  # a timeout (a server that never answers) or a reset
        return False
    return header[3] == H2_SETTINGS


NO_MEMORY_MONITOR = {"memory_monitor_refresh_ms": 0}  # Ray's switch for its memory monitor: 0 turns it off
CODE_ROOT = Path(__file__).resolve().parent.parent  # where heurist's own packages are: what Ray's workers import


def init_ray(address: str | None) -> None:
    """``ray.init`` as heurist calls it, for an evaluation or a campaign: no dashboard, no worker logs in heurist's
    output, heurist's own signal handling, no memory monitor on a Ray of its own, and heurist's code alone on the
    workers' path.

    Ray puts the driver's current folder first on every worker's ``sys.path``, on every node: a package there named
    as one of heurist's (``envs``, a cloned repository's ``common``) was imported by the Ray workers running shards,
    outside the sandbox, before it existed (a red-team review, 2026-12-05). So ``ray.init`` runs from the folder
    holding heurist's own packages, and the current folder is restored at once (every path heurist holds is absolute
    by then: a run's, a campaign's and an evaluation's folders are resolved when they are opened). Threads that join
    at once (a run's test files, each evaluating) take turns, and only the first starts Ray."""
    import ray

    with _JOINING:  # one thread at a time: a second one saved the first's CODE_ROOT as its "current folder"
        if ray.is_initialized():
            return
        _init_from_code_root(ray, address)


_JOINING = threading.Lock()


def _init_from_code_root(ray, address: str | None) -> None:
    try:
        here: str | None = os.getcwd()
    except OSError:  # the current folder was removed: nothing to go back to
        here = None
    os.chdir(CODE_ROOT)
    try:
        with interrupts.library_init():  # Ray's SIGTERM handler (sys.exit) from its start: heurist's again
            # No address: a Ray of this process's own ("local"). Left to itself, ray.init joins whatever cluster
            # /tmp/ray/ray_current_cluster names: another user's `ray start`, or one killed without `ray stop`,
            # where it retried an address nothing answers on for more than ten minutes.
            # And on a Ray of its own, no memory monitor: it killed a shard whose policy used memory its sandbox
            # allows, whenever the node as a whole passed 95%, and retried it without end (Ray's OOM retries ignore
            # max_retries). The sandbox's own memory limit, and the kernel, decide as they do without Ray.
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **({} if address else {"_system_config": NO_MEMORY_MONITOR}))
    finally:
        if here is not None:
            os.chdir(here)


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (else ``RAY_ADDRESS``; else start Ray on this machine), once per process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    why = unreachable(address)
    if why is not None:
        raise RayBackendError(f"cannot reach a Ray cluster at {address} ({why}) for eval.backend = \"ray\"; check "
                              f"eval.ray_address (--ray-address) or RAY_ADDRESS")
    try:
        init_ray(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayBackendError(f"cannot reach Ray at {address or 'this machine'} ({' '.join(str(exc).split())[:200]}) "
                              f"for eval.backend = \"ray\"; check eval.ray_address or RAY_ADDRESS, and RAY_AUTH_TOKEN "
                              f"where the cluster uses token authentication") from None


def shards(seeds: list[int], pairs: int) -> list[list[int]]:
    """Seeds in shards, two per pair while seeds last: a shard pays a worker pair's start (about half a second),
    so fewer is cheaper, and two per pair let a pair that drew short episodes take over from a slow one."""
    size = max(1, math.ceil(len(seeds) / (2 * max(1, pairs))))
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def node_refusal(limits: Limits, expected: dict[str, Any]) -> str | None:
    """Why this node must not run the driver's episodes, or None: its sandbox gives less than (or other than) the
    driver's machine gives, or its packages differ, so an episode here could end otherwise than there."""
    from envs.containment import SandboxUnusable, containment, require_usable

    try:
        require_usable(limits)
    except SandboxUnusable as exc:
        return str(exc)
    mine = {k: v for k, v in containment(limits).items() if k != "user"}  # the uid may differ between machines
    theirs = expected["containment"]
    differs = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differs:
        first = differs[0]
        return (f"its sandbox differs from this machine's in {', '.join(differs)} ({first}: "
                f"{mine.get(first, 'none')!r} there, {expected['containment'].get(first, 'none')!r} here); give "
                f"every node the same sandbox (`heurist doctor` on each says what it has)")
    versions = package_versions()
    if versions != expected["versions"]:
        pkg = next(k for k in sorted(set(versions) | set(expected["versions"]))
                   if versions.get(k) != expected["versions"].get(k))
        return (f"it runs {pkg} {versions.get(pkg, '(none)')}, this machine {expected['versions'].get(pkg, '(none)')}; "
                f"install the same versions on every node")
    return None


def expectations(limits: Limits) -> dict[str, Any]:
    """What every node must match: this machine's sandbox and package versions."""
    from envs.containment import containment

    return {"containment": {k: v for k, v in containment(limits).items() if k != "user"},
            "versions": package_versions()}


def package_versions() -> dict[str, str]:
    """The versions an episode's result may depend on (recorded with every evaluation; equal on every node)."""
    return dict(_installed_versions())


@functools.lru_cache(maxsize=1)
def _installed_versions() -> dict[str, str]:
    """Read once per process (12 ms of package metadata each evaluation paid): what this process and its fork
    server imported is what its evaluations run, even if a package is upgraded on disk meanwhile."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for pkg in ("heurist", "gymnasium", "ale-py", "mujoco", "numpy", "box2d"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found


def run_shard(job: dict[str, Any], seeds: list[int], limits_json: str, width: int, deadline_epoch: float,
              hidden: list[str], expected: dict[str, Any], bundle: PolicyBundle | None = None,
              eval_timeout_s: float | None = None) -> dict[str, Any]:
    """The body of one Ray task, on its node: ``seeds`` through one sandboxed worker pair, as locally.

    ``deadline_epoch`` is the evaluation's own deadline in wall-clock time, so a shard that waited in Ray's queue,
    or runs again after a lost node, gets no more time than the evaluation has left."""
    import ray

    from envs.isolation import Confinement
    from envs.limits import Limits
    from envs.policy_files import StagedPolicy
    from envs.scheduling import Schedule, Scheduler
    from envs.tasks import TaskSpec
    from envs.worker_pair import WorkerProcess

    where = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"
    limits = Limits.model_validate_json(limits_json)
    refusal = node_refusal(limits, expected)  # checked here: nodes differ
    if refusal is not None:
        return {"node": where, "refused": refusal}
    # The policy folder's copy and the simulator model are this node's: its site packages may lie elsewhere.
    staged = StagedPolicy(bundle, TaskSpec.model_validate_json(job["task"]).simulator_model(job["protocol"])) \
        if bundle is not None else None
    held = ScratchDir("eval")  # a worker killed mid-shard leaves it: a later evaluation on this node removes it
    scratch = held.path
    if staged is not None:
        job = {**job, "policy_path": staged.policy_path(), "simulator_model": staged.simulator_model}
    confinement = Confinement(readable=staged.readable() if staged is not None else [],
                              hidden=[Path(p) for p in hidden])
    left = deadline_epoch - time.time()
    # Not pinned to a core (``cpu`` is ignored): Ray decides how many shards share this node, and pairs pinned at
    # random could share a core while others idle, so that an episode would meet its wall-clock limit here before
    # its CPU limit, unlike on the driver's machine.
    plan = Schedule(seeds=seeds, workers=1, width=width, episode_timeout_s=limits.episode_timeout_s,
                    episode_cpu_s=limits.episode_cpu_s, deadline=time.perf_counter() + left,
                    # The evaluation's own limit, for what an episode cut by it says (as locally): not the time left.
                    eval_timeout_s=eval_timeout_s if eval_timeout_s is not None else max(left, 0.0),
                    job=lambda seed, slot: {**job, "seed": seed, "slot": slot},
                    start_worker=lambda cpu: WorkerProcess(limits, scratch, confinement, None))
    scheduler = Scheduler(plan)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["results"] = scheduler.run()
        except BaseException as exc:  # handed to the task's own thread below
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="heurist-shard", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            # Short joins: Ray cancels a task with a simulated Ctrl-C (``_thread.interrupt_main``), which only
            # Python code between them notices; a blocking join would hold the cancel until the shard ended.
            worker.join(0.5)
    except BaseException:
        scheduler.interrupt()  # every worker pair killed now, not when its episodes end
        worker.join(CANCEL_GRACE_S)
        raise
    finally:
        if not worker.is_alive():
            held.remove()
            if staged is not None:
                staged.close()
    if "error" in outcome:
        raise outcome["error"]
    results = outcome["results"]
    return {"node": where, "episodes": [results[s].model_dump(mode="json", by_alias=True) for s in seeds],
            "setup_runs": plan.setup_runs}


def run_on_ray(seeds: list[int], job: dict[str, Any], limits: Limits, width: int, pairs: int | None,
               deadline: float, hidden: list[str], address: str | None,
               progress: Callable[[EpisodeResult], None] | None = None, bundle: PolicyBundle | None = None,
               eval_timeout_s: float | None = None) -> tuple[dict[int, EpisodeResult], dict[str, int], int]:
    """Every seed's result, how many episodes each node ran, and the policy's set-ups the shards' worker pairs
    completed; ``deadline`` is this process's perf_counter."""
    import ray

    connect(address)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise RayBackendError("the Ray cluster has no CPU for evaluation shards; add a node with CPUs, or use "
                              "eval.backend = \"local\"")
    pairs = pairs or cpus
    task = ray.remote(run_shard).options(num_cpus=1, max_retries=LOST_NODE_RETRIES, retry_exceptions=False)
    waiting = shards(seeds, pairs)
    flying: dict[Any, list[int]] = {}
    results: dict[int, EpisodeResult] = {}
    nodes: dict[str, int] = {}
    tally = {"setup_runs": 0}
    expected = expectations(limits)
    deadline_epoch = time.time() + (deadline - time.perf_counter())
    limits_json = limits.model_dump_json()
    bundle_ref = ray.put(bundle) if bundle is not None else None  # a policy folder's bytes, stored once

    def finish(result: EpisodeResult) -> None:
        results[result.seed] = result
        if progress is not None:
            progress(result)

    def not_run(shard: list[int], why: str) -> None:
        for seed in shard:
            finish(EpisodeResult(seed=seed, status="not_run", error=why))

    try:
        while waiting or flying:
            while waiting and len(flying) < pairs:
                shard = waiting.pop(0)
                if time.perf_counter() >= deadline:
                    not_run(shard, "the evaluation's time limit was reached")
                    continue
                flying[task.remote(job, shard, limits_json, width, deadline_epoch, hidden, expected,
                                   bundle_ref, eval_timeout_s)] = shard
            if not flying:
                break
            ready, _ = ray.wait(list(flying), num_returns=1,
                                timeout=max(0.0, deadline + SHARD_SLACK_S - time.perf_counter()))
            if not ready:  # shards that never came back (a node hung, the cluster lost): cut, nothing runs again
                _cancel(flying)
                for shard in [*flying.values(), *waiting]:
                    not_run(shard, "its shard did not come back from the Ray cluster before the evaluation's time "
                                   "limit")
                flying.clear()
                waiting.clear()
                break
            for ref in ready:
                shard = flying.pop(ref)
                for result in _shard_results(ref, shard, nodes, tally):
                    finish(result)
    except BaseException:
        _cancel(flying)
        raise
    return results, nodes, tally["setup_runs"]


def _shard_results(ref, shard: list[int], nodes: dict[str, int], tally: dict[str, int]) -> list[EpisodeResult]:
    import ray

    try:
        out = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # heurist's own code failed on the node: no episode's fault
        why = redact(" ".join(str(exc).split())[:500])
        raise RayBackendError(f"an evaluation shard failed on the Ray cluster: {why}") from None
    except ray.exceptions.RayError as exc:  # its node or worker was lost, LOST_NODE_RETRIES + 1 times
        why = redact(" ".join(str(exc).split())[:300])
        return [EpisodeResult(seed=s, status="not_run", error=f"its Ray shard was lost: {type(exc).__name__}: {why}")
                for s in shard]
    if "refused" in out:
        raise RayBackendError(f"node {out['node']} must not run this evaluation: {out['refused']}")
    episodes = [EpisodeResult.model_validate(e) for e in out["episodes"]]
    if [e.seed for e in episodes] != shard:
        raise RayBackendError(f"node {out['node']} answered for seeds {[e.seed for e in episodes]}, not the shard's "
                              f"{shard}")
    nodes[out["node"]] = nodes.get(out["node"], 0) + len(episodes)
    runs = out.get("setup_runs", 0)
    tally["setup_runs"] += runs if isinstance(runs, int) and 0 <= runs <= len(shard) + LOST_NODE_RETRIES + 64 else 0
    return episodes


def _cancel(flying: dict[Any, list[int]]) -> None:
    """Cancel shards in flight: a simulated Ctrl-C in each (its worker pairs are killed), then a kill."""
    import ray

    if not flying:
        return
    for ref in flying:
        ray.cancel(ref)
    _, stuck = ray.wait(list(flying), num_returns=len(flying), timeout=CANCEL_GRACE_S)
    for ref in stuck:
        ray.cancel(ref, force=True)


__all__ = ["RayBackendError", "connect", "expectations", "node_refusal", "run_on_ray", "run_shard", "shards",
           "unreachable"]
