"""Campaigns: a strict campaign file, shares of one budget, and runs driven on a real Ray, embedded or a cluster
of processes (`ray start`) that loses a node mid-campaign."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from campaign.budget import share
from campaign.plan import CampaignBudget, CampaignError, CampaignSpec, plan_runs, run_key
from common import interrupts
from common.ledger import Ledger
from policies import POLICY_DIR
from tests.offline_runs import heurist, lost_or_repeated
from tests.test_cli import HEURIST

# Each run: one offline iteration with small evaluations, no report; the campaign's runs share 2 CPUs.
RUN = textwrap.dedent("""
    [run]
    report = false
    [run.budget]
    iterations = 1
    stop_when = "never"
    [run.eval]
    episodes = 4
    video = false
    holdout = false
    [run.search]
    population = 4
    generations = 1
    seed = 3
""")


def _campaign_file(tmp: Path, head: str) -> Path:
    path = tmp / "campaign.toml"
    path.write_text(textwrap.dedent(head) + RUN)
    return path


@pytest.mark.parametrize("head,words", [
    ('name = "c"\ntasks = ["CartPole-v1"]\ncolour = "red"\n', "colour: unknown key"),
    ('name = "c"\ntasks = ["NoSuchTask-v0"]\n', "NoSuchTask-v0"),
    ('name = "c"\ntasks = ["CartPole-v1"]\nsuite = "classic"\n', "either tasks"),
    ('name = "c"\ntasks = ["CartPole-v1"]\nprotocol = "deterministic"\n', "has no protocol 'deterministic'"),
    ('name = "c"\ntasks = ["CartPole-v1"]\n[policies]\n"Acrobot-v1" = "p.py"\n', "not among the campaign's runs"),
    ('name = "c"\ntasks = ["CartPole-v1"]\n[budget]\nusd = -1\n', "budget.usd"),
    ('name = "c"\ntasks = ["CartPole-v1"]\n[resources]\ncpus_per_run = 0.00001\n', "resources.cpus_per_run"),
    ('name = "c"\ntasks = ["CartPole-v1"]\n[resources]\ncpus_per_run = inf\n', "resources.cpus_per_run"),
])
def test_a_bad_campaign_file_is_one_line_before_anything_starts(home, head, words):
    tmp, env = home
    done = heurist(env, "campaign", "start", _campaign_file(tmp, head), "--dir", tmp / "c")
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp / "c").exists()


def test_a_run_table_may_not_set_what_the_campaign_sets(home):
    tmp, env = home
    path = tmp / "campaign.toml"
    path.write_text('name = "c"\ntasks = ["CartPole-v1"]\n[run]\ntask = "Acrobot-v1"\n')
    done = heurist(env, "campaign", "start", path)
    assert done.returncode == 2 and "[run] may not set task" in done.stderr


def test_suites_modes_and_repeats_plan_every_run():
    classic = plan_runs(CampaignSpec(name="c", suite="classic", repeats=2), "test")
    assert len(classic) == 2 * 7 and classic[0].key == "acrobot-v1-r0" and classic[-1].key == "pendulum-v1-r1"
    atari = plan_runs(CampaignSpec(name="a", tasks=["ALE/Breakout-v5", "CartPole-v1"], modes=["pixels", "ram"]), "test")
    assert [r.task for r in atari] == ["ALE/Breakout-v5", "ALE/Breakout-ram-v5", "CartPole-v1"]
    assert len({r.key for r in atari}) == 3
    # A family with one mode is planned once whatever the modes; an id that names its mode is kept as it is.
    kept = plan_runs(CampaignSpec(name="k", tasks=["CartPole-v1", "ALE/Breakout-ram-v5"], modes=["ram"]), "test")
    assert [r.task for r in kept] == ["CartPole-v1", "ALE/Breakout-ram-v5"]
    # A task of one's own, which planning looks up several times (it was "registered twice" at the second).
    own = plan_runs(CampaignSpec(name="o", tasks=["tests.stall_then_fall:TASK"], repeats=2), "test")
    assert [r.key for r in own] == ["tests-stall-then-fall-task-r0", "tests-stall-then-fall-task-r1"]


def test_shares_never_add_up_past_the_campaign_budget():
    budget = CampaignBudget(env_steps=1000, usd=3.0)
    given, ended = [], []
    for start in range(4):  # each run starts while the one before is in flight, then ends under its share
        part = share(budget, ended, given[-1:], 4 - start)
        assert part is not None
        given.append(part)
        ended.append({"env_steps": part["env_steps"] // 2, "usd": part["usd"] / 2})
    assert sum(g["env_steps"] for g in given) <= 1000 + sum(g["env_steps"] for g in given[:-1]) // 2
    assert given[0] == {"env_steps": 250, "tokens": None, "usd": 0.75}
    assert given[-1]["env_steps"] > 250  # what earlier runs left is handed on
    assert share(CampaignBudget(env_steps=10), [{"env_steps": 10}], [], 1) is None
    huge = 99999999999999999999999999  # past 2**53: a float share once came out above the budget
    assert share(CampaignBudget(env_steps=huge), [], [], 1)["env_steps"] == huge


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Read a TensorBoard event file back as TensorBoard does: TFRecords (length, its CRC, data, its CRC) of
    protobuf Events; tag -> [(step, value)]."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    files = list(folder.glob("*tfevents*"))
    assert len(files) == 1, files
    data, out, at = files[0].read_bytes(), {}, 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def _events(directory: Path) -> list[dict]:
    return Ledger(directory / "ledger.jsonl").read()[0]


def _wait(predicate, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _run_pid(run_dir: Path) -> int | None:
    """The process running `heurist resume RUN_DIR` (a campaign's run), if any: the one whose parent is not such a
    process too, and which leads its process group. A child the run forks has the run's command line until it
    runs another program, and may lead a group of its own (``start_new_session``); stopping it instead of the run
    would leave the run to take the stop's Ctrl-C while this test waits on the wrong process."""
    matches = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
            stat = (cmdline.parent / "stat").read_text()
        except OSError:
            continue
        if "resume" in args and str(run_dir) in args:
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
            matches[int(cmdline.parent.name)] = (int(fields[1]), int(fields[2]))
    runs = [pid for pid, (parent, group) in matches.items() if parent not in matches and group == pid]
    return runs[0] if len(runs) == 1 else None


def _freeze(pids, predicate, proc: subprocess.Popen, timeout: float) -> list[int]:
    """SIGSTOP the process groups of ``pids()`` at a moment ``predicate()`` holds (checked while they are stopped,
    so it still holds when this returns); the pids."""
    deadline = time.monotonic() + timeout
    while True:
        found = pids()
        if all(found):
            for pid in found:
                os.killpg(pid, signal.SIGSTOP)
            if predicate():
                return found
            for pid in found:
                os.killpg(pid, signal.SIGCONT)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _interrupt_pending(pid: int, run_dir: Path) -> bool:
    """Whether a SIGINT waits to be delivered to the (stopped) process ``pid``, the run in ``run_dir``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # it will never take the Ctrl-C: say what the run and its campaign task saw
        log = run_dir / "campaign-task.log"
        pytest.fail(f"the stopped run {run_dir.name} (pid {pid}) ended before the stop's Ctrl-C reached it; its "
                    f"task's log:\n{log.read_text()[-2000:] if log.exists() else '(none)'}\nits ledger's end:\n"
                    f"{(run_dir / 'ledger.jsonl').read_text()[-1500:]}")
    masks = {line.split(":")[0]: int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("ShdPnd:", "SigIgn:"))}
    sigint = 1 << (signal.SIGINT - 1)
    assert not masks["SigIgn"] & sigint, f"the run {run_dir.name} ignores Ctrl-C, so a stop cannot reach it"
    return bool(masks["ShdPnd"] & sigint)


# Ray started twice, two runs of three iterations, W&B and TensorBoard: 48 CPU-seconds, the suite's most. Slow
# (`make test-slow`, which .ci/run runs after the suite), as the cluster that loses a node is.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_campaign_on_the_embedded_ray_stops_resumes_and_ends_every_run(home):
    tmp, env = home
    path = _campaign_file(tmp, f'''
        name = "two"
        tasks = ["CartPole-v1", "MountainCar-v0"]
        max_attempts = 1
        [policies]
        "CartPole-v1" = "{tmp / "weak.py"}"
        [budget]
        env_steps = 400000
        ''').read_text().replace("iterations = 1", "iterations = 3") + "[run.wandb]\nenabled = true\n"
    (tmp / "campaign.toml").write_text(path)
    env = {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_DATA_DIR": str(tmp / "wandb-data")}
    path = tmp / "campaign.toml"
    directory = tmp / "camp"
    proc = subprocess.Popen([HEURIST, "campaign", "start", str(path), "--dir", str(directory)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Stop once both runs are in flight and have evaluated their policy, and neither has ended.
        def both_mid_run() -> bool:
            ledgers = [directory / "runs" / key / "ledger.jsonl" for key in ("cartpole-v1-r0", "mountaincar-v0-r0")]
            return all(p.exists() and '"eval_finished"' in p.read_text() and '"run_finished"' not in p.read_text()
                       for p in ledgers)

        # Frozen (SIGSTOP) while mid-run, and thawed only once the stop's Ctrl-C waits on each, so the stop
        # reaches both runs mid-run however fast or slow this machine is.
        run_dirs = [directory / "runs" / key for key in ("cartpole-v1-r0", "mountaincar-v0-r0")]
        frozen = _freeze(lambda: [_run_pid(run_dir) for run_dir in run_dirs], both_mid_run, proc, timeout=240)
        stopped = heurist(env, "campaign", "stop", directory)
        assert stopped.returncode == 0, stopped.stderr
        _wait(lambda: all(_interrupt_pending(pid, run_dir) for pid, run_dir in zip(frozen, run_dirs)), proc,
              timeout=120)
        for pid in frozen:
            os.killpg(pid, signal.SIGCONT)
        assert proc.wait(timeout=180) == 0, proc.stderr.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    events = _events(directory)
    assert events[-1]["event"] == "campaign_ended" and events[-1]["status"] == "stopped"
    stopped = [e["key"] for e in events if e["event"] == "campaign_run_ended" and e["status"] == "stopped"]
    assert stopped, events  # cut mid-run; with max_attempts = 1 a stop must not use a run's one start up
    for key in stopped:  # each took the stop's Ctrl-C itself (not the kill that follows a grace period)
        log = (directory / "runs" / key / "campaign-task.log").read_text()
        assert "interrupted; nothing recorded is lost" in log, log[-2000:]
    again = heurist(env, "campaign", "resume", directory, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]

    events = _events(directory)
    ends = [e for e in events if e["event"] == "campaign_run_ended"]
    final = {e["key"]: e for e in ends if e["status"] not in ("lost", "stopped")}
    assert sorted(final) == ["cartpole-v1-r0", "mountaincar-v0-r0"]
    assert all(e["status"] == "finished" and e["spent"]["env_steps"] > 0 for e in final.values())
    assert events[-1] == events[-1] | {"event": "campaign_ended", "status": "finished"}
    # The campaign served its runs' memory (a Chroma server on 127.0.0.1), from a folder that is a heurist store.
    assert json.loads((directory / "runs" / "cartpole-v1-r0" / "run.json").read_text())["config"]["memory"][
        "url"].startswith("http://127.0.0.1:")
    assert not (tmp / "home" / "memory").exists()
    for key in final:  # each run is whole: one of each iteration, one end, nothing lost or doubled
        assert lost_or_repeated(directory / "runs" / key, directory / "memory", 3) == []
        config = json.loads((directory / "runs" / key / "run.json").read_text())["config"]
        assert config["budget"]["env_steps"] <= 200_000  # its share of the campaign's 400,000
    assert f"campaign finished: {directory} (2 runs: 2 finished)" in again.stdout, again.stdout
    status = heurist(env, "campaign", "status", directory)
    assert status.returncode == 0 and status.stdout.count("finished") >= 2 and "2 of 2 runs ended" in status.stdout
    lines = (directory / "ledger.jsonl").read_text()
    ended = heurist(env, "campaign", "resume", directory)  # said, with no Ray started and nothing written
    assert ended.returncode == 0 and "nothing to resume" in ended.stdout and "(2 runs: 2 finished)" in ended.stdout
    assert (directory / "ledger.jsonl").read_text() == lines
    # TensorBoard: each run's scalars, CleanRL's names, one point per iteration; the campaign's, one per ended run.
    for key in final:
        returns = _scalars(directory / "runs" / key / "tensorboard")["charts/episodic_return"]
        assert len(returns) == 3 and returns == sorted(returns, key=lambda p: p[0]), returns
    assert [v for _, v in _scalars(directory / "tensorboard")["campaign/runs_ended"]][-1] == 2
    # W&B, asked for in [run.wandb]: each run's iterations once each across its stop and resume; the campaign's
    # ended runs beside them, in a group named after the campaign.
    from tests.test_wandb import _history

    for key in final:
        assert [r["_step"] for r in _history(directory / "runs" / key)] == [1, 2, 3], key
        assert json.loads((directory / "runs" / key / "run.json").read_text())["config"]["wandb"]["group"] == "two"
    assert [r["campaign/runs_ended"] for r in _history(directory)][-1] == 2
    report = heurist(env, "campaign", "report", directory)
    assert report.returncode == 0, report.stderr
    page = (directory / "report" / "index.html").read_text()
    assert 'id="no-aggregates"' in page and "cartpole-v1-r0" in page and "mountaincar-v0-r0" in page


def test_a_cluster_address_nothing_answers_on_is_one_line(home):
    tmp, env = home
    path = _campaign_file(tmp, 'name = "one"\ntasks = ["CartPole-v1"]\n')
    done = heurist(env, "campaign", "start", path, "--dir", tmp / "camp", "--address", "127.0.0.1:1", timeout=120)
    assert done.returncode == 2 and "cannot reach a Ray cluster at 127.0.0.1:1" in done.stderr, done.stderr[-2000:]
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp / "camp").exists()


def test_a_start_refused_before_any_run_is_replaced_by_the_corrected_one(home):
    """A review on a real cluster (2026-12-06): a start refused for want of a node with the CPUs a run asks left a
    folder that refused the same command with the file corrected ("already exists"), and a resume replayed the
    refused file. The folder stays (the log an error names is in it), and a start replaces a campaign that never
    started; one whose ledger holds anything is still refused."""
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir, CampaignError

    tmp, env = home
    path = _campaign_file(tmp, 'name = "big"\ntasks = ["CartPole-v1"]\n[resources]\ncpus_per_run = 64\n')
    done = heurist(env, "campaign", "start", path, "--dir", tmp / "camp", timeout=180)
    assert done.returncode == 2 and "no node of the Ray cluster has 64 CPUs for a run" in done.stderr, done.stderr
    assert (tmp / "camp" / "campaign.json").is_file()
    fixed = _campaign_file(tmp, 'name = "fits"\ntasks = ["CartPole-v1"]\n')
    spec, runs = load_campaign(fixed)
    assert CampaignDir.create(tmp / "camp", fixed, spec, runs).record().name == "fits"
    (tmp / "camp" / "ledger.jsonl").write_text('{"event": "campaign_started"}\n')  # it started: it is kept
    with pytest.raises(CampaignError, match="already exists and is not an empty folder"):
        CampaignDir.create(tmp / "camp", fixed, spec, runs)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_campaign_run_spreads_its_evaluations_over_the_campaigns_own_ray(home):
    """A run with eval.backend = "ray" inside a campaign joins the campaign's Ray (the address it is given), and
    its evaluations ran there: the same numbers as a run evaluated locally. It holds no CPU itself (its episodes
    do), so a run whose cpus_per_run is every CPU of this machine's Ray does not wait forever for them."""
    tmp, env = home
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    head = '''
        name = "spread"
        tasks = ["CartPole-v1"]
        [policies]
        "CartPole-v1" = "weak.py"
        [resources]
        cpus_per_run = 2  # all of this 2-core machine: a run holding them would leave its episodes none
        '''
    path = _campaign_file(tmp, head)
    path.write_text(path.read_text().replace("[run.eval]\n", "[run.eval]\nbackend = \"ray\"\nworkers = 1\n"))
    done = heurist(env, "campaign", "start", path, "--dir", tmp / "camp", timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp / "camp" / "runs" / "cartpole-v1-r0"
    evals = [json.loads(p.read_text()) for p in sorted((run_dir / "evals").glob("*.json"))]
    assert evals and all(e["backend"] == "ray" and sum(e["nodes"].values()) == len(e["episodes"]) for e in evals)
    local = heurist(env, "eval", tmp / "weak.py", "--env", "CartPole-v1", "--episodes", "4", "--json",
                    "--ledger", tmp / "l.jsonl")
    first = next(e for e in evals if e["policy_sha256"] == json.loads(local.stdout)["policy_sha256"])
    assert [ep["return"] for ep in first["episodes"]] == [
        line["return"] for line in json.loads((tmp / "l.jsonl").read_text().splitlines()[-1])["per_episode"]]


def test_stopping_a_campaign_no_one_drives_says_so(home):
    tmp, env = home
    path = _campaign_file(tmp, 'name = "one"\ntasks = ["CartPole-v1"]\n')
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir

    spec, runs = load_campaign(path)
    CampaignDir.create(tmp / "camp", path, spec, runs)
    done = heurist(env, "campaign", "stop", tmp / "camp")
    assert done.returncode == 2 and "no process is driving" in done.stderr
    status = heurist(env, "campaign", "status", tmp / "camp")
    assert status.returncode == 0 and "not started" in status.stdout and "created" in status.stdout


# One run of one iteration on the embedded Ray: about 15 CPU-seconds. Slow, as the other campaigns driven to the end.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_a_killed_driver_left_half_made_is_made_again(home):
    """Found by a red-team review (2026-12-05): a driver killed inside create_run left the run's folder with its
    starting policy and no run.json; every resume then recorded the run failed for good ("already exists and is not
    empty"), with advice that could not work. Without run.json nothing ever ran there: the folder is made again."""
    tmp, env = home
    path = _campaign_file(tmp, f'''
        name = "one"
        tasks = ["CartPole-v1"]
        [policies]
        "CartPole-v1" = "{tmp / "weak.py"}"
        ''')
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir

    spec, runs = load_campaign(path)
    campaign = CampaignDir.create(tmp / "camp", path, spec, runs)
    debris = campaign.run_dir(runs[0].key)
    debris.mkdir(parents=True)
    (debris / "starting_policy.py").write_text((tmp / "weak.py").read_text())
    (debris / ".run.json.k3j4h5g6.tmp").write_text("{")  # the temp file of the write the kill cut short
    done = heurist(env, "campaign", "resume", tmp / "camp", "--max-concurrent", "1", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ends = [e for e in _events(tmp / "camp") if e["event"] == "campaign_run_ended"]
    assert [(e["key"], e["status"]) for e in ends] == [(runs[0].key, "finished")], ends
    assert not (debris / ".run.json.k3j4h5g6.tmp").exists()


def test_damaged_lines_of_a_campaigns_ledger_are_said(home):
    """A red-team review (2026-12-06): status showed a finished run as "not started" without a word of why."""
    tmp, env = home
    path = _campaign_file(tmp, 'name = "one"\ntasks = ["CartPole-v1"]\n')
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir

    spec, runs = load_campaign(path)
    campaign = CampaignDir.create(tmp / "camp", path, spec, runs)
    with open(campaign.ledger.path, "ab") as ledger:
        ledger.write(b'{"event": "run_ended", "torn\n')
    done = heurist(env, "campaign", "status", tmp / "camp")
    assert done.returncode == 0 and "warning: 1 unreadable line(s) in the campaign's ledger skipped" in done.stderr, \
        done.stderr


def test_a_damaged_campaign_file_or_run_ledger_is_one_line(home):
    """Found by a red-team review (2026-12-05): a campaign.json that is not UTF-8, or a run's ledger that is a
    folder, was an internal error in status, report, resume and stop."""
    tmp, env = home
    path = _campaign_file(tmp, 'name = "one"\ntasks = ["CartPole-v1"]\n')
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir, RunLaunched

    spec, runs = load_campaign(path)
    campaign = CampaignDir.create(tmp / "camp", path, spec, runs)
    run_dir = campaign.run_dir(runs[0].key)
    (run_dir / "ledger.jsonl").mkdir(parents=True)
    campaign.ledger.append(RunLaunched(key=runs[0].key, attempt=1, run_dir=str(run_dir), allotment={}))
    for command in ("status", "report"):
        done = heurist(env, "campaign", command, tmp / "camp")
        assert done.returncode == 2 and "cannot read the ledger" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    # A campaign folder may be a stranger's: its texts are shown, never obeyed; a name or key that is no folder's is
    # refused (a key is a path under runs/).
    record = json.loads((tmp / "camp" / "campaign.json").read_text())
    (run_dir / "ledger.jsonl").rmdir()
    record["runs"][0]["task"] = "\u202elive\x1b]0;TITLE\x07\x1b]52;c;ZXZpbA==\x07[bold red]pwned[/]"
    record["runs"][0]["key"] = run_key(record["runs"][0]["task"], 0)  # as planned: a key its task's and repeat's
    (tmp / "camp" / "campaign.json").write_text(json.dumps(record))
    done = heurist(env, "campaign", "status", tmp / "camp")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\u202e" not in done.stdout and "[bold red]pwned[/]" in done.stdout
    for field, value in (("name", "x\x1b]0;owned\x07"), ("key", "../../elsewhere")):
        hostile = json.loads(json.dumps(record))
        (hostile if field == "name" else hostile["runs"][0])[field] = value
        (tmp / "camp" / "campaign.json").write_text(json.dumps(hostile))
        done = heurist(env, "campaign", "status", tmp / "camp")
        assert done.returncode == 2 and "campaign.json is damaged" in done.stderr and "\x1b" not in done.stderr
    (tmp / "camp" / "campaign.json").write_bytes(b"\xff\xfe{")
    for command in ("status", "report", "resume"):
        done = heurist(env, "campaign", command, tmp / "camp")
        assert done.returncode == 2 and "campaign.json is damaged" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def _kill_tree(root: int) -> None:
    """SIGKILL a process and every descendant, however they grouped themselves (Ray's workers start sessions of
    their own), as a machine that dies takes everything on it: stopped first, so none starts another."""
    doomed, frontier = set(), {root}
    while frontier:
        doomed |= frontier
        for pid in frontier:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        children = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) in frontier:
                children.add(int(stat.parent.name))
        frontier = children - doomed
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _ray(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    ray = Path(HEURIST).with_name("ray")
    return subprocess.run([str(ray), *args], capture_output=True, text=True, env=env, timeout=timeout)


@contextmanager
def two_node_cluster(env: dict):
    """A real Ray cluster of two nodes on this machine (`ray start --head`, and a second `ray start --block` as a
    process of its own), one CPU each, token auth on: the environment to reach it, its address, the second node."""
    import secrets

    env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = str(6400 + os.getpid() % 500)
    head = _ray(env, "start", "--head", "--num-cpus", "1", "--port", port, "--include-dashboard=false",
                "--disable-usage-stats")
    assert head.returncode == 0, head.stderr[-2000:]
    node = subprocess.Popen([str(Path(HEURIST).with_name("ray")), "start", "--address", f"127.0.0.1:{port}",
                             "--num-cpus", "1", "--block"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "2.0 CPU" not in _ray(env, "status", "--address", f"127.0.0.1:{port}").stdout:
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(1)
        yield env, f"127.0.0.1:{port}", node
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
        _ray(env, "stop", "--force")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_evaluation_spreads_over_the_nodes_of_a_cluster_with_the_local_results(home):
    """`eval.backend = "ray"` on two nodes: episodes ran on both, each under its node's sandbox, and every episode's
    result is the one this machine gives alone."""
    tmp, env = home
    common = ["eval", POLICY_DIR / "mountaincar.py", "--env", "MountainCar-v0", "--episodes", "8", "--workers", "2",
              "--lockstep", "2", "--json"]
    local = heurist(env, *common, "--ledger", tmp / "local.jsonl")
    assert local.returncode == 0, local.stderr[-2000:]
    with two_node_cluster(env) as (cluster_env, address, _):
        spread = heurist(cluster_env, *common, "--backend", "ray", "--ray-address", address,
                         "--ledger", tmp / "ray.jsonl")
    assert spread.returncode == 0, spread.stderr[-2000:]
    nodes = json.loads(spread.stdout)["nodes"]
    assert len(nodes) == 2 and sum(nodes.values()) == 8, nodes

    def episodes(ledger: Path) -> list:
        return [json.loads(line) for line in ledger.read_text().splitlines() if '"eval_finished"' in line][-1][
            "per_episode"]

    assert episodes(tmp / "ray.jsonl") == episodes(tmp / "local.jsonl")
    assert cluster_env["RAY_AUTH_TOKEN"] not in (tmp / "ray.jsonl").read_text() + spread.stdout + spread.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_cluster_that_loses_a_node_mid_campaign_loses_and_doubles_nothing(home):
    """A real Ray cluster of two nodes on this machine; the second node is killed while a run is on it: that run
    starts again on the head from its checkpoint, and every run ends once, whole."""
    tmp, env = home
    with two_node_cluster(env) as (env, address, node):
        path = _campaign_file(tmp, '''
            name = "cluster"
            tasks = ["CartPole-v1", "MountainCar-v0", "Acrobot-v1"]
            repeats = 2
            ''').read_text().replace("iterations = 1", "iterations = 3")
        (tmp / "campaign.toml").write_text(path)
        directory = tmp / "camp"
        campaign = subprocess.Popen([HEURIST, "campaign", "start", str(tmp / "campaign.toml"), "--dir", str(directory),
                                     "--address", address, "--max-concurrent", "2"], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            def both_running() -> bool:
                events = _events(directory) if (directory / "ledger.jsonl").exists() else []
                started = [e["key"] for e in events if e["event"] == "campaign_run_started"]
                ledgers = [directory / "runs" / key / "ledger.jsonl" for key in started]
                # Both mid-run: each evaluated its policy once and neither has ended, so the killed node's run is cut.
                return len(started) == 2 and all(p.exists() and '"eval_finished"' in p.read_text()
                                                 and '"run_finished"' not in p.read_text() for p in ledgers)

            _wait(both_running, campaign, timeout=300)
            _kill_tree(node.pid)  # the second node and everything on it, as a machine that dies
            node.wait()
            assert campaign.wait(timeout=1200) == 0, campaign.stderr.read().decode()[-3000:]
        finally:
            if campaign.poll() is None:
                os.killpg(campaign.pid, signal.SIGKILL)

    events = _events(directory)
    ends = [e for e in events if e["event"] == "campaign_run_ended"]
    assert any(e["status"] == "lost" for e in ends), ends  # the run on the killed node
    final = [e for e in ends if e["status"] != "lost"]
    assert sorted(e["key"] for e in final) == sorted(r.key for r in plan_runs(
        CampaignSpec(name="x", tasks=["CartPole-v1", "MountainCar-v0", "Acrobot-v1"], repeats=2), "t"))
    assert all(e["status"] == "finished" for e in final), final
    assert events[-1]["event"] == "campaign_ended" and events[-1]["status"] == "finished"
    for e in final:
        assert lost_or_repeated(directory / "runs" / e["key"], directory / "memory", 3) == [], e["key"]


def test_a_spent_budget_skips_the_runs_not_started(home):
    """One run at a time, 100 env steps for two runs: the first is given 50 and passes them within its first
    iteration (a run checks its budget at each iteration's end), so nothing is left for the second."""
    tmp, env = home
    path = _campaign_file(tmp, '''
        name = "tight"
        tasks = ["CartPole-v1"]
        repeats = 2
        [budget]
        env_steps = 100
        ''')
    done = heurist(env, "campaign", "start", path, "--dir", tmp / "camp", "--max-concurrent", "1", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ends = {e["key"]: e for e in _events(tmp / "camp") if e["event"] == "campaign_run_ended"}
    assert ends["cartpole-v1-r0"]["status"] == "finished" and ends["cartpole-v1-r0"]["spent"]["env_steps"] > 100
    assert ends["cartpole-v1-r1"]["status"] == "skipped" and "budget is spent" in ends["cartpole-v1-r1"]["reason"]
    first = json.loads((tmp / "camp" / "runs" / "cartpole-v1-r0" / "run.json").read_text())["config"]["budget"]
    assert first["env_steps"] == 50 and not (tmp / "camp" / "runs" / "cartpole-v1-r1").exists()


# A policy whose every episode takes 20 s (its reset waits): the run's first evaluation outlasts the campaign's
# hours on any machine, so the campaign, not the run's own hours budget, ends it.
SLOW_TO_RESET = """
import time


class Policy:
    def reset(self, seed):
        time.sleep(20)

    def act(self, obs, info):
        return 0
"""


def test_a_run_the_campaigns_hours_cut_off_ends_once_with_what_it_spent(home):
    """Found by a red-team review (2026-12-05): when the hours ran out, a run in flight was recorded "stopped" (with
    what it spent), then "skipped" (with nothing): its status said skipped, its steps were gone from the campaign's
    totals, and a resume would not pick it up. It now ends once, out_of_time, with what it spent; the run never
    started is skipped. The hours are 9 s; the run could not end by itself in under 20."""
    tmp, env = home
    (tmp / "slow.py").write_text(SLOW_TO_RESET)
    path = tmp / "campaign.toml"
    path.write_text(textwrap.dedent(f'''
        name = "short"
        tasks = ["CartPole-v1"]
        repeats = 2
        [policies]
        "CartPole-v1" = "{tmp / "slow.py"}"
        [budget]
        hours = 0.0025
        ''') + RUN)
    done = heurist(env, "campaign", "start", path, "--dir", tmp / "camp", "--max-concurrent", "1", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ends = [e for e in _events(tmp / "camp") if e["event"] == "campaign_run_ended"]
    assert [(e["key"], e["status"]) for e in ends] == [("cartpole-v1-r0", "out_of_time"), ("cartpole-v1-r1", "skipped")]
    assert "h are spent" in ends[0]["reason"]
    from campaign.budget import run_spent

    assert ends[0]["spent"] == run_spent(tmp / "camp" / "runs" / "cartpole-v1-r0")
    status = heurist(env, "campaign", "status", tmp / "camp")
    assert status.returncode == 0 and "out_of_time" in status.stdout, status.stdout


def _fake_run(run_dir: Path, start: float, improved: float, holdout: float | None = None, task: str = "t",
              protocol: str = "standard", differs: bool = False) -> None:
    """A run's own ledger as a finished run leaves it: its start, two iterations, its end (and holdout)."""
    from common.events import EvalFinished, IterationDone, RunFinished, RunStarted

    ledger = Ledger(run_dir / "ledger.jsonl")
    ledger.append(EvalFinished(eval_id="e", task="t", protocol="standard", split="dev", seeds=list(range(4)), policy="p",
                               policy_sha256="0" * 64, status="complete", episodes=4, episodes_failed=0, mean=start,
                               std=0.0, median=start, min=start, max=start, ci95=None, hns_mean=None, target=None,
                               env_steps=10_000, wall_s=1.0, failures={}, clips=[], per_episode=[]))
    ledger.append(RunStarted(run_id="r", task=task, protocol=protocol, dev_seeds=list(range(4)),
                             start={"mean": start}, offline=True))
    for i, (mean, steps) in enumerate([(start, 400_000), (improved, 1_200_000)], start=1):
        ledger.append(IterationDone(run_id="r", iteration=i, accepted=mean > start, reason="", edit=None,
                                    mean_before=start, mean_candidate=mean, mean_after=mean, commit=None,
                                    tests_added=[], verdict=None, policy_sha256="0" * 64,
                                    spent={"env_steps": steps, "tokens": 0, "usd": 0.0}))
    ledger.append(RunFinished(run_id="r", reason="iteration budget spent", best_mean=improved,
                              holdout=None if holdout is None else {"mean": holdout, "control": {"differs": differs},
                                                                    "episodes_failed": 2 if differs else 0},
                              spent={"env_steps": 1_200_000}))


def test_the_campaign_report_gives_rliable_aggregates_of_hns_beside_published_numbers(tmp_path):
    """Three Atari games, two repeats, runs' ledgers as finished runs leave them. Every aggregate on the page is
    rliable's own, computed here on the repeats × tasks matrix (the transposed matrix would give another median),
    on the dev seeds and on the holdout; its curves and profile are drawn; each number names its protocol."""
    import numpy as np
    from rliable import library, metrics

    from campaign.plan import load_campaign
    from campaign.record import CampaignDir
    from envs.tasks import get_task
    from report.campaign_page import write_campaign_report

    games = ["ALE/Breakout-v5", "ALE/Pong-v5", "ALE/Freeway-v5"]
    path = tmp_path / "atari.toml"
    path.write_text(f'name = "atari"\ntasks = {json.dumps(games)}\nrepeats = 2\n')
    spec, runs = load_campaign(path)
    campaign = CampaignDir.create(tmp_path / "camp", path, spec, runs)
    dev_hns = {"ALE/Breakout-v5": [0.1, 1.9], "ALE/Pong-v5": [0.3, 0.35], "ALE/Freeway-v5": [0.9, 0.05]}
    for run in runs:
        task = get_task(run.task)
        hns = dev_hns[run.task][run.repeat]
        _fake_run(campaign.run_dir(run.key), task.random_score,
                  task.random_score + hns * (task.human_score - task.random_score),
                  holdout=task.random_score + hns / 2 * (task.human_score - task.random_score), task=run.task,
                  differs=run.key == runs[1].key)
    page = write_campaign_report(tmp_path / "camp").read_text()
    assert "Runs whose holdout differs from its control</strong> (" in page
    assert page.split("Runs whose holdout differs from its control")[1].split("</p>")[0].endswith(f": {runs[1].key}.")
    assert f"is over the others): {runs[1].key} (2 failed).</p>" in page

    matrix = np.array([[dev_hns[g][r] for g in games] for r in range(2)])  # repeats × tasks
    assert metrics.aggregate_median(matrix) != metrics.aggregate_median(matrix.T)
    table = page.split('id="aggregates"')[1].split("</table>")[0]
    dev_row, holdout_row = table.split("<tr")[2], table.split("<tr")[3]
    for row, scores in ((dev_row, matrix), (holdout_row, matrix / 2)):
        for func in (metrics.aggregate_median, metrics.aggregate_iqm, metrics.aggregate_mean,
                     metrics.aggregate_optimality_gap):
            point, ci = library.get_interval_estimates({"x": scores}, lambda s: np.array([func(s)]), reps=2000,
                                                       random_state=np.random.RandomState(0))
            assert f"{point['x'][0]:,.2f} (" in row, (func.__name__, row)
    assert "3 × 2" in dev_row and "holdout" in holdout_row
    # The curves' vectorised median and IQM are rliable's, at every checkpoint.
    from report.campaign_data import curves

    stack = np.stack([matrix, matrix / 2, matrix * 3], axis=-1)
    found = curves(stack, reps=50)
    for k in range(3):
        assert found["median"][0][k] == pytest.approx(metrics.aggregate_median(stack[..., k]))
        assert found["IQM"][0][k] == pytest.approx(metrics.aggregate_iqm(stack[..., k]))
    for section in ('id="efficiency-plot"', 'id="profile-plot"', 'id="task-curves"', 'id="references"'):
        assert section in page
    assert "0.32" in page and "frame skip 1, no sticky actions" in page  # the original's number, with its protocol
    assert "this campaign, pixels (3 tasks × 2 runs, dev seeds)" in page  # its own median at ~1M steps, beside them
    assert "<script" not in page


def test_the_campaign_report_imports_no_task_module_a_campaign_names(tmp_path, monkeypatch):
    """A campaign directory may come from elsewhere and name any module as a module:attr task; `heurist campaign
    report` does not import it (it did, and called what it named): the task is shown, left out of the aggregates
    with the reason, and drawn without a target. Nor does a run's ledger with values of the wrong type stop it."""
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir
    from envs import tasks
    from envs.tasks import get_task
    from report.campaign_page import write_campaign_report

    path = tmp_path / "own.toml"
    path.write_text('name = "own"\ntasks = ["ALE/Breakout-v5", "tests.stall_then_fall:TASK"]\nrepeats = 1\n')
    spec, runs = load_campaign(path)
    campaign = CampaignDir.create(tmp_path / "camp", path, spec, runs)
    for run in runs:
        random = get_task(run.task).random_score or 0.0
        _fake_run(campaign.run_dir(run.key), random, random + 5.0, task=get_task(run.task).id)
    # And a run's spent values of the wrong type (its ledger edited): dropped, not formatted ("internal error").
    with open(campaign.run_dir(runs[0].key) / "ledger.jsonl", "a") as ledger:
        ledger.write(json.dumps({"event": "iteration", "time": "2026-12-05T10:00:00+00:00", "run_id": "r",
                                 "iteration": 3, "accepted": True, "reason": "", "edit": None, "mean_before": 1.0,
                                 "mean_candidate": 2.0, "mean_after": 2.0, "commit": None, "tests_added": [],
                                 "verdict": None, "policy_sha256": "0" * 64,
                                 "spent": {"env_steps": "lots", "usd": "lots", "tokens": None}}) + "\n")

    def imported(task_path):
        raise AssertionError(f"the report imported {task_path}")

    monkeypatch.setattr(tasks, "_load_spec_path", imported)
    tasks.registry.cache_clear()  # a new process: the module:attr task was never loaded
    try:
        page = write_campaign_report(tmp_path / "camp").read_text()
    finally:
        tasks.registry.cache_clear()
    assert "tests.stall_then_fall:TASK" in page and "a task of one&#39;s own (module:attr), which the report does not " \
        "import" in page


def test_a_campaign_directory_from_elsewhere_is_read_as_data(tmp_path):
    """A red-team review of the campaign's read-side commands (2026-12-05): a `report` folder linked out of the
    campaign had the page written there; a run folder linked out was read and aggregated as the campaign's; a run
    that recorded another task or protocol was normalised as the planned one; a repeat of -1 or a run planned twice
    counted runs that are not there; a task not registered here refused the whole report; a 20 MB reason held
    `status` for minutes (2 MB printed 4.4 MB)."""
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir
    from campaign.status import campaign_status
    from envs.tasks import get_task
    from report.campaign_page import write_campaign_report
    from report.render import ReportError

    games = ["ALE/Breakout-v5", "ALE/Pong-v5", "ALE/Freeway-v5"]
    path = tmp_path / "atari.toml"
    path.write_text(f'name = "atari"\ntasks = {json.dumps(games)}\nrepeats = 2\n')
    spec, runs = load_campaign(path)
    root = tmp_path / "camp"
    campaign = CampaignDir.create(root, path, spec, runs)
    outside = tmp_path / "outside"
    for run in runs:
        task = get_task(run.task)
        _fake_run(campaign.run_dir(run.key) if run.task != "ALE/Freeway-v5" or run.repeat else outside,
                  task.random_score, task.human_score, task=run.task if run.key != "pong-v5-r1" else "CartPole-v1")
    campaign.run_dir("freeway-v5-r0").symlink_to(outside)  # its numbers live outside the campaign
    page = write_campaign_report(root).read_text()
    assert "ALE/Pong-v5: run pong-v5-r1 recorded the task CartPole-v1, not ALE/Pong-v5" in page
    assert "ALE/Freeway-v5: 1 of 2 runs have no score" in page  # the linked run was not read
    rows = {r["key"]: r for r in campaign_status(root)[0]}
    assert rows["freeway-v5-r0"]["status"] == "not read" and rows["freeway-v5-r0"]["env_steps"] == 0

    record = json.loads((root / "campaign.json").read_text())
    for change in ({"repeat": -1}, {"repeat": 10**12}, {"key": record["runs"][1]["key"], "task": record["runs"][1]["task"],
                                                         "repeat": record["runs"][1]["repeat"]}):
        damaged = json.loads(json.dumps(record))
        damaged["runs"][0].update(change)
        (root / "campaign.json").write_text(json.dumps(damaged))
        with pytest.raises(CampaignError, match="campaign.json is damaged"):
            write_campaign_report(root)
    # The memory it serves: every interface (the memory has no authentication), or no port (an internal error).
    for served in ("http://0.0.0.0:18752", "http://127.0.0.1", "http://[::1", "http://example.org:80", "file:///x"):
        (root / "campaign.json").write_text(json.dumps({**record, "memory_server": served}))
        with pytest.raises(CampaignError, match="campaign.json is damaged"):
            write_campaign_report(root)
    (root / "campaign.json").write_text(json.dumps({**record, "memory_server": "http://127.0.0.1:18752"}))
    write_campaign_report(root)
    record["runs"] = [r for r in record["runs"] if r["task"] != "ALE/Freeway-v5"]
    record["runs"][0]["task"], record["runs"][0]["key"] = "NotHere-v0", "nothere-v0-r0"
    (root / "campaign.json").write_text(json.dumps(record))
    assert "NotHere-v0: a task not registered here" in write_campaign_report(root).read_text()

    with open(root / "ledger.jsonl", "a") as ledger:
        ledger.write(json.dumps({"event": "campaign_run_ended", "key": "pong-v5-r0", "attempt": 1,
                                 "status": "failed", "reason": "R" * 2_000_000}) + "\n")
    done = subprocess.run([HEURIST, "campaign", "status", str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout) < 20_000 and "RRRRRRRR" in done.stdout  # shown, cut (a table wraps the note)

    shutil.rmtree(root / "report")
    (root / "report").symlink_to(outside)
    with pytest.raises(ReportError, match="is not a plain folder"):
        write_campaign_report(root)
    assert not (outside / "index.html").exists()


def test_a_report_of_tasks_without_human_scores_says_no_aggregate_is_defined(home):
    tmp, env = home
    path = _campaign_file(tmp, 'name = "one"\ntasks = ["CartPole-v1"]\n')
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir

    spec, runs = load_campaign(path)
    campaign = CampaignDir.create(tmp / "camp", path, spec, runs)
    _fake_run(campaign.run_dir(runs[0].key), 9.0, 500.0, task="CartPole-v1")
    done = heurist(env, "campaign", "report", tmp / "camp")
    assert done.returncode == 0, done.stderr
    page = (tmp / "camp" / "report" / "index.html").read_text()
    assert 'id="no-aggregates"' in page and "CartPole-v1: no published human and random scores" in page
    assert "500.00" in page


def test_the_campaigns_memory_server_serves_a_heurist_store_and_says_when_its_port_is_taken(tmp_path):
    import socket

    from campaign.memory_server import MemoryServer, choose_url
    from campaign.plan import CampaignError
    from memory.store import MemoryConfig, MemoryStore

    url = choose_url(None)
    assert url.startswith("http://127.0.0.1:")
    server = MemoryServer(tmp_path / "memory", url, tmp_path / "server.log")
    server.start()
    try:
        with MemoryStore(MemoryConfig(url=url)) as store:
            assert list(store.records()) == []
    finally:
        server.stop()
    assert server.proc.returncode is not None and (tmp_path / "memory" / "heurist-memory.json").is_file()
    with MemoryStore(MemoryConfig(path=tmp_path / "memory")):  # once no server holds it, a local store
        pass
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CampaignError, match=f"127.0.0.1:{port} cannot be taken here"):
            MemoryServer(tmp_path / "memory", f"http://127.0.0.1:{port}", tmp_path / "server.log").start()


INTERRUPTIBLE_CHILD = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, lambda *_: print("interrupted", flush=True))
    print("ready", flush=True)
    sys.stdin.readline()  # "go" comes once the supervisor has had its second stop
    sys.exit(3)
""")


def test_a_second_stop_during_the_grace_leaves_the_run_the_rest_of_it():
    """The driver stops each task two ways (its marker, then Ray's cancel): the cancel's KeyboardInterrupt may come
    while the run is recording its interruption, and must not cut its grace short with a kill."""
    import _thread
    import sys
    import threading

    from campaign.engine import _interrupt

    child = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout.readline() == "ready\n"

        def second_stop() -> None:
            if child.stdout.readline() == "interrupted\n":  # the run has its Ctrl-C and is recording it
                _thread.interrupt_main()  # as Ray cancels a task
            child.stdin.write("go\n")
            child.stdin.flush()

        helper = threading.Thread(target=second_stop)
        helper.start()
        try:
            _interrupt(child, [])
        except KeyboardInterrupt:
            pytest.fail("the second stop cut the run's grace short")
        helper.join()
        assert child.returncode == 3  # it exited by itself, not killed
        try:  # a simulated Ctrl-C the interpreter still holds (the child may exit first) must not reach a later test
            interrupts.check()
        except KeyboardInterrupt:
            pass
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_stopping_driver_stops_its_runs_without_rays_cancel(home, monkeypatch):
    """Ray's cancel is best effort: under load one never arrived, and its run was killed when the stop's grace ran
    out, without recording its interruption. The marker the driver writes stops a run by itself; a marker an
    earlier driver left stops nothing. And the task ignores Ctrl-C here, as Ray workers were seen to and as every
    process of a campaign a script starts in the background does: the run must take the stop's Ctrl-C anyway."""
    ignoring = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _stop_a_run_by_the_marker(home, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, ignoring)


def _stop_a_run_by_the_marker(home, monkeypatch) -> None:
    import threading

    from campaign.engine import supervise_run
    from campaign.record import CampaignDir, stop_marked
    from store.config import build_config
    from store.rundir import create_run

    tmp, env = home
    monkeypatch.setenv("HEURIST_HOME", env["HEURIST_HOME"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    campaign = CampaignDir(tmp / "camp")
    run_dir = create_run(build_config({"task": "CartPole-v1", "policy": str(tmp / "weak.py"), "offline": True,
                                       "report": False, "budget": {"iterations": 50, "stop_when": "never"}},
                                      "test"), campaign.run_dir("r"))
    campaign.mark_stopping("an-earlier-driver")
    outcome: dict = {}
    task = threading.Thread(target=lambda: outcome.update(supervise_run(
        str(run_dir), env["HEURIST_HOME"], lambda: stop_marked(campaign.root, "this-driver"), "node", None)))
    task.start()
    ledger = run_dir / "ledger.jsonl"
    deadline = time.monotonic() + 240
    while not (ledger.exists() and '"eval_finished"' in ledger.read_text()):  # mid-run
        assert task.is_alive() and time.monotonic() < deadline, (run_dir / "campaign-task.log").read_text()[-2000:]
        time.sleep(0.1)
    campaign.mark_stopping("this-driver")
    task.join(timeout=240)
    assert not task.is_alive()
    log = (run_dir / "campaign-task.log").read_text()
    assert outcome["stopped"] and outcome["returncode"] == 130, (outcome, log[-2000:])
    assert "interrupted; nothing recorded is lost" in log, log[-2000:]


def test_status_shows_a_runs_best_dev_mean_from_its_own_ledger_whatever_its_end(llm_run, tmp_path):
    """A review on a real cluster (2026-12-06): `campaign status` showed "-" for the best dev mean of every run not
    finished (lost, stopped, failed), even after seven iterations at 500; the run's own ledger says it."""
    from campaign.budget import run_best
    from common.events import IterationDone, read_events

    iterations = [r for r in read_events(Ledger(llm_run.run_dir / "ledger.jsonl"))[0] if isinstance(r, IterationDone)]
    assert run_best(llm_run.run_dir) == iterations[-1].mean_after is not None
    assert run_best(tmp_path) is None  # nothing scored yet
