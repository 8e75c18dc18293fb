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
source and limits in each shard's arguments, and plain episode results back; no key or token is
ever an argument, and each node's sandbox scrubs its own environment as it does locally.

A lost node fails its shard with Ray's error; Ray runs the shard again elsewhere
(``LOST_NODE_RETRIES``). The env steps the lost attempt took are not counted: they died with the
node (DEVELOPERS.md, Known gaps).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from common.errors import HeuristError
from common.safe_text import redact
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
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


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
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayBackendError(f"cannot reach Ray at {address or 'this machine'} ({' '.join(str(exc).split())[:200]}) "
                              f"for eval.backend = \"ray\"; check eval.ray_address or RAY_ADDRESS, and RAY_AUTH_TOKEN "
                              f"where the cluster uses token authentication") from None


def shards(seeds: list[int], pairs: int, width: int) -> list[list[int]]:
    """Seeds in shards of at most ``width`` (a worker pair's episodes in flight), at least one shard per pair
    while seeds last, so every pair is busy and a slow shard holds back as few seeds as it can."""
    size = max(1, min(width, math.ceil(len(seeds) / max(1, pairs))))
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def run_shard(job: dict[str, Any], seeds: list[int], limits_json: str, width: int, time_left_s: float,
              hidden: list[str]) -> dict[str, Any]:
    """The body of one Ray task, on its node: ``seeds`` through one sandboxed worker pair, as locally."""
    import ray

    from envs.containment import require_usable
    from envs.isolation import Confinement
    from envs.limits import Limits
    from envs.scheduling import Schedule, Scheduler
    from envs.worker_pair import WorkerProcess

    where = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:8]}"
    limits = Limits.model_validate_json(limits_json)
    try:
        require_usable(limits)  # this node's sandbox, checked here: nodes differ
    except HeuristError as exc:
        return {"node": where, "refused": str(exc)}
    scratch = Path(tempfile.mkdtemp(prefix="heurist-eval-"))
    confinement = Confinement(hidden=[Path(p) for p in hidden])
    started = time.perf_counter()
    try:
        plan = Schedule(seeds=seeds, workers=1, width=width, episode_timeout_s=limits.episode_timeout_s,
                        episode_cpu_s=limits.episode_cpu_s, deadline=started + time_left_s,
                        eval_timeout_s=time_left_s, job=lambda seed, slot: {**job, "seed": seed, "slot": slot},
                        start_worker=lambda cpu: WorkerProcess(limits, scratch, confinement, cpu))
        results = Scheduler(plan).run()  # a cancel (KeyboardInterrupt here) kills the pair on its way out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"node": where, "episodes": [results[s].model_dump(mode="json", by_alias=True) for s in seeds]}


def run_on_ray(seeds: list[int], job: dict[str, Any], limits_json: str, width: int, pairs: int | None,
               deadline: float, hidden: list[str], address: str | None,
               progress: Callable[[EpisodeResult], None] | None = None) -> tuple[dict[int, EpisodeResult], dict[str, int]]:
    """Every seed's result, and how many episodes each node ran; ``deadline`` is this process's perf_counter."""
    import ray

    connect(address)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise RayBackendError("the Ray cluster has no CPU for evaluation shards; add a node with CPUs, or use "
                              "eval.backend = \"local\"")
    pairs = pairs or cpus
    task = ray.remote(run_shard).options(num_cpus=1, max_retries=LOST_NODE_RETRIES, retry_exceptions=False)
    waiting = shards(seeds, pairs, width)
    flying: dict[Any, list[int]] = {}
    results: dict[int, EpisodeResult] = {}
    nodes: dict[str, int] = {}

    def finish(result: EpisodeResult) -> None:
        results[result.seed] = result
        if progress is not None:
            progress(result)

    try:
        while waiting or flying:
            while waiting and len(flying) < pairs:
                shard = waiting.pop(0)
                left = deadline - time.perf_counter()
                if left <= 0:
                    for seed in shard:
                        finish(EpisodeResult(seed=seed, status="not_run", error="the evaluation's time limit was reached"))
                    continue
                flying[task.remote(job, shard, limits_json, width, left, hidden)] = shard
            if not flying:
                break
            ready, _ = ray.wait(list(flying), num_returns=1,
                                timeout=max(0.0, deadline + SHARD_SLACK_S - time.perf_counter()))
            if not ready:  # shards that never came back (a node hung, the cluster lost): cut, nothing runs again
                for ref, shard in list(flying.items()):
                    ray.cancel(ref, force=True)
                    for seed in shard:
                        finish(EpisodeResult(seed=seed, status="not_run", error="its shard never came back from the "
                                                                               "Ray cluster before the time limit"))
                flying.clear()
                break
            for ref in ready:
                shard = flying.pop(ref)
                for result in _shard_results(ref, shard, nodes):
                    finish(result)
    except BaseException:
        _cancel(flying)
        raise
    return results, nodes


def _shard_results(ref, shard: list[int], nodes: dict[str, int]) -> list[EpisodeResult]:
    import ray

    try:
        out = ray.get(ref)
    except ray.exceptions.RayError as exc:  # lost LOST_NODE_RETRIES + 1 times, or the task itself failed
        why = redact(" ".join(str(exc).split())[:300])
        return [EpisodeResult(seed=s, status="not_run", error=f"its Ray shard failed: {type(exc).__name__}: {why}")
                for s in shard]
    if "refused" in out:
        raise RayBackendError(f"node {out['node']} cannot run the sandbox: {out['refused']}")
    nodes[out["node"]] = nodes.get(out["node"], 0) + len(out["episodes"])
    return [EpisodeResult.model_validate(e) for e in out["episodes"]]


def _cancel(flying: dict[Any, list[int]]) -> None:
    """Cancel shards in flight: a KeyboardInterrupt in each (its worker pair is killed), then a kill."""
    import ray

    for ref in flying:
        ray.cancel(ref)
    _, stuck = ray.wait(list(flying), num_returns=len(flying), timeout=CANCEL_GRACE_S) if flying else ([], [])
    for ref in stuck:
        ray.cancel(ref, force=True)


__all__ = ["RayBackendError", "connect", "run_on_ray", "run_shard", "shards"]
