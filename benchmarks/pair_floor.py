"""What any two-process evaluation costs at least, beside what heurist's pair costs, measured side by side in one run.

    python benchmarks/pair_floor.py [--only TASK] [--repeats N] [--width W]

The evaluation-speed issue asks one sandboxed worker for 0.85x the bare loop. This benchmark splits the distance
between the two into its parts, each a way of running the same starter on the same seeds:

- ``bare``: ``env.step(policy.act(obs, info))`` in this process, and nothing else;
- ``floor``: the env in this process and the policy in a forked one, ``W`` episodes a round, the observations and
  actions through shared memory, the infos pickled (a policy may read them), one byte each way a round to hand
  over, and no bookkeeping at all: the least a design with the policy in a process of its own pays (pickled
  infos included: HalfCheetah's four numpy floats a step are most of its floor);
- ``in-proc``: heurist's episode code (``envs.lockstep``) with the policy in this process: the trace, failure
  events, diagnostics, action checks and a fresh policy module per episode, no second process;
- ``pair``: heurist's own env side (``envs.worker.RemotePolicy``) and policy side (``envs.policy_host.serve``)
  over their own pipes and shared memory, the policy side a plain fork: no sandbox and no limits;
- ``1 worker``: the sandboxed evaluator, one worker at that width (``envs.evaluator.evaluate``).

The two processes of ``floor`` and ``pair`` share one core, as a worker's pair does (``envs.worker_pair.pair_cpus``:
a wake-up on the same core is the cheaper one). Each way is given as env steps per second and as a ratio to
``bare`` (medians of ``--repeats`` rounds, each round's ways run one after another); the steps of every way are
checked equal to the bare loop's: the same episodes. A last line splits one step's microseconds: the bare step,
the floor's channel, heurist's record (in-proc minus bare), heurist's channel (pair minus in-proc, to set beside
the floor's), and the sandbox with the evaluation's start (1 worker minus pair).
"""

from __future__ import annotations

import argparse
import mmap
import os
import pickle
import runpy
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.eval_throughput import bare_loop, in_process, sandboxed, with_dev_seeds  # noqa: E402
from envs import policy_host  # noqa: E402
from envs.tasks import TaskSpec, get_task  # noqa: E402
from envs.wire import ObservationChannel, ObservationView, observation_pipe, shared_memory_pair  # noqa: E402
from envs.worker import RemotePolicy, Worker  # noqa: E402
from envs.worker_pair import pair_cpus  # noqa: E402

# (task, starter, episodes): a second or two of the bare loop each.
SETTINGS = [("CartPole-v1", "cartpole.py", 320), ("HalfCheetah-v5", "halfcheetah.py", 64)]
WAYS = ("bare", "floor", "in-proc", "pair", "1 worker")


class OneCore:
    """This process, and the process it forks, on one core for the block (as a worker's pair is pinned)."""

    def __enter__(self) -> None:
        self.allowed = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {pair_cpus(1)[0]})

    def __exit__(self, *exc: object) -> None:
        os.sched_setaffinity(0, self.allowed)


def floor_pair(spec: TaskSpec, policy: Path, seeds: tuple[int, ...], width: int) -> tuple[int, float]:
    """The least a two-process design pays: see the module's docstring. Observations of one shape and dtype, and
    actions that are an int or a float array (every built-in task's)."""
    probe = spec.make_env(None, lean=True)
    first, _ = probe.reset(seed=seeds[0])
    shape = probe.action_space.shape
    probe.close()
    discrete, act_size = not shape, int(np.prod(shape)) if shape else 1
    obs_bytes, act_bytes = width * first.nbytes, width * 8 * act_size
    memory = mmap.mmap(-1, obs_bytes + act_bytes + 8 * width)
    observations = np.frombuffer(memory, first.dtype, width * first.size).reshape((width, *first.shape))
    actions = np.frombuffer(memory, np.float64, width * act_size, obs_bytes).reshape(width, act_size)
    starting = np.frombuffer(memory, np.int64, width, obs_bytes + act_bytes)  # seed + 1 where a new episode starts
    to_policy_r, to_policy_w = observation_pipe()
    to_env_r, to_env_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the policy's process: one instance per episode in flight, as heurist's has
        try:
            os.close(to_policy_w), os.close(to_env_r)
            module = runpy.run_path(str(policy))
            agents: list = [None] * width
            with os.fdopen(to_policy_r, "rb") as inbox:
                while (infos := pickle.load(inbox)) is not None:
                    for i, info in enumerate(infos):
                        if info is None:
                            continue
                        if starting[i]:
                            agents[i] = module["Policy"]()
                            agents[i].reset(int(starting[i]) - 1)
                            starting[i] = 0
                        actions[i] = agents[i].act(observations[i].copy(), info)  # its own copy, as a step's obs
                    os.write(to_env_w, b"a")
        finally:
            os._exit(0)
    os.close(to_policy_r), os.close(to_env_w)
    outbox = os.fdopen(to_policy_w, "wb")
    queue = list(reversed(seeds))
    envs = [spec.make_env(None, lean=True) for _ in range(width)]
    infos: list = [None] * width
    steps, started = 0, time.perf_counter()

    def begin(i: int) -> None:
        seed = queue.pop()
        observations[i], infos[i] = envs[i].reset(seed=seed)
        starting[i] = seed + 1

    for i in range(min(width, len(queue))):
        begin(i)
    while any(info is not None for info in infos):
        pickle.dump(infos, outbox, protocol=pickle.HIGHEST_PROTOCOL)
        outbox.flush()
        os.read(to_env_r, 1)
        for i, info in enumerate(infos):
            if info is None:
                continue
            action = int(actions[i, 0]) if discrete else actions[i].reshape(shape)
            obs, _, terminated, truncated, infos[i] = envs[i].step(action)
            steps += 1
            if terminated or truncated:
                infos[i] = None
                if queue:
                    begin(i)
            else:
                observations[i] = obs
    elapsed = time.perf_counter() - started
    pickle.dump(None, outbox)
    outbox.close()
    os.waitpid(pid, 0)
    os.close(to_env_r)
    for env in envs:
        env.close()
    return steps, elapsed


def heurist_pair(spec: TaskSpec, policy: Path, seeds: tuple[int, ...], width: int) -> tuple[int, float]:
    """heurist's two sides of a worker pair over their own channel, the policy side forked with no sandbox."""
    requests_r, requests_w = observation_pipe()
    replies_r, replies_w = os.pipe()
    shared_rw, shared_ro = shared_memory_pair()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(requests_w), os.close(replies_r)
            with os.fdopen(requests_r, "rb") as requests, os.fdopen(replies_w, "wb") as replies:
                policy_host.serve(requests, replies, ObservationView(shared_ro))
        finally:
            os._exit(0)
    os.close(requests_r), os.close(replies_w), os.close(shared_ro)
    with os.fdopen(requests_w, "wb") as requests, os.fdopen(replies_r, "rb") as replies:
        remote = RemotePolicy(requests, replies, str(policy), policy.read_text(), ObservationChannel(shared_rw))
        group = Worker(spec.model_dump_json(), spec.protocol(None).name, remote).episodes
        queue, steps, started = list(reversed(seeds)), 0, time.perf_counter()
        while queue or len(group):
            while queue and len(group) < width:
                slot = min(set(range(width)) - {run.slot for run in group.runs})
                group.add({"seed": queue.pop(), "slot": slot, "trace_window": 64, "max_windows": 5})
            steps += sum(result["env_steps"] for result in group.round())
        elapsed = time.perf_counter() - started
    os.waitpid(pid, 0)
    return steps, elapsed


def pinned(way, *args):
    with OneCore():
        return way(*args)


def one_round(spec: TaskSpec, policy: Path, seeds: tuple[int, ...], width: int) -> dict[str, float]:
    """Env steps per second of each way, once; each way's steps checked against the bare loop's."""
    runs = {"bare": lambda: bare_loop(spec, None, policy, seeds),
            "floor": lambda: pinned(floor_pair, spec, policy, seeds, width),
            "in-proc": lambda: in_process(spec, None, policy, seeds, width),
            "pair": lambda: pinned(heurist_pair, spec, policy, seeds, width),
            "1 worker": lambda: sandboxed(spec, None, policy, 1, width)}
    rates, bare_steps = {}, None
    for way, run in runs.items():
        steps, elapsed = run()
        bare_steps = steps if bare_steps is None else bare_steps
        if steps != bare_steps:
            raise SystemExit(f"{spec.id}: {way} took {steps} env steps, the bare loop {bare_steps}: not the same "
                             f"episodes, so no comparison")
        rates[way] = steps / elapsed
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="one task of the settings, e.g. HalfCheetah-v5")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every way; the medians are printed")
    parser.add_argument("--width", type=int, default=32, help="episodes a round, in every way but bare")
    args = parser.parse_args()
    settings = [s for s in SETTINGS if args.only in (None, s[0])]
    if not settings:
        raise SystemExit(f"--only {args.only}: not one of {', '.join(s[0] for s in SETTINGS)}")
    print(f"{'setting':<16}" + "".join(f"{w:>12}" for w in WAYS) + "   (env steps/s; medians of "
          f"{args.repeats} rounds; below: / bare)")
    for task, starter, episodes in settings:
        spec = with_dev_seeds(get_task(task), episodes)
        policy = ROOT / "policies" / starter
        sandboxed(spec, None, policy, 1, args.width)  # the fork server up, and this task's simulator imported
        rounds = [one_round(spec, policy, spec.seeds.dev, args.width) for _ in range(args.repeats)]
        medians = {w: statistics.median(r[w] for r in rounds) for w in WAYS}
        ratios = {w: statistics.median(r[w] / r["bare"] for r in rounds) for w in WAYS}
        print(f"{task:<16}" + "".join(f"{medians[w]:>12,.0f}" for w in WAYS))
        print(f"{'':<16}" + "".join(f"{ratios[w]:>12.2f}" for w in WAYS))
        us = {w: 1e6 / medians[w] for w in WAYS}
        print(f"{'':<16}us/step: bare {us['bare']:.1f} | channel: the floor's {us['floor'] - us['bare']:+.1f}, "
              f"heurist's {us['pair'] - us['in-proc']:+.1f} | heurist's record {us['in-proc'] - us['bare']:+.1f} | "
              f"sandbox and start {us['1 worker'] - us['pair']:+.1f}")


if __name__ == "__main__":
    main()
