"""Evaluation on Ray (``eval.backend = "ray"``): the same episodes, the same sandbox, shards on any node.

A real Ray, started on this machine by `heurist eval --backend ray` itself (the cluster case, two nodes
started with `ray start`, is in tests/test_campaign.py's slow tests)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

from envs.ray_backend import shards
from tests.offline_runs import heurist
from tests.warm_cli import run_heurist

SECRET = "sk-test-ray-backend-0123456789abcdef"


def _probe_policy(tmp: Path, hidden: Path) -> Path:
    """A CartPole policy folder that fails its episode if it can see the key or the ledger's folder, and on seed 2
    by design, so a sandbox that leaks on a Ray node, or a failure that spreads beyond its episode, shows. Its
    gains are a data file beside it, read by its ``setup()``: a node must stage the folder as this machine does."""
    folder = tmp / "probe"
    folder.mkdir()
    (folder / "gains.json").write_text('{"angle": 1.0, "velocity": 0.5}')
    (folder / "policy.py").write_text(textwrap.dedent(f"""
        import json
        import os
        from pathlib import Path


        def setup():
            return json.loads((Path(__file__).parent / "gains.json").read_text())


        class Policy:
            def __init__(self, setup):
                self.gains = setup

            def reset(self, seed):
                self.seed, self.t = seed, 0

            def act(self, obs, info):
                self.t += 1
                seen = [k for k, v in os.environ.items() if "{SECRET}" in v or k == "OPENAI_API_KEY"]
                if seen or os.path.exists({str(hidden)!r}):
                    raise RuntimeError(f"the sandbox leaked: {{seen}}")
                if self.seed == 2 and self.t == 5:
                    raise ValueError("seed 2 fails at step 5")
                return 1 if self.gains["angle"] * obs[2] + self.gains["velocity"] * obs[3] > 0 else 0
    """))
    return folder


def _episodes(ledger: Path) -> tuple[list[dict], int]:
    finished = [json.loads(line) for line in ledger.read_text().splitlines() if '"eval_finished"' in line][-1]
    return finished["per_episode"], finished["env_steps"]


def test_shards_are_two_per_pair_and_cover_every_seed_once():
    assert shards(list(range(8)), 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert shards(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert shards([7], 4) == [[7]]
    assert sum(shards(list(range(23)), 3), []) == list(range(23))


def test_ray_backend_gives_the_local_results_under_the_same_sandbox(home):
    tmp, env = home
    ledgers = tmp / "ledgers"
    ledgers.mkdir()
    # Ray's own folder, where a cluster killed without `ray stop` left its address behind: with no address given,
    # ray.init joined what that file named, and retried an address nothing answers on for more than ten minutes (a
    # red-team review, 2026-12-05). heurist starts a Ray of its own. (A short path: Ray's sockets live under it.)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("198.51.100.1:6399")  # TEST-NET-2: nothing answers there
    env = {**env, "OPENAI_API_KEY": SECRET, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(ray_tmp)}
    env.pop("RAY_ADDRESS", None)
    policy = _probe_policy(tmp, ledgers)
    common = ["eval", policy, "--env", "CartPole-v1", "--episodes", "6", "--workers", "2", "--lockstep", "2", "--json"]
    local = heurist(env, *common, "--ledger", ledgers / "local.jsonl")
    # Run from a folder holding a package named as one of heurist's (a cloned repository's): Ray put the driver's
    # current folder first on every worker's path, and its workers imported that package, outside the sandbox (a
    # red-team review, 2026-12-05).
    here = tmp / "a-cloned-repository"
    (here / "envs").mkdir(parents=True)
    marker = tmp / "imported-from-the-current-folder"
    (here / "envs" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                             f"__path__.append({str(Path(shards.__code__.co_filename).parent)!r})\n")
    try:
        on_ray = run_heurist([*common, "--backend", "ray", "--ledger", ledgers / "ray.jsonl"], env, cwd=here,
                             timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not marker.exists()
    assert local.returncode == 0 and on_ray.returncode == 0, (local.stderr[-2000:], on_ray.stderr[-2000:])
    summary = json.loads(on_ray.stdout)
    assert summary["backend"] == "ray" and sum(summary["nodes"].values()) == 6, summary
    # One set-up per worker pair: one or two locally (a second pair starts only if seeds still wait after
    # envs.scheduling.STAGGER_S), one per shard on Ray; the same policy (its data in its identity).
    assert json.loads(local.stdout)["setup_runs"] in (1, 2) and summary["setup_runs"] == len(shards(list(range(6)), 2))
    assert summary["policy_sha256"] == json.loads(local.stdout)["policy_sha256"]
    episodes, steps = _episodes(ledgers / "ray.jsonl")
    assert (episodes, steps) == _episodes(ledgers / "local.jsonl")
    by_seed = {e["seed"]: e for e in episodes}
    assert by_seed[2]["status"] == "policy_error" and "seed 2 fails at step 5" in by_seed[2]["error"]
    assert all(e["status"] == "ok" for s, e in by_seed.items() if s != 2), episodes  # nothing leaked anywhere
    assert SECRET not in (ledgers / "ray.jsonl").read_text() + on_ray.stdout + on_ray.stderr


def test_a_node_whose_sandbox_or_packages_differ_from_this_machines_refuses_to_run_episodes():
    from envs.limits import Limits
    from envs.ray_backend import expectations, node_refusal

    limits = Limits()
    here = expectations(limits)
    assert node_refusal(limits, here) is None  # this machine, as a node of its own cluster
    weaker = {**here, "containment": {**here["containment"],
                                      "filesystem": "none: a worker can read and write wherever its user can"}}
    assert "its sandbox differs from this machine's in filesystem" in node_refusal(limits, weaker)
    other = {**here, "versions": {**here["versions"], "gymnasium": "0.0.1"}}
    assert "runs gymnasium" in node_refusal(limits, other) and "0.0.1" in node_refusal(limits, other)


def test_an_address_where_something_other_than_a_ray_head_answers_is_refused_at_once(monkeypatch):
    """A red-team review (2026-12-05): given the dashboard's port, or any other service's, Ray retried it for 14
    minutes; a connection that opened was all heurist checked."""
    import socket
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import envs.ray_backend
    from envs.ray_backend import unreachable

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    web = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        assert "not as a Ray cluster's head (a gRPC server) does" in unreachable(f"127.0.0.1:{web.server_address[1]}")
    finally:
        web.shutdown()
    monkeypatch.setattr(envs.ray_backend, "GRPC_PROBE_S", 0.5)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel accepts; nothing ever answers
    try:
        assert "not as a Ray cluster's head" in unreachable(f"127.0.0.1:{silent.getsockname()[1]}")
    finally:
        silent.close()


def test_threads_joining_ray_at_once_start_it_once_and_leave_the_current_folder_as_it_was(tmp_path):
    """A review (2026-12-05): two threads joining at once (a run's test files, each evaluating on Ray) made one fail
    and left the whole process in heurist's code folder (the second saved the first's folder as its own)."""
    import subprocess
    import sys

    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's sockets live under it
    script = ("import os, threading\nfrom envs.ray_backend import connect\nerrors = []\n"
              "def join():\n    try:\n        connect(None)\n    except BaseException as exc:\n"
              "        errors.append(repr(exc))\n"
              "threads = [threading.Thread(target=join) for _ in range(3)]\n"
              "[t.start() for t in threads]\n[t.join() for t in threads]\n"
              "print(os.getcwd())\nprint(errors)\nimport ray\nray.shutdown()\n")
    repo = Path(shards.__code__.co_filename).resolve().parent.parent
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=240,
                              env={**os.environ, "PYTHONPATH": str(repo), "RAY_TMPDIR": str(ray_tmp),
                                   "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": ""})
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.stdout.splitlines()[-2:] == [str(tmp_path), "[]"], (done.stdout, done.stderr[-2000:])
