"""The graph offline, through the installed ``heurist`` command: reaching the target (kill -9 and resume
are in test_faults.py), plug-in roles, the topology, budgets, and bad input. Real CartPole, git, SQLite checkpoints and ChromaDB."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.ledger import Ledger
from envs.limits import Limits
from envs.sandbox import run_sandboxed
from envs.tasks import get_task
from graph.budget import stop_reason
from policies import POLICY_DIR
from runner.lifecycle import mermaid
from store.config import RunConfig
from store.transcripts import TranscriptRecorder
from store.workspace import Workspace
from tests.offline_runs import heurist, weak_cartpole
from tests.test_cli import HEURIST

SNAPSHOT = Path(__file__).parent / "snapshots" / "graph.mmd"
EXAMPLE_PLUGIN = Path(__file__).parent / "plugins"


def run_once(tmp: Path, env: dict, config: str, policy: str = "weak.py") -> list[dict]:
    """One offline run of ``policy`` (in ``tmp``) on CartPole with ``config`` (TOML) into ``tmp/run``, which must
    end well; its ledger's records."""
    (tmp / "run.toml").write_text(config)
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / policy, "--config", tmp / "run.toml",
                   "--run-dir", tmp / "run", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    return Ledger(tmp / "run" / "ledger.jsonl").read()[0]


def test_offline_run_from_a_weak_policy_reaches_the_target(home):
    tmp, env = home
    (tmp / "run.toml").write_text('[eval]\nepisodes = 10\n[search]\nseed = 3\n')  # a fixed search: same run each time
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                   "--iterations", 4, "--run-dir", tmp / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "offline: no $OPENAI_API_KEY and no --base-url" in done.stderr
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["dev"]["start_mean"] < 20
    assert summary["dev"]["best_mean"] >= get_task("CartPole-v1").target
    assert summary["stop_reason"].startswith("maximum return reached: dev mean 500")
    assert summary["holdout"]["split"] == "holdout" and summary["holdout"]["episodes"] == 50
    control = summary["holdout"]["control"]  # beside it, seeds no model has seen, which it does not differ from
    assert control["episodes"] == 50 and not control["differs"] and control["p_value"] > 0.01
    assert "Control, 50 seeds no model has seen (drawn from the run's secret)" in done.stdout
    assert summary["offline"] and summary["spent"]["env_steps"] > 0 and summary["spent"]["tokens"] == 0
    assert (tmp / "weak.py").read_text() == weak_cartpole()  # never modified in place
    assert "Holdout split, seeds 1000..1049 (50 episodes, evaluated once)" in done.stdout

    workspace = Workspace(tmp / "run" / "workspace")
    accepted = [h["iteration"] for h in summary["history"] if h["accepted"]]
    assert len(workspace.history()) == 1 + len(accepted)
    regression_tests = sorted(p.name for p in workspace.tests.glob("test_iteration_*.py"))
    assert regression_tests == [f"test_iteration_{i:04d}.py" for i in accepted]
    # No scenario test: the weak policy falls within the first 50 steps, where a scenario is the whole episode.
    assert not list(workspace.tests.glob("test_scenarios_*.py"))
    assert (tmp / "run" / "best_policy.py").read_text() == workspace.policy.read_text()
    assert workspace.git("describe", "--tags") == "heurist-final"
    for role in ("video_analyst", "log_parser", "coder", "test_writer", "reviewer"):
        assert TranscriptRecorder(tmp / "run").read(1, role), role
    # The report the run wrote as it finished (while it still held its lock) says so.
    assert '<strong id="run-status">finished</strong>' in (tmp / "run" / "report" / "index.html").read_text()

    listed = json.loads(heurist(env, "runs", "--json").stdout)
    assert [r["status"] for r in listed] == ["finished"] and listed[0]["best_mean"] >= 475
    shown = heurist(env, "show", tmp / "run")
    assert shown.returncode == 0 and "accepted" in shown.stdout and "holdout (once)" in shown.stdout
    again = heurist(env, "resume", tmp / "run")  # a finished run: nothing runs twice
    assert again.returncode == 0
    records, _ = Ledger(tmp / "run" / "ledger.jsonl").read()
    assert sum(r["event"] == "run_finished" for r in records) == 1
    assert sum(r["event"] == "eval_started" and r["split"] == "holdout" for r in records) == 1


def test_an_offline_run_whose_start_completes_no_episode_stops_after_one_search_saying_why(home):
    """A policy for another task (Breakout's on CartPole) ran a whole offline run to its budget, every episode failing,
    holdout included, and exited 0 (a review, 2026-12-06): the run now stops after one iteration of the offline
    search finds no version that runs, with the policy's own error, and spends no holdout on it. A crash that one
    of the policy's numbers causes is still searched away in that iteration, and the run goes on."""
    tmp, env = home
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", POLICY_DIR / "breakout.py", "--iterations", 5,
                   "--run-dir", tmp / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["dev"]["start_mean"] is None and summary["holdout"] is None
    reason = summary["stop_reason"]
    assert reason.startswith("the starting policy completed none of its dev episodes, and the offline coder's search "
                             "over the numbers it declares found no version that does: start from a policy written "
                             "for CartPole-v1, or run with a model"), reason
    assert "(its first error: " in reason and "Error" in reason
    assert "Stopped: the starting policy completed none of its dev episodes" in done.stdout
    assert "Holdout split: not evaluated, since the best policy completed no dev episode." in done.stdout

    divides = weak_cartpole().replace(
        '    velocity_gain: float = tunable(0.0, -1.0, 1.0, "weight on the cart velocity: damps drift")\n',
        '    velocity_gain: float = tunable(0.0, -1.0, 1.0, "weight on the cart velocity: damps drift")\n'
        '    scale: float = tunable(0.0, 0.0, 2.0, "divides the push")\n').replace(
        "push = p.angle_gain", "push = (1.0 / p.scale) * p.angle_gain")
    assert "1.0 / p.scale" in divides and "scale: float" in divides
    (tmp / "divides.py").write_text(divides)
    (tmp / "run.toml").write_text('[eval]\nepisodes = 10\n[search]\nseed = 3\n')
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "divides.py", "--config", tmp / "run.toml",
                   "--iterations", 2, "--run-dir", tmp / "divides")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp / "divides" / "summary.json").read_text())
    assert summary["dev"]["start_mean"] is None and summary["accepted"] >= 1, summary["history"]
    assert not summary["stop_reason"].startswith("the starting policy completed none")


def test_plug_in_role_from_an_entry_point_runs_in_its_stage(home):
    tmp, env = home
    env["PYTHONPATH"] = str(EXAMPLE_PLUGIN)
    listed = {r["name"]: r for r in json.loads(heurist(env, "roles", "--json").stdout)}
    assert listed["failure_rate"]["stage"] == "analyse"
    assert "entry point plugin_roles:FailureRate" in listed["failure_rate"]["source"]
    assert listed["coder"]["source"] == "heurist"

    (tmp / "run.toml").write_text('report = false\n[stages]\nanalyse = ["log_parser", "failure_rate"]\n'
                                  '[budget]\niterations = 1\n[eval]\nepisodes = 5\nvideo = false\nholdout = false\n')
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                   "--run-dir", tmp / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    decided = TranscriptRecorder(tmp / "run").read(1, "failure_rate")
    assert decided and "pole_fell" in decided[0].summary
    assert not TranscriptRecorder(tmp / "run").read(1, "video_analyst")

    (tmp / "bad.toml").write_text('[stages]\nreview = ["failure_rate"]\n')
    wrong = heurist(env, "run", "--env", "CartPole-v1", "--config", tmp / "bad.toml", "--run-dir", tmp / "run2")
    assert wrong.returncode == 2
    assert "belongs to the analyse stage and cannot be placed in review" in wrong.stderr


def test_the_log_parser_and_the_test_writer_are_replaced_by_plug_ins(home):
    """Nodes read facts, never a built-in role: with neither the log parser nor the test writer, the
    plug-ins' failures reach memory and the plug-in's test is what verify runs."""
    tmp, env = home
    env["PYTHONPATH"] = str(EXAMPLE_PLUGIN)
    records = run_once(tmp, env, 'report = false\n[stages]\nanalyse = ["first_failures"]\n'
                                 'test = "plugin_roles:CompletesTestWriter"\n[budget]\niterations = 1\n'
                                 '[eval]\nepisodes = 5\nvideo = false\nholdout = false\n')
    recorder = TranscriptRecorder(tmp / "run")
    assert recorder.read(1, "completes_test_writer") and not recorder.read(1, "test_writer")
    assert not recorder.read(1, "log_parser")
    [iteration] = [r for r in records if r["event"] == "iteration"]
    written = iteration["tests_written"]
    assert "does_better_than_before" in written["tests/test_iteration_0001.py"]
    assert all(name == "tests/test_iteration_0001.py" or name.startswith("tests/test_scenarios_0001")
               for name in written)  # and heurist's own

    from memory import MemoryConfig, MemoryStore

    store = MemoryStore(MemoryConfig(path=Path(env["HEURIST_HOME"]) / "memory"))
    try:
        found = store.recall("the pole fell", k=5, task="CartPole-v1")
        assert found.failures and all(h.failure.kind == "pole_fell" for h in found.failures)
    finally:
        store.close()


def test_a_stage_that_reads_a_fact_no_role_produces_is_one_line_at_start(home):
    tmp, env = home
    (tmp / "run.toml").write_text('[stages]\nanalyse = ["video_analyst"]\n')
    done = heurist(env, "run", "--env", "CartPole-v1", "--config", tmp / "run.toml", "--run-dir", tmp / "run")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: test_writer (the test stage) reads the fact 'seeds_by_kind', which no role in stages.analyse "
        "produces; add log_parser to stages.analyse"]
    assert not (tmp / "run").exists()


def test_stage_checks_name_what_is_missing_and_refuse_misfits(monkeypatch):
    from roles.registry import RoleError, check_role, check_stages, resolve
    from roles.stages import AnalyseInput, AnalyseOutput

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    roles = {"analyse": [resolve("plugin_roles:FailureRate", "analyse")],
             "code": [resolve("coder", "code")], "test": [resolve("plugin_roles:CompletesTestWriter", "test")],
             "review": [resolve("reviewer", "review")], "simplify": [resolve("simplifier", "simplify")],
             "lesson": [resolve("lesson_writer", "lesson")]}
    with pytest.raises(RoleError, match="completes_test_writer .the test stage. reads the fact 'seeds_by_kind'"):
        check_stages(roles)
    roles["test"][0].reads = frozenset()  # an instance attribute: this test's writer reads nothing
    with pytest.raises(RoleError, match="the memory of failures .* reads the fact 'failures'.*add "
                                        "(first_failures or log_parser|log_parser)"):
        check_stages(roles)
    roles["analyse"].append(resolve("plugin_roles:FirstFailures", "analyse"))
    check_stages(roles)
    roles["review"] = []
    with pytest.raises(RoleError, match="stages.review is empty"):
        check_stages(roles)

    failure_rate = type(roles["analyse"][0])
    wrong_output = type("WrongOutput", (failure_rate,), {"name": "wrong_output", "Output": AnalyseInput})
    with pytest.raises(RoleError, match="Output must be AnalyseOutput or a subclass"):
        check_role(wrong_output, "wrong_output")
    greedy = type("Greedy", (failure_rate,), {"name": "greedy", "reads": frozenset({"failures"}),
                                              "Output": AnalyseOutput})
    with pytest.raises(RoleError, match="analyse roles run side by side"):
        check_role(greedy, "greedy")
    with pytest.raises(RoleError, match="'sightings', which no role in stages.analyse produces; add video_analyst"):
        check_stages({**roles, "review": [resolve("reviewer", "review")],
                      "code": [type("Looks", (type(roles["code"][0]),), {"reads": frozenset({"sightings"})})()]})


def test_role_given_as_module_path(monkeypatch):
    from roles.registry import RoleError, resolve

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    assert resolve("plugin_roles:FailureRate", "analyse").name == "failure_rate"
    with pytest.raises(RoleError, match="unknown role 'nope'"):
        resolve("nope", "analyse")
    with pytest.raises(RoleError, match="has no Missing"):
        resolve("plugin_roles:Missing", "analyse")


def test_roles_with_a_config_loads_and_checks_its_module_paths_and_says_where_each_goes(tmp_path, monkeypatch, capsys):
    """A module:Class role could be checked only by `heurist graph --config` (a review, 2026-12-06): `heurist roles
    --config` now loads the config's stages as a run would, lists such roles and says where each is placed."""
    from cli.main import main

    (tmp_path / "roles_here.py").write_text('from roles.log_parser import LogParser\n\n\nclass Counts(LogParser):\n'
                                            '    """Counts."""\n    name = "counts_here"\n')
    (tmp_path / "run.toml").write_text('[stages]\nanalyse = ["log_parser", "roles_here:Counts"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["heurist", "roles", "--config", str(tmp_path / "run.toml"), "--json"])
    main()
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["counts_here"]["source"] == "module roles_here:Counts"
    assert listed["counts_here"]["placed"] == "analyse" and listed["video_analyst"]["placed"] is None
    assert listed["coder"]["placed"] == "code"


def test_graph_topology_matches_the_snapshot():
    drawn = mermaid(RunConfig(task="CartPole-v1"))
    assert drawn == SNAPSHOT.read_text(), "the graph changed: review it, then `heurist graph > tests/snapshots/graph.mmd`"


def test_each_budget_is_a_stop():
    config = RunConfig.model_validate({"task": "CartPole-v1", "budget": {
        "iterations": 10, "hours": 1, "env_steps": 1000, "tokens": 500, "usd": 1.0, "patience": 3}})
    spec = get_task("CartPole-v1")
    base = {"iteration": 2, "since_improvement": 0, "incumbent": {"mean": 100.0},
            "spent": {"elapsed_s": 10, "env_steps": 10, "tokens": 10, "usd": 0.1}}
    assert stop_reason(base, config, spec) is None
    cases = [({"iteration": 10}, "iteration budget"), ({"since_improvement": 3}, "patience"),
             ({"incumbent": {"mean": 500.0}}, "maximum return reached"),
             ({"spent": {**base["spent"], "elapsed_s": 3600}}, "wall-time"),
             ({"spent": {**base["spent"], "env_steps": 1000}}, "env-step"),
             ({"spent": {**base["spent"], "tokens": 500}}, "token"), ({"spent": {**base["spent"], "usd": 1.0}}, "USD")]
    for change, expected in cases:
        assert expected in (stop_reason({**base, **change}, config, spec) or ""), change
    def stopping(when: str, mean: float) -> str | None:
        budget = config.budget.model_copy(update={"stop_when": when})
        return stop_reason({**base, "incumbent": {"mean": mean}}, config.model_copy(update={"budget": budget}), spec)

    assert stopping("max", 480.0) is None and "target reached" in stopping("target", 480.0)
    assert stopping("never", 500.0) is None
    # The mean is over completed episodes: while one fails, making it complete is a gain, and the run goes on
    # (a policy crashing on 16 of 20 seeds and balancing on 4 "reached the maximum return" before).
    crashing = {"mean": 500.0, "per_seed": {"0": 500.0, "1": None}}
    assert stop_reason({**base, "incumbent": crashing}, config, spec) is None
    assert "maximum return" in stop_reason({**base, "incumbent": {**crashing, "per_seed": {"0": 500.0}}}, config, spec)
    with pytest.raises(ValueError, match="finite number"):  # JSON has no inf: run.json would hold null
        RunConfig.model_validate({"task": "CartPole-v1", "review": {"min_improvement": float("inf")}})
    with pytest.raises(ValueError, match="which W&B refuses in a project's name"):  # not at every iteration
        RunConfig.model_validate({"task": "CartPole-v1", "wandb": {"enabled": True, "project": "rt proj/x"}})


def test_workspace_tests_run_sandboxed(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    seen = run_sandboxed([sys.executable, "-c", "import os; print(os.environ.get('OPENAI_API_KEY'))"], tmp_path,
                         Limits(), timeout_s=30)
    assert seen.returncode == 0 and seen.output.strip() == "None"
    started = time.monotonic()
    hung = run_sandboxed([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); "
                                                "time.sleep(60)"], tmp_path, Limits(), timeout_s=2)
    assert hung.timed_out and "process group was killed" in hung.reason
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("args, message", [
    (["run", "--env", "NoSuchTask-v0"], "unknown task"),
    (["run"], "no task: give --env TASK"),
    (["run", "--env", "CartPole-v1", "--policy", "missing.py"], "does not exist"),
    (["resume", "."], "is not a heurist run directory"),
    (["transcripts", "."], "is not a heurist run directory"),
])
def test_bad_input_is_one_line_and_exit_2(home, args, message):
    tmp, env = home
    done = subprocess.run([HEURIST, *args], capture_output=True, text=True, env=env, cwd=tmp, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_unknown_config_key_is_named(home):
    tmp, env = home
    (tmp / "bad.toml").write_text('[budget]\niteratons = 3\n')
    done = heurist(env, "run", "--env", "CartPole-v1", "--config", tmp / "bad.toml")
    assert done.returncode == 2 and "budget.iteratons: unknown key" in done.stderr


def test_a_damaged_checkpoint_is_one_line_that_says_what_still_works(home):
    tmp, env = home
    (tmp / "run.toml").write_text("[eval]\nepisodes = 4\nholdout = false\nvideo = false\n[search]\npopulation = 2\n"
                                  "generations = 1\nseed = 1\n")
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                   "--iterations", 1, "--run-dir", tmp / "run", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    (tmp / "run" / "checkpoints.sqlite").write_bytes(b"this is not a database" * 100)
    resumed = heurist(env, "resume", tmp / "run")
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "checkpoints.sqlite is damaged" in resumed.stderr and "heurist replay" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1
    assert heurist(env, "report", tmp / "run").returncode == 0  # the records it was made from are intact
    # No checkpoints at all (deleted, or the directory copied without them): it had started over, and rewritten the
    # summary of the run that had gone on as a run of none of its edits.
    summary = (tmp / "run" / "summary.json").read_text()
    (tmp / "run" / "checkpoints.sqlite").unlink()
    resumed = heurist(env, "resume", tmp / "run")
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "holds no checkpoint, though the ledger records iterations" in resumed.stderr, resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1 and (tmp / "run" / "summary.json").read_text() == summary
    # A config this heurist cannot read (a key a newer heurist wrote): one line, as a replay says it, not pydantic's.
    record = json.loads((tmp / "run" / "run.json").read_text())
    record["config"]["eval"]["a_newer_key"] = 1
    (tmp / "run" / "run.json").write_text(json.dumps(record))
    for command in ("resume", "replay"):
        done = heurist(env, command, tmp / "run")
        assert done.returncode == 2 and "Traceback" not in done.stderr and "internal error" not in done.stderr
        assert "holds a config this heurist cannot read" in done.stderr and "a_newer_key" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_made_before_tests_ran_on_throwaway_copies_is_not_resumed(home, monkeypatch):
    """Its accepted tests were written for a kit that ran the policy inside the test; one line says what to do."""
    from store.config import build_config
    from store.rundir import create_run

    tmp, env = home
    monkeypatch.setenv("HEURIST_HOME", env["HEURIST_HOME"])
    run_dir = create_run(build_config({"task": "CartPole-v1", "policy": str(tmp / "weak.py")}, "test"), tmp / "old")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["workspace_format"] == 2
    del record["workspace_format"]  # as heurist wrote run.json before the format was recorded
    (run_dir / "run.json").write_text(json.dumps(record))
    resumed = heurist(env, "resume", run_dir)
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "Start a new run from its best policy: heurist run --env CartPole-v1 --policy" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1


def test_a_run_started_before_facts_goes_on_and_says_what_is_unmet(home, monkeypatch):
    """A run directory whose [stages] leave a fact unmet (made before roles declared facts) is opened, with a
    warning; only new runs are refused."""
    from runner.lifecycle import open_services
    from store.rundir import create_run

    tmp, env = home
    monkeypatch.setenv("HEURIST_HOME", env["HEURIST_HOME"])  # the runs index and the memory go there
    config = RunConfig.model_validate({"task": "CartPole-v1", "policy": str(tmp / "weak.py"), "offline": True,
                                       "stages": {"analyse": ["video_analyst"]}})
    run_dir = create_run(config, tmp / "run")
    events = []
    services, _nodes, _record = open_services(run_dir, lambda kind, fields: events.append((kind, fields)))
    try:
        warnings = [f["message"] for kind, f in events if kind == "warning"]
        assert any("reads the fact 'seeds_by_kind'" in w for w in warnings)
        assert any("the memory of failures" in w and "'failures'" in w for w in warnings)
        assert [role.name for role in services.roles["analyse"]] == ["video_analyst"]
    finally:
        services.memory.close()


def test_a_run_made_before_screen_keys_gets_a_secret_one_when_it_runs_again(home, monkeypatch):
    """Its unseen seeds had come from its run id, which a policy reads in its own path (RUN_DIR/candidates/...)."""
    from runner.lifecycle import open_services
    from store.rundir import create_run, read_record

    tmp, env = home
    monkeypatch.setenv("HEURIST_HOME", env["HEURIST_HOME"])
    run_dir = create_run(RunConfig.model_validate({"task": "CartPole-v1", "policy": str(tmp / "weak.py"),
                                                   "offline": True}), tmp / "run")
    made = read_record(run_dir)
    assert len(made.screen_key) == 32
    old = json.loads((run_dir / "run.json").read_text())
    del old["screen_key"]
    (run_dir / "run.json").write_text(json.dumps(old))
    services, _nodes, record = open_services(run_dir)
    services.memory.close()
    key = services.screen_key
    assert len(key) == 32 and key not in (made.screen_key, made.run_id) and record.screen_key == key
    assert read_record(run_dir) == made.model_copy(update={"screen_key": key})  # kept, and nothing else changed
    services, _nodes, _record = open_services(run_dir)
    services.memory.close()
    assert services.screen_key == key


def test_a_plug_in_that_cannot_start_is_one_line_naming_it(monkeypatch):
    """A role module that exits as it loads, a role whose __init__ raises, a name that is no file name, and a name
    that is a built-in role's: each refused before the run starts, in one line that names it."""
    from roles.registry import RoleError, check_role, resolve

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    with pytest.raises(RoleError, match=r"exits_on_import' failed to load: it called sys.exit\(0\)"):
        resolve("exits_on_import:Reviewer", "review")
    with pytest.raises(RoleError, match=r"role starts_badly .* failed to start: RuntimeError: no configuration"):
        resolve("hostile_roles:StartsBadly", "review")
    from tests.plugins import hostile_roles  # noqa: F401 - imported as the run imports it, by module path

    with pytest.raises(RoleError, match="is named '../../escaped'; a role's name is lower-case letters"):
        check_role(hostile_roles.Escapes, "hostile_roles:Escapes")
    with pytest.raises(RoleError, match="names its role 'log_parser', heurist's own log_parser's name"):
        resolve("hostile_roles:FakeLogParser", "analyse")


def test_what_a_role_returns_is_checked_before_anything_acts_on_it(monkeypatch):
    """A Verdict made with model_construct (no checks) whose accept is "no", a dict for a Verdict, a 5 MB report:
    each is the role's failure, RoleOutputError, never an answer a node acts on."""
    from roles.base import RoleOutputError, answer
    from roles.registry import resolve

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    with pytest.raises(RoleOutputError, match=r"says_no_as_text returned a Verdict whose accept is invalid"):
        answer(resolve("hostile_roles:SaysNoAsText", "review"), None, None)
    with pytest.raises(RoleOutputError, match="returns_a_dict returned dict, not Verdict"):
        answer(resolve("hostile_roles:ReturnsADict", "review"), None, None)
    with pytest.raises(RoleOutputError, match="huge returned 5,242,.* characters of JSON, more than 4,194,304"):
        answer(resolve("hostile_roles:Huge", "analyse"), None, None)


def test_a_reviewer_whose_answer_is_no_verdict_refuses_the_edit_and_the_run_goes_on(home):
    """Before, a plug-in reviewer's accept="no" (truthy) committed the edit it meant to refuse, and a reviewer that
    raised ended the run as heurist's internal error. Now each is that reviewer's failure: recorded in its
    transcript, and a refusal."""
    tmp, env = home
    env["PYTHONPATH"] = str(EXAMPLE_PLUGIN)
    records = run_once(tmp, env, 'report = false\n[stages]\nreview = ["reviewer", "hostile_roles:SaysNoAsText", '
                                 '"hostile_roles:Raises"]\n[budget]\niterations = 1\n'
                                 '[eval]\nepisodes = 5\nvideo = false\nholdout = false\n')
    [iteration] = [r for r in records if r["event"] == "iteration"]
    assert iteration["accepted"] is False
    reasons = " ".join(iteration["verdict"]["reasons"])
    assert iteration["verdict"]["by_role"]["says_no_as_text"]["accept"] is False
    assert "says_no_as_text failed: RoleOutputError" in reasons and "raises failed: ValueError: my reviewer" in reasons
    recorder = TranscriptRecorder(tmp / "run")
    assert any(getattr(line, "error", "").startswith("RoleOutputError") for line in recorder.read(1, "says_no_as_text"))


def test_only_a_plug_ins_own_failure_costs_its_part_and_heuristss_own_stop_the_run(monkeypatch):
    """A full disk met while a role scores (the coder's candidates are written to disk) is heurist's failure: it
    stops the run with the way to resume, as before, and is never taken for the role's; a built-in role's failure
    is heurist's too."""
    import errno

    from common.errors import LedgerError
    from graph.nodes import role_failed
    from roles.base import RoleOutputError
    from roles.registry import resolve

    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN))
    plug = resolve("hostile_roles:Raises", "review")
    assert role_failed(plug, ValueError("a plug-in's bug")) and role_failed(plug, RoleOutputError("no Verdict"))
    assert role_failed(plug, FileNotFoundError(errno.ENOENT, "its own file"))
    assert not role_failed(plug, OSError(errno.ENOSPC, "No space left on device"))
    assert not role_failed(plug, OSError(errno.EROFS, "Read-only file system"))
    assert not role_failed(plug, LedgerError("cannot append to the ledger")) and not role_failed(plug, MemoryError())
    assert not role_failed(resolve("coder", "code"), ValueError("heurist's own bug"))


CRASHES_BESIDE_OTHERS = '''
import builtins
from dataclasses import dataclass


def tunable(default, low, high, doc):
    return default


@dataclass
class Tunables:
    care: float = tunable(0.1, 0.0, 1.0, "how careful (read only where it crashes)")


STARTED = builtins.__dict__.setdefault("heurist_test_started", [])  # process-wide: the episodes beside this one


class Policy:
    def reset(self, seed):
        self.p, self.seed = Tunables(), seed
        STARTED.append(seed)

    def act(self, obs, info):
        if self.seed == 7 and len(STARTED) > 5 and self.p.care == 0.1:
            raise RuntimeError("crashes only beside many others")
        return int(obs[2] + 0.5 * obs[3] > 0)
'''


def test_a_failure_the_edit_removes_where_it_was_measured_is_credited_and_means_say_what_failed(home):
    """The incumbent crashes on seed 7 only beside other episodes (process-wide state), in every dev evaluation;
    any edit of its tunable removes the crash. That is a fix where it was measured, and the gate credits it (a recheck
    of seed 7 alone, tried and withdrawn the same day, called it chance and rejected the fix for ever). The run
    goes on while seed 7 fails, though the others are at the maximum, and its summary says how many failed."""
    tmp, env = home
    (tmp / "flaky.py").write_text(CRASHES_BESIDE_OTHERS)
    records = run_once(tmp, env, 'report = false\n[budget]\niterations = 2\n[eval]\nworkers = 1\nvideo = false\n'
                                 'holdout = false\n', policy="flaky.py")
    [iteration] = [r for r in records if r["event"] == "iteration"]
    assert iteration["accepted"] is True and "now complete on seeds [7]" in " ".join(iteration["verdict"]["reasons"])
    summary = json.loads((tmp / "run" / "summary.json").read_text())["dev"]
    assert summary["start_failed"] == 1 and summary["best_failed"] == 0
    assert "(over 19 of 20 episodes: 1 failed) at the start" in (tmp / "run" / "summary.md").read_text()
    assert "over 19 of 20 episodes (1 failed)" in heurist(env, "show", tmp / "run").stdout
