"""Bring your own policy: policy folders with data files, the task's simulator model, set-up once per worker, and
episode limits sized from the task. Real evaluations through the sandboxed worker pairs."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from common.errors import PolicyError
from envs.evaluator import EvalRequest, evaluate
from envs.limits import Limits
from envs.policy_files import folder_sha256, read_policy
from envs.tasks import get_task
from tests.test_cli import assert_one_line_error, heurist

# Reads a JSON table beside it and the task's MuJoCo XML; fails its episode unless both are what they should be and
# the copy it reads cannot be written.
FOLDER_POLICY = '''
    import json
    from pathlib import Path

    import numpy as np

    HERE = Path(__file__).parent


    class Policy:
        def __init__(self, simulator_model, action_space):
            import mujoco

            model = mujoco.MjModel.from_xml_path(simulator_model)
            if model.nu != action_space.shape[0]:
                raise ValueError(f"the model has {model.nu} actuators, the env {action_space.shape[0]}")
            self.table = json.loads((HERE / "tables" / "tree.json").read_text())
            try:
                with open(HERE / "tables" / "tree.json", "w") as handle:
                    handle.write("{}")
            except OSError:
                pass
            else:
                raise RuntimeError("the policy's data could be written")
            self.nu = model.nu

        def reset(self, seed):
            self.t = 0

        def act(self, obs, info):
            self.t += 1
            return np.full(self.nu, self.table["gain"] * (1 if self.t % 20 < 10 else -1), dtype=np.float32)
'''


def _folder(root: Path, gain: float, source: str = FOLDER_POLICY) -> Path:
    (root / "tables").mkdir(parents=True, exist_ok=True)
    (root / "policy.py").write_text(textwrap.dedent(source))
    (root / "tables" / "tree.json").write_text(json.dumps({"gain": gain, "nodes": list(range(2000))}))
    return root


def _quick(policy: Path, task: str, ledger_dir: Path, **kw):
    from common.ledger import Ledger

    limits = kw.pop("limits", Limits(episode_timeout_s=60, episode_cpu_s=60, memory_mb=2048))
    kw.setdefault("stagger_s", 0)  # as conftest's run_eval: the pairs asked for, side by side
    request = EvalRequest(policy_path=policy, task_id=task, limits=limits, **kw)
    return evaluate(get_task(task), request, Ledger(ledger_dir / "ledger.jsonl"))


def test_a_policy_folder_reads_its_data_and_the_simulator_model_read_only_and_both_are_its_identity(tmp_path):
    folder = _folder(tmp_path / "mpc", gain=0.5)
    result = _quick(folder, "HalfCheetah-v5", tmp_path, episodes=2, workers=1, max_steps=40)
    assert result.status == "complete", [e.error for e in result.episodes]
    assert result.policy_files == {"tables/tree.json": read_policy(folder).file_hashes()["tables/tree.json"]}
    assert result.policy_sha256 == folder_sha256((folder / "policy.py").read_bytes(),
                                                 {"tables/tree.json": (folder / "tables" / "tree.json").read_bytes()})
    assert json.loads((folder / "tables" / "tree.json").read_text())["gain"] == 0.5  # the user's folder untouched

    # The data decides the actions, and another table is another policy.
    _folder(folder, gain=-0.5)
    other = _quick(folder, "HalfCheetah-v5", tmp_path, episodes=2, workers=1, max_steps=40)
    assert other.status == "complete" and other.policy_sha256 != result.policy_sha256
    assert [e.return_ for e in other.episodes] != [e.return_ for e in result.episodes]
    records = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert records[0]["policy_files"] == result.policy_files  # the ledger names every file the score depends on


def test_a_folder_policy_without_its_data_fails_its_episodes_with_the_reason(tmp_path):
    folder = _folder(tmp_path / "mpc", gain=0.5)
    (folder / "tables" / "tree.json").unlink()
    result = _quick(folder, "HalfCheetah-v5", tmp_path, episodes=1, workers=1, max_steps=5)
    assert result.status == "broken" and "tree.json" in result.episodes[0].error


def test_a_policy_folder_never_hands_over_links_special_files_or_hidden_files(tmp_path):
    folder = _folder(tmp_path / "p", gain=1.0)
    (folder / ".env").write_text("OPENAI_API_KEY=sk-secret")
    (folder / ".git").mkdir()
    (folder / ".git" / "config").write_text("[core]")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert set(read_policy(folder).files) == {"tables/tree.json"}
    # What heurist writes is left out only inside the folder: a home or clips folder holding it leaves out nothing.
    (folder / "clips").mkdir()
    (folder / "clips" / "seed0.png").write_bytes(b"\0")
    assert set(read_policy(folder, [folder / "clips"]).files) == {"tables/tree.json"}
    assert set(read_policy(folder, [tmp_path, folder.parent]).files) == {"tables/tree.json", "clips/seed0.png"}
    (folder / "clips" / "seed0.png").unlink()
    (folder / "clips").rmdir()

    (folder / "secret").symlink_to(tmp_path / "elsewhere.txt")
    (tmp_path / "elsewhere.txt").write_text("the user's file")
    with pytest.raises(PolicyError, match="secret is a symbolic link"):
        read_policy(folder)
    (folder / "secret").unlink()
    (folder / "linked").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(PolicyError, match="linked is a symbolic link"):
        read_policy(folder)
    (folder / "linked").unlink()
    os.mkfifo(folder / "pipe")  # reading it would wait forever
    with pytest.raises(PolicyError, match="pipe is not a regular file"):
        read_policy(folder)
    (folder / "pipe").unlink()
    (folder / "policy.py").unlink()
    with pytest.raises(PolicyError, match="has no policy.py"):
        read_policy(folder)


def test_the_cli_evaluates_a_folder_and_says_what_is_wrong_with_one_in_one_line(tmp_path):
    folder = tmp_path / "tabular"
    folder.mkdir()
    (folder / "policy.py").write_text(textwrap.dedent('''
        import json
        from pathlib import Path

        class Policy:
            def __init__(self):
                self.push = json.loads((Path(__file__).parent / "push.json").read_text())

            def reset(self, seed):
                pass

            def act(self, obs, info):
                return int(obs[2] + obs[3] * self.push["gain"] > 0)
    '''))
    (folder / "push.json").write_text('{"gain": 0.5}')
    home = {"HEURIST_HOME": str(tmp_path / "home")}
    args = ["eval", str(folder), "--env", "CartPole-v1", "--episodes", "2", "--json"]
    done = heurist(*args, env_extra=home)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "complete" and summary["mean"] > 100

    (folder / "policy.py").unlink()
    done = heurist(*args, env_extra=home)
    assert done.returncode == 2
    assert_one_line_error(done, "has no policy.py")


SETUP_POLICY = '''
    import numpy as np


    def setup(action_space):
        # Deterministic (numpy's generator is seeded with 0 for it) and expensive enough to matter.
        return {"table": np.random.uniform(-1, 1, size=(256, 4)), "seen": [], "n": action_space.n}


    class Policy:
        def __init__(self, setup):
            self.shared = setup
            if setup["seen"]:
                raise RuntimeError(f"another episode's changes reached this one: {setup['seen']}")
            try:
                setup["table"][0, 0] = 99.0
            except ValueError:
                pass
            else:
                raise RuntimeError("the shared table could be written")

        def reset(self, seed):
            self.shared["seen"].append(seed)  # this episode's copy only
            self.t = 0

        def act(self, obs, info):
            self.t += 1
            row = self.shared["table"][self.t % 256]
            return int((obs @ row[:4] if obs.shape[0] == 4 else row[0]) + obs[2] * 10 + obs[3] > 0)
'''


def test_set_up_runs_once_per_worker_and_episodes_still_depend_on_their_seed_alone(tmp_path):
    policy = tmp_path / "setup.py"
    policy.write_text(textwrap.dedent(SETUP_POLICY))
    serial = _quick(policy, "CartPole-v1", tmp_path, episodes=6, workers=1)
    assert serial.status == "complete", [e.error for e in serial.episodes]
    assert serial.setup_runs == 1 and serial.summary()["setup_runs"] == 1
    parallel = _quick(policy, "CartPole-v1", tmp_path, episodes=6, workers=2, lockstep=1)
    assert parallel.setup_runs == 2
    shuffled = _quick(policy, "CartPole-v1", tmp_path, seeds=[5, 3, 1, 0, 4, 2], workers=2, lockstep=3)
    by_seed = {e.seed: (e.return_, e.length) for e in shuffled.episodes}
    assert [(e.return_, e.length) for e in serial.episodes] == [(e.return_, e.length) for e in parallel.episodes] \
        == [by_seed[s] for s in range(6)]
    records = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [r["setup_runs"] for r in records if r["event"] == "eval_finished"] == [1, 2, 2]


# The policy process reports its set-up's CPU seconds in its first start's reply: a policy can rewrite that reply
# (its host module is in its own process), so what it says is only believed where it can be true.
CLAIMS_A_SET_UP = '''
    import sys

    _host = sys.modules["__main__"]  # envs.policy_host, run as python -m
    _send = _host.send_to_env


    def _claim(stream, reply):
        if "observes" in reply or "error" in reply:  # a start's reply
            reply["setup_s"] = 12345.0
        _send(stream, reply)


    _host.send_to_env = _claim
    {setup}

    class Policy:
        {init}

        def reset(self, seed):
            pass

        def act(self, obs, info):
            return int(obs[2] + 0.5 * obs[3] > 0)
'''


def test_a_set_up_the_policy_process_claims_is_believed_only_where_it_can_be_true(tmp_path):
    none = tmp_path / "no_setup.py"
    none.write_text(textwrap.dedent(CLAIMS_A_SET_UP.format(setup="", init="pass")))
    result = _quick(none, "CartPole-v1", tmp_path, episodes=3, workers=2)
    assert result.status == "complete", [e.error for e in result.episodes]
    assert result.setup_runs == 0 and [e.setup_s for e in result.episodes] == [None] * 3
    real = tmp_path / "setup.py"
    real.write_text(textwrap.dedent(CLAIMS_A_SET_UP.format(
        setup="\n    def setup():\n        return {}\n",
        init="def __init__(self, setup):\n            pass")))
    started = time.perf_counter()
    result = _quick(real, "CartPole-v1", tmp_path, episodes=3, workers=1)
    took = time.perf_counter() - started
    assert result.status == "complete", [e.error for e in result.episodes]
    claimed = [e.setup_s for e in result.episodes if e.setup_s is not None]
    # Not 12345 s: at most what the start's wall time allows on the cores the pair may use.
    assert result.setup_runs == 1 and len(claimed) == 1 and 0 < claimed[0] <= took * len(os.sched_getaffinity(0))


def test_a_failing_set_up_fails_every_episode_with_its_reason_and_runs_once_per_worker(tmp_path):
    policy = tmp_path / "bad_setup.py"
    policy.write_text(textwrap.dedent('''
        def setup():
            raise MemoryError("the table does not fit")


        class Policy:
            def __init__(self, setup):
                pass

            def reset(self, seed):
                pass

            def act(self, obs, info):
                return 0
    '''))
    result = _quick(policy, "CartPole-v1", tmp_path, episodes=4, workers=1)
    assert result.status == "broken" and result.setup_runs == 1
    assert all("setup() failed at bad_setup.py:3 in setup: MemoryError: the table does not fit" in e.error
               for e in result.episodes)


def test_the_check_refuses_a_policy_that_takes_setup_without_defining_it(tmp_path):
    policy = tmp_path / "no_setup.py"
    policy.write_text("class Policy:\n    def __init__(self, setup):\n        pass\n    def reset(self, seed):\n"
                      "        pass\n    def act(self, obs, info):\n        return 0\n")
    with pytest.raises(PolicyError, match="defines no top-level function setup"):
        _quick(policy, "CartPole-v1", tmp_path, episodes=1)


SLOW_STEPS = '''
    import time

    class Policy:
        def reset(self, seed):
            pass

        def act(self, obs, info):
            time.sleep(0.3)
            return 0
'''


def test_episode_limits_are_sized_from_the_task_and_recorded(tmp_path):
    policy = tmp_path / "slow.py"
    policy.write_text(textwrap.dedent(SLOW_STEPS))
    floor = Limits(episode_timeout_s=1, episode_cpu_s=1, memory_mb=2048)
    # Ten steps of 0.3 s: over a one-second limit, within one sized at a second a step.
    cut = _quick(policy, "CartPole-v1", tmp_path, episodes=1, workers=1, max_steps=10, limits=floor)
    assert cut.episodes[0].status == "timeout" and cut.limits["episode_timeout_s"] == 1
    sized = _quick(policy, "CartPole-v1", tmp_path, episodes=1, workers=1, max_steps=10, limits=floor, step_s=1.0)
    assert sized.status == "complete" and sized.episodes[0].length == 10
    assert sized.limits == {"episode_timeout_s": 10.0, "episode_cpu_s": 10.0, "eval_timeout_s": 3600.0, "step_s": 1.0}
    records = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert records[-2]["event"] == "eval_started" and records[-2]["limits"] == sized.limits


def test_the_step_cap_and_the_evaluation_limit_follow_the_task_and_protocol(tmp_path):
    assert get_task("ALE/Breakout-v5").episode_step_cap("deterministic") == 108_000
    assert get_task("ALE/Breakout-v5").episode_step_cap("standard") == 27_000  # 108,000 frames at frameskip 4
    assert get_task("HalfCheetah-v5").episode_step_cap() == 1000
    assert get_task("HalfCheetah-v5").simulator_model().name == "half_cheetah.xml"
    assert get_task("CartPole-v1").simulator_model() is None
    policy = tmp_path / "fast.py"
    policy.write_text("class Policy:\n    def reset(self, seed):\n        pass\n    def act(self, obs, info):\n"
                      "        return 0\n")
    # A planner at 1.5 s a step on HalfCheetah: 1,500 s an episode; 20 seeds on 2 workers need 10 rounds of it.
    request = EvalRequest(policy_path=policy, task_id="HalfCheetah-v5", step_s=1.5, workers=2)
    from envs.evaluator import Evaluator

    evaluator = Evaluator(get_task("HalfCheetah-v5"), request)
    limits, whole = evaluator._sized_limits(list(range(20)))
    assert limits.episode_timeout_s == limits.episode_cpu_s == 1500.0 and whole == 10 * 1500.0 + 60
    explicit = Evaluator(get_task("HalfCheetah-v5"), request.model_copy(update={"eval_timeout_s": 100.0}))
    assert explicit._sized_limits(list(range(20)))[1] == 100.0


def test_the_cli_refuses_a_negative_step_allowance(tmp_path):
    done = heurist("eval", str(tmp_path / "p.py"), "--env", "CartPole-v1", "--step-seconds", "-1",
                   env_extra={"HEURIST_HOME": str(tmp_path / "home")})
    assert done.returncode == 2 and "--step-seconds" in done.stderr and "Traceback" not in done.stderr


def test_the_simulator_model_is_a_copy_of_the_file_alone_never_the_folder_beside_it(tmp_path):
    """A custom task's XML may sit in a project or home folder beside secrets: only the model file is handed over."""
    import shutil

    from envs.tasks import FailureRules, TaskSpec

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(get_task("HalfCheetah-v5").simulator_model(), project / "cheetah.xml")
    (project / ".env").write_text("AWS_SECRET_ACCESS_KEY=hunter2")
    spec = TaskSpec(id="MyCheetah-v0", gym_id="HalfCheetah-v5", family="custom", description="a cheetah of my own",
                    make_kwargs={"xml_file": str(project / "cheetah.xml")},
                    failure_rules=FailureRules(termination="neutral"))
    assert spec.simulator_model() == (project / "cheetah.xml").resolve()
    policy = tmp_path / "peek.py"
    policy.write_text(textwrap.dedent('''
        import os

        import numpy as np


        class Policy:
            def __init__(self, simulator_model):
                seen = sorted(os.listdir(os.path.dirname(simulator_model)))
                if seen != ["cheetah.xml"] or os.access(simulator_model, os.W_OK):
                    raise RuntimeError(f"beside the model: {seen}")
                with open(simulator_model) as handle:
                    self.size = len(handle.read())

            def reset(self, seed):
                pass

            def act(self, obs, info):
                return np.zeros(6, dtype=np.float32)
    '''))
    from common.ledger import Ledger

    result = evaluate(spec, EvalRequest(policy_path=policy, task_id=spec.id, seeds=[0], split="custom", max_steps=5,
                                        workers=1, limits=Limits(episode_timeout_s=60, episode_cpu_s=60)),
                      Ledger(tmp_path / "ledger.jsonl"))
    assert result.status == "complete", result.episodes[0].error
    assert "hunter2" not in (tmp_path / "ledger.jsonl").read_text()


def test_set_up_time_is_the_pairs_start_up_not_an_episodes_budget(tmp_path):
    """A set-up that takes most of an episode's CPU budget, then episodes that take most of it too: every episode
    completes, whichever runs first on its worker (before, the first one on each worker ran out of CPU).

    The kernel charges CPU a tick at a time, and on a core shared with processes that wake often it charges a busy
    process up to about 1.4 times what it ran (envs/policy_slots.py, charged_cpu_s): each part stays under the budget by
    more than that (3.1 s of 5, 62%). Set-up and episode together (6.2 s) are still more than the budget and its
    rounding up (at most 6 s), so a set-up counted against its first episode still fails here. The wall-clock
    limit is generous: this is about CPU, and a loaded machine may take three times as long."""
    policy = tmp_path / "slow_setup.py"
    policy.write_text(textwrap.dedent('''
        import time


        def burn(seconds):
            end = time.process_time() + seconds
            while time.process_time() < end:
                pass


        def setup():
            burn(3.1)
            return 0.5


        class Policy:
            def __init__(self, setup):
                self.gain = setup

            def reset(self, seed):
                burn(3.1)

            def act(self, obs, info):
                return int(obs[2] + self.gain * obs[3] > 0)
    '''))
    limits = Limits(episode_timeout_s=30, episode_cpu_s=5, memory_mb=2048)
    result = _quick(policy, "CartPole-v1", tmp_path, episodes=2, workers=1, lockstep=1, limits=limits, step_s=0.0)
    assert [e.status for e in result.episodes] == ["ok", "ok"], [e.error for e in result.episodes]
    assert result.setup_runs == 1 and result.episodes[0].setup_s >= 3.1


def test_an_episodes_cpu_limit_is_set_on_the_clock_the_kernel_enforces():
    """The kernel checks RLIMIT_CPU against CPU charged a tick at a time, which runs ahead of getrusage's exact
    time on a shared core and adds up over the episodes of a process: each episode's limit is set from the charged
    clock (ITIMER_PROF's), so a process charged more than it ran still gives its next episode its whole budget."""
    import subprocess
    import sys

    probe = textwrap.dedent("""
        import resource, signal
        from envs import policy_slots
        from envs.policy_slots import charged_cpu_s, limit_cpu

        def ran():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime

        assert abs(charged_cpu_s() - ran()) < 0.05  # armed at the first call, when the clocks agree
        while ran() < 1.3:  # a process that has run a while (away from whole seconds: the limit rounds up)
            pass
        # As if ticks on a shared core had charged it 1.5 s more than it ran (1.38 times, as measured beside a pair).
        remaining = signal.getitimer(signal.ITIMER_PROF)[0]
        charged = policy_slots._prof_origin + policy_slots.PROF_HORIZON_S - remaining  # the kernel's own, before
        signal.setitimer(signal.ITIMER_PROF, remaining - 1.5)
        limit_cpu(2)
        soft = resource.getrlimit(resource.RLIMIT_CPU)[0]
        # At least the budget beyond the charge (ticks are 4 ms; on a loaded machine the ticks may have charged less
        # than it ran, which is why the charge is read, not assumed); at most the budget beyond the cap on the
        # reading (a loaded machine may really have charged more than the 1.5 s made up here).
        assert max(ran(), charged + 1.5) + 2 - 0.05 <= soft <= 3 * ran() + 1 + 3.05, (soft, ran(), charged)
        # A policy that disarms the timer: the clock starts again from getrusage, so its limit can only come sooner.
        signal.setitimer(signal.ITIMER_PROF, 0)
        limit_cpu(2)
        soft = resource.getrlimit(resource.RLIMIT_CPU)[0]
        assert ran() + 2 <= soft <= ran() + 3.05, (soft, ran())
        assert signal.getitimer(signal.ITIMER_PROF)[0] > 1e6  # armed again
        # A policy that shortens the timer to look charged for days gets at most three times its exact time.
        signal.setitimer(signal.ITIMER_PROF, 1)
        assert charged_cpu_s() <= 3 * ran() + 1.05
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_set_up_failures_say_why_and_what_to_return(tmp_path):
    policy = tmp_path / "unpicklable.py"
    policy.write_text(textwrap.dedent('''
        def setup():
            return (n for n in range(3))


        class Policy:
            def __init__(self, setup):
                pass

            def reset(self, seed):
                pass

            def act(self, obs, info):
                return 0
    '''))
    result = _quick(policy, "CartPole-v1", tmp_path, episodes=2, workers=1)
    assert result.setup_runs == 1  # it ran once; its failure is every episode's, not run again
    assert all("setup() failed" in e.error and "must return plain data, numpy arrays" in e.error
               for e in result.episodes)


def test_set_up_draws_are_the_same_in_every_worker_scipy_included(tmp_path):
    policy = tmp_path / "draws.py"
    policy.write_text(textwrap.dedent('''
        import numpy as np
        import scipy.stats


        def setup():
            return [float(np.random.rand()), float(scipy.stats.norm.rvs())]


        class Policy:
            def __init__(self, setup):
                self.draws = setup

            def reset(self, seed):
                pass

            def act(self, obs, info):
                return int(obs[2] + 0.5 * obs[3] + 0.01 * (self.draws[0] + self.draws[1]) > 0)
    '''))
    first = _quick(policy, "CartPole-v1", tmp_path, episodes=4, workers=2, lockstep=1)
    again = _quick(policy, "CartPole-v1", tmp_path, episodes=4, workers=1)
    assert first.status == again.status == "complete"
    assert [e.trace.actions for e in first.episodes] == [e.trace.actions for e in again.episodes]


def test_a_ledger_or_clips_inside_the_policy_folder_are_never_the_policys(tmp_path):
    from common.ledger import Ledger

    folder = tmp_path / "tabular"
    folder.mkdir()
    (folder / "policy.py").write_text("class Policy:\n    def reset(self, seed):\n        pass\n"
                                      "    def act(self, obs, info):\n        return int(obs[2] > 0)\n")
    ledger = Ledger(folder / "ledger.jsonl")
    runs = [evaluate(get_task("CartPole-v1"), EvalRequest(policy_path=folder, task_id="CartPole-v1", episodes=1,
                                                          out_dir=folder / "clips"), ledger) for _ in range(2)]
    assert runs[0].policy_sha256 == runs[1].policy_sha256 and runs[1].policy_files == {}


def test_a_committed_policy_folder_in_a_subfolder_is_recorded_as_committed(tmp_path):
    import subprocess

    repo = tmp_path / "repo"
    folder = repo / "policies" / "mine"
    folder.mkdir(parents=True)
    (folder / "policy.py").write_text("import json\nfrom pathlib import Path\n\n\nclass Policy:\n"
                                      "    def reset(self, seed):\n        pass\n"
                                      "    def act(self, obs, info):\n        return int(obs[2] > 0)\n")
    (folder / "data.json").write_text("{}")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "policy"], check=True)
    from envs.evaluator import _git_provenance

    assert _git_provenance(read_policy(folder))["uncommitted_changes"] is False
    (folder / "data.json").write_text('{"changed": true}')
    assert _git_provenance(read_policy(folder))["uncommitted_changes"] is True
    (folder / "data.json").write_text("{}")
    (folder / "extra.json").write_text("{}")
    assert _git_provenance(read_policy(folder))["uncommitted_changes"] is True


def test_odd_folders_are_one_line_naming_the_problem(tmp_path):
    folder = _folder(tmp_path / "p", gain=1.0)
    odd = os.fsencode(str(folder)) + b"/data\xff.bin"
    with open(odd, "wb") as handle:
        handle.write(b"x")
    with pytest.raises(PolicyError, match="not UTF-8; rename it"):
        read_policy(folder)
    os.unlink(odd)
    deep = folder
    for _ in range(40):
        deep = deep / "d"
    deep.mkdir(parents=True)
    with pytest.raises(PolicyError, match="nests folders more than 32 deep"):
        read_policy(folder)


def test_provenance_of_a_folder_beside_files_whose_names_are_not_utf8(tmp_path):
    """git prints paths as they are: a file beside the policy whose name is not UTF-8 (left out of the policy, as
    every dot-file is) stopped the evaluation with an internal error, recording nothing."""
    import subprocess

    from envs.evaluator import _git_provenance

    repo = tmp_path / "repo"
    folder = _folder(repo / "mine", gain=1.0)
    with open(os.fsencode(str(folder)) + b"/.notes-\xff", "wb") as handle:
        handle.write(b"x")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "policy"], check=True)
    provenance = _git_provenance(read_policy(folder))
    assert provenance["uncommitted_changes"] is False and provenance["committed_file"]


def test_a_subfolder_swapped_for_a_link_while_the_folder_is_read_hands_over_nothing_outside(tmp_path, monkeypatch):
    """A red-team review (2026-12-05) swapped a subfolder for a link to a folder holding a 0600 file of the user's
    while heurist read a big file inside it: the next file was opened by its path, through the link, and reached
    the sandbox. The same swap happens here as that file is opened; what is read is the folder's own."""
    folder = _folder(tmp_path / "p", gain=1.0)
    (folder / "sub").mkdir()
    (folder / "sub" / "aaa.bin").write_bytes(b"first")
    (folder / "sub" / "zz.txt").write_text("innocuous")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "zz.txt").write_text("OPENAI_API_KEY=sk-from-the-users-home")
    real_open, swapped = os.open, []

    def swap() -> None:
        (folder / "sub").rename(tmp_path / f"sub_old{len(swapped)}")
        (folder / "sub").symlink_to(victim, target_is_directory=True)
        swapped.append(True)

    def open_then_swap(path, *args, **kwargs):
        if str(path).endswith("aaa.bin") and not swapped:
            swap()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_then_swap)
    bundle = read_policy(folder)
    assert swapped and bundle.files["sub/zz.txt"] == b"innocuous"
    assert not any(b"sk-from" in data for data in bundle.files.values())

    # Swapped between being looked at and being opened: refused, not followed.
    (folder / "sub").unlink()
    (tmp_path / "sub_old0").rename(folder / "sub")
    swapped.clear()

    def open_folder_then_swap(path, *args, **kwargs):
        if path == "sub" and not swapped:
            swap()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_folder_then_swap)
    with pytest.raises(PolicyError, match="sub changed while heurist read policy folder"):
        read_policy(folder)
    assert swapped


def test_a_hard_link_a_device_a_huge_file_or_a_long_path_is_refused_before_it_is_read(tmp_path):
    from envs.policy_files import MAX_BYTES

    folder = _folder(tmp_path / "p", gain=1.0)
    secret = tmp_path / "key.txt"
    secret.write_text("OPENAI_API_KEY=sk-secret")
    os.link(secret, folder / "table.txt")  # the same file under a second name, inside the folder
    with pytest.raises(PolicyError, match=r"table.txt has 1 other hard link\(s\).*cp, not ln"):
        read_policy(folder)
    (folder / "table.txt").unlink()
    # Looked at, not opened: opening a FIFO for reading waits for a writer (here O_NONBLOCK spared it) and opening
    # some devices does something.
    os.mkfifo(folder / "pipe")
    with pytest.raises(PolicyError, match="pipe is not a regular file"):
        read_policy(folder)
    (folder / "pipe").unlink()
    with open(folder / "huge.bin", "wb") as handle:  # sparse: no disk, and refused by its size before any read
        handle.truncate(MAX_BYTES + 1)
    with pytest.raises(PolicyError, match="more than 1000 files or 256 MiB"):
        read_policy(folder)
    (folder / "huge.bin").unlink()
    deep = folder
    for _ in range(6):
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    (deep / "data.json").write_text("{}")  # fine here, but past PATH_MAX once staged under a temp folder
    with pytest.raises(PolicyError, match="named by a path over 1024 bytes"):
        read_policy(folder)


def test_a_folder_whose_policy_py_is_heuristss_own_file_is_one_line_not_an_internal_error(tmp_path):
    folder = _folder(tmp_path / "p", gain=1.0)
    with pytest.raises(PolicyError, match="has no policy.py of its own to read"):
        read_policy(folder, [folder / "policy.py"])  # `heurist eval FOLDER --ledger FOLDER/policy.py`


def test_a_temp_folder_that_cannot_take_the_copy_is_one_line(tmp_path, monkeypatch):
    import tempfile

    from envs.policy_files import materialise

    bundle = read_policy(_folder(tmp_path / "p", gain=1.0))
    not_a_folder = tmp_path / "tmp-is-a-file"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    with pytest.raises(PolicyError, match="for the policy's files: Not a directory; free space there"):
        materialise(bundle)


def test_a_repository_that_makes_git_wait_or_names_a_work_tree_elsewhere_gives_no_provenance(tmp_path, monkeypatch):
    """A red-team review (2026-12-05): a policy's repository whose config includes a FIFO kept `heurist eval`
    waiting for ever in `git rev-parse`, and one whose core.worktree named another folder stopped it with an
    internal error. Provenance is a note beside the score: either gives none, and the evaluation goes on."""
    import subprocess

    import envs.evaluator
    from envs.evaluator import _git_provenance

    repo = tmp_path / "repo"
    folder = _folder(repo / "mine", gain=1.0)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "policy"], check=True)
    assert _git_provenance(read_policy(folder))["uncommitted_changes"] is False
    none = {"commit": None, "committed_file": None, "uncommitted_changes": None}
    subprocess.run([*git, "config", "core.worktree", str(tmp_path / "elsewhere")], check=True)
    assert _git_provenance(read_policy(folder)) == none
    subprocess.run([*git, "config", "--unset", "core.worktree"], check=True)
    os.mkfifo(repo / ".git" / "waits")
    subprocess.run([*git, "config", "include.path", str(repo / ".git" / "waits")], check=True)
    monkeypatch.setattr(envs.evaluator, "PROVENANCE_GIT_S", 1.0)
    assert _git_provenance(read_policy(folder)) == none


def test_a_workspace_with_a_fifo_or_a_link_in_its_git_folder_is_refused_before_git_reads_it(tmp_path):
    from envs.gitsafe import GitRefused, check_repository
    from store.workspace import Workspace

    workspace = Workspace(tmp_path / "ws")
    workspace.create("class Policy:\n    pass\n", {})
    check_repository(workspace.root)
    head = workspace.root / ".git" / "refs" / "heads" / "main"
    head.unlink()
    os.mkfifo(head)  # git reading the branch would wait for a writer for ever
    with pytest.raises(GitRefused, match=r"holds \.git/refs/heads/main, which is not a plain file"):
        check_repository(workspace.root)
    head.unlink()
    (workspace.root / ".git" / "objects" / "info" / "alternates").write_text("/somewhere/else/objects\n")
    with pytest.raises(GitRefused, match="objects/info/alternates"):
        check_repository(workspace.root)
