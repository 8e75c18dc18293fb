"""Bad input to every command: one line that names the problem and what to do, a non-zero exit, no
traceback (``--debug`` shows it). The sweep calls the CLI's entry point in this process, so it
costs milliseconds per case; tests/test_cli.py and test_graph_offline.py run the installed
command for the same wiring."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from cli.main import main
from envs.tasks import registry
from store.transcripts import Decision, LLMCall, TranscriptRecorder
from policies import POLICY_DIR

CARTPOLE = str(POLICY_DIR / "cartpole.py")

FILES = {
    "syntax.py": "class Policy:\n    def act(self\n",
    "notpolicy.py": "def act(obs):\n    return 0\n",
    "latin1.py": b"# caf\xe9\nclass Policy:\n    def reset(self, seed):\n        pass\n    def act(self, obs, info):\n"
                 b"        return 0\n",
    "typo.toml": "[budget]\niteratons = 3\n",
    # More source than any policy's code (a table of numbers belongs in a data file): parsing such a file took 300
    # times its size in heurist's own memory. And a sum of 3,000 terms, which Python's parser cannot nest.
    "table.py": "class Policy:\n    def reset(self, seed):\n        pass\n    def act(self, obs, info):\n"
                "        return 0\n\n\nTABLE = [" + "1," * 600_000 + "]\n",
    "deep.py": "class Policy:\n    def reset(self, seed):\n        pass\n    def act(self, obs, info):\n        return "
               + " + ".join(f"obs[0] * {i}" for i in range(3000)) + "\n",
    "wrongtype.toml": '[budget]\niterations = "many"\n',
    "broken.toml": "[budget\n",
    "config.yaml": "budget:\n  iterations: 3\n",
    "negative.json": '{"budget": {"iterations": -1}}',
    "list.json": "[1, 2]",
    "garbage.jsonl": "{garbage\n",
    "afile": "x",
    "victim.py": (POLICY_DIR / "cartpole.py").read_text(),
    "deep.toml": "a = " + "[" * 100_000 + "\n",
    "fine.toml": "[eval]\nepisodes = 4\n",
    "boolcount.toml": "[simplify]\nscreen_episodes = true\n",
    "boolcontrol.json": '{"eval": {"holdout_control": false}}',
    "deep.json": "[" * 100_000 + "\n",
    "cfgdir.toml/inside": "a folder named as a config file",
    "camp_eval.toml": 'name = "c"\ntasks = ["CartPole-v1"]\n[run]\neval = 5\n',
    "camp_wandb.toml": 'name = "c"\ntasks = ["CartPole-v1"]\n[run]\nwandb = "x"\n',
    "camp_bool.toml": 'name = "c"\ntasks = ["CartPole-v1"]\nrepeats = true\n',
    "foreign/notes.txt": "not a run",
    "badrun/run.json": "{not json",
    "wrongrun/run.json": '{"run_id": 3}',
}

CASES = [
    # (command line, words the one line must contain)
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["shwo"], "Did you mean 'show'? `heurist --help` lists what it takes"),  # not "?;": one sentence, then the hint
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--iterations", "many"], "Invalid value for '--iterations'"),
    (["run", "--hours", "0"], "Invalid value for '--hours'"),
    (["show"], "Missing argument 'run_dir'"),
    (["run"], "no task: give --env TASK"),
    (["run", "--env", "NoSuchTask-v0"], "unknown task 'NoSuchTask-v0'"),
    (["run", "--env", "CartPole-v1", "--policy", "missing.py"], "does not exist"),
    (["run", "--env", "CartPole-v1", "--policy", "foreign"], "is a folder; a run starts from one policy .py file"),
    (["run", "--env", "CartPole-v1", "--policy", "syntax.py"], "syntax error at line 2"),
    (["run", "--env", "CartPole-v1", "--policy", "notpolicy.py"], "defines no top-level class Policy"),
    (["run", "--env", "CartPole-v1", "--policy", "latin1.py"], "is not UTF-8 text"),
    (["run", "--env", "CartPole-v1", "--config", "typo.toml"], "budget.iteratons: unknown key"),
    (["run", "--env", "CartPole-v1", "--config", "wrongtype.toml"], "budget.iterations: Input should be a valid integer"),
    (["run", "--env", "CartPole-v1", "--config", "broken.toml"], "broken.toml does not parse"),
    (["run", "--env", "CartPole-v1", "--config", "config.yaml"], "config.yaml does not parse"),
    (["run", "--env", "CartPole-v1", "--config", "negative.json"], "budget.iterations: Input should be greater than"),
    (["run", "--env", "CartPole-v1", "--config", "list.json"], "list.json"),
    (["run", "--env", "CartPole-v1", "--config", "missing.toml"], "config file missing.toml does not exist"),
    # A bool where a number goes: pydantic took true as 1 and false as 0 (no control, one screening episode).
    (["run", "--env", "CartPole-v1", "--config", "boolcount.toml"], "screen_episodes: give a number, not true"),
    (["run", "--env", "CartPole-v1", "--config", "boolcontrol.json"], "holdout_control: give a number, not false"),
    # Nesting past Python's parsers, and a folder where a file was meant: internal errors, and "does not exist".
    (["run", "--env", "CartPole-v1", "--config", "deep.toml"], "deep.toml does not parse: it is nested too deeply"),
    (["run", "--env", "CartPole-v1", "--config", "deep.json"], "deep.json does not parse: it is nested too deeply"),
    (["run", "--env", "CartPole-v1", "--config", "cfgdir.toml"], "cannot read the config file cfgdir.toml: not a "
                                                                 "regular file"),
    (["campaign", "start", "deep.toml"], "deep.toml does not parse: it is nested too deeply"),
    (["campaign", "start", "cfgdir.toml"], "cannot read the campaign file cfgdir.toml: not a regular file"),
    # A [run] table of the wrong type: the campaign read its tables before checking them (an internal error).
    (["campaign", "start", "camp_eval.toml"], "[run] for CartPole-v1: eval: Input should be a valid dictionary"),
    (["campaign", "start", "camp_wandb.toml"], "[run] for CartPole-v1: wandb: Input should be"),
    # A bool where a number goes, in a campaign file and an embedder's settings as in a run config.
    (["campaign", "start", "camp_bool.toml"], "repeats: give a number, not true"),
    (["memory", "stats", "--embedder", '{"kind": "minilm-onnx", "threads": true}'], "threads: give a number, not true"),
    (["run", "--env", "CartPole-v1", "--base-url", "localhost"], "'localhost' is not an http(s) URL"),
    # An option's value at fault is the command line's, beside a config file (it was blamed on the file).
    (["run", "--env", "CartPole-v1", "--hours", "inf", "--config", "fine.toml"],
     "error: command line: budget.hours: Input should be a finite number"),
    (["run", "--env", "CartPole-v1", "--base-url", "ftp://x", "--config", "fine.toml"],
     "error: command line: llm.base_url: 'ftp://x' is not an http(s) URL"),
    (["run", "--env", "CartPole-v1", "--run-dir", "afile"], "is a file; give --run-dir a new or empty directory"),
    (["run", "--env", "CartPole-v1", "--run-dir", "foreign"], "already exists and is not empty"),
    (["resume", "foreign"], "is not a heurist run directory"),
    (["resume", "missing"], "is not a heurist run directory"),
    (["resume", "afile"], "is not a heurist run directory"),
    (["resume", "badrun"], "run.json is damaged"),
    (["resume", "wrongrun"], "run.json is damaged"),
    (["show", "wrongrun"], "problem(s); run_id: Input should be a valid string); restore it from a copy of the run"),
    (["replay", "foreign"], "is not a heurist run directory"),
    (["show", "badrun"], "run.json is damaged"),
    (["transcripts", "foreign"], "is not a heurist run directory"),
    (["report", "foreign"], "is not a heurist run directory"),
    (["eval", "missing.py", "--env", "CartPole-v1"], "does not exist"),
    (["eval", "syntax.py", "--env", "CartPole-v1"], "syntax error at line 2"),
    (["eval", "notpolicy.py", "--env", "CartPole-v1"], "defines no top-level class Policy"),
    (["eval", CARTPOLE, "--env", "NoSuchTask-v0"], "unknown task"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--split", "train"], "unknown split 'train'"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--protocol", "nope"], "has no protocol 'nope'"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--episodes", "0"], "Invalid value for '--episodes'"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--ledger", "foreign"], "cannot write the ledger"),
    # A file that holds something else (the policy itself, a config): appends would have added to its end for good.
    (["eval", "victim.py", "--env", "CartPole-v1", "--ledger", "victim.py"], "victim.py is not a heurist ledger"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--ledger", "negative.json"], "negative.json is not a heurist ledger"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--video", "--out", "afile"], "cannot write clips to afile: it is a file"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--backend", "spark"], "unknown backend 'spark'; choose local or ray"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--seeds", "abc"], "'abc' is not a seed or a range"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--seeds", "9-3"], "'9-3' is not a range of seeds from low to high"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--seeds", "3", "--split", "dev"], "give --seeds or --split, not both"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--seeds", "3", "--episodes", "2"], "give --seeds or --episodes"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--seeds", "0-60000,70000-130000"], "more than 100,000 seeds"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--seeds", "1-10,1049"], "seeds [1049] are in the holdout split"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--max-steps", "0"], "Invalid value for '--max-steps'"),
    (["eval", "table.py", "--env", "CartPole-v1"], "larger than 1 MiB of source"),
    (["run", "--env", "CartPole-v1", "--policy", "table.py"], "larger than 1 MiB of source"),
    (["eval", "deep.py", "--env", "CartPole-v1"], "nested too deeply for Python to parse"),
    (["run", "--env", "CartPole-v1", "--policy", "deep.py"], "nested too deeply for Python to parse"),
    # "No limit" given as a number no clock or kernel takes: before, every episode failed, blamed on the policy.
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--episode-timeout", "inf"], "episode_timeout_s: Input should be a "
                                                                            "finite number"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--episode-timeout", "1e300"], "less than or equal to 10000000"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--step-seconds", "inf"], "step_s: Input should be a finite"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--memory-mb", "99999999999999"], "memory_mb: Input should be less"),
    (["eval", CARTPOLE, "--env", "CartPole-v1", "--backend", "ray", "--ray-address", "127.0.0.1:1"],
     "cannot reach a Ray cluster at 127.0.0.1:1"),
    (["graph", "--config", "typo.toml"], "budget.iteratons: unknown key"),
    (["graph", "--env", "NoSuchTask-v0"], "unknown task"),
    (["envs", "--family", "nope"], "no tasks in family 'nope'"),
    (["doctor", "--skip-llm", "--config", "missing.toml"], "does not exist"),
    (["doctor", "--base-url", "http://[::1"], "--base-url 'http://[::1' is not an http(s) URL"),
    (["doctor", "--base-url", "127.0.0.1:8000/v1"], "is not an http(s) URL"),
    (["doctor", "--skip-llm", "--config", "typo.toml"], "budget.iteratons: unknown key"),
    (["memory", "nosuch"], "No such command 'nosuch'"),
    (["memory", "import", "missing.jsonl"], "is not a file"),
    (["memory", "import", "garbage.jsonl"], "garbage.jsonl:1 is not a memory record"),
    (["memory", "search", "pole", "--memory", "afile"], "is a file, not a directory"),
    (["memory", "stats", "--memory", "foreign"], "is not a heurist memory store"),
    # A typo, not a new store: reading made an empty store there and reported 0 records.
    (["memory", "stats", "--memory", "no/such/store"], "no memory store at no/such/store"),
    (["memory", "search", "pole", "--memory", "no/such/store"], "no memory store at no/such/store"),
    (["memory", "search", "pole", "--memory-url", "localhost:8000"], "is not http(s)://host[:port]"),
    (["memory", "forget"], "Missing option '--run'"),
    (["memory", "export", "foreign"], "cannot write"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name, text in FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return tmp_path


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The installed command's entry point, in this process: exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["heurist", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_naming_the_problem(workdir, monkeypatch, capsys, args, words):
    code, _, stderr = cli(monkeypatch, capsys, *args)
    assert code == 2, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("error: ") and words in stderr, stderr


TASKS = """
from envs.tasks import FailureRules, Protocol, SeedSplits, StallRule, TaskSpec

def task(**kw):
    return TaskSpec(**{"id": "Mine-v0", "gym_id": "CartPole-v1", "family": "custom", "description": "mine",
                       "failure_rules": FailureRules(termination="failure"), **kw})

NEGATIVE = lambda: task(seeds=SeedSplits(dev=(-1, 2)))
NO_STEPS = lambda: task(protocols=(Protocol(name="standard", description="d", max_episode_steps=0),))
NAN_STALL = lambda: task(failure_rules=FailureRules(termination="failure",
                                                    stall=StallRule(info_key="x", below=float("nan"), steps=3)))
NAN_TARGET = lambda: task(target=float("nan"))
SAME_SCORES = lambda: task(random_score=1.0, human_score=1.0)
OVERLAP = lambda: task(seeds=SeedSplits(dev=(1000,)))
"""


@pytest.mark.parametrize("attr, words", [
    ("NEGATIVE", "greater than or equal to 0"), ("NO_STEPS", "greater than or equal to 1"),
    ("NAN_STALL", "finite number"), ("NAN_TARGET", "finite number"), ("SAME_SCORES", "no score can be normalised"),
    ("OVERLAP", "calling OVERLAP raised ValidationError"), ("BROKEN", "importing tasks_broken raised RuntimeError")])
def test_a_task_of_ones_own_that_cannot_be_is_one_line_naming_it(workdir, monkeypatch, capsys, attr, words):
    """A task given as module:attr whose values no simulator or score takes (negative seeds, no steps, NaN, equal
    human and random scores), whose factory or module raises: one line naming it at load. Before, each failed every
    episode blamed on the policy, stopped the env process, or was an internal error once every episode had run."""
    (workdir / "tasks_of_mine.py").write_text(TASKS)
    (workdir / "tasks_broken.py").write_text("raise RuntimeError('a plug-in that fails as it loads')\n")
    monkeypatch.syspath_prepend(str(workdir))
    module = "tasks_broken" if attr == "BROKEN" else "tasks_of_mine"
    try:
        code, _, stderr = cli(monkeypatch, capsys, "eval", CARTPOLE, "--env", f"{module}:{attr}")
    finally:
        sys.modules.pop(module, None)
    assert code == 2 and "internal error" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert f"{module}:{attr}" in stderr and words in stderr, stderr


def test_debug_shows_the_traceback_of_bad_input(workdir, monkeypatch, capsys):
    with pytest.raises(Exception, match="budget.iteratons: unknown key"):
        cli(monkeypatch, capsys, "--debug", "run", "--env", "CartPole-v1", "--config", "typo.toml")


def test_a_bare_heurist_prints_its_help_and_no_error_line(workdir, monkeypatch, capsys):
    code, stdout, stderr = cli(monkeypatch, capsys)
    assert code == 2 and "Commands" in stdout + stderr and "error:" not in stderr


def test_damaged_ledger_lines_are_skipped_with_one_warning_not_an_error(llm_run, workdir, monkeypatch, capsys):
    """A torn line (a crash mid-write) or bytes that are not text at all: every command still works."""
    run = workdir / "run"
    shutil.copytree(llm_run.run_dir, run, ignore=shutil.ignore_patterns("report", ".lock"))  # rewritten elsewhere
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    # Torn, not text, no record, and JSON nested deeper than the parser goes (RecursionError, not ValueError).
    lines[3:3] = [b'{"event": "eval_finished", "torn\n', b"\x00\x00\xff not text\n", b"42\n", b"[" * 100_000 + b"\n"]
    (run / "ledger.jsonl").write_bytes(b"".join(lines))
    # A transcript line whose time and iteration are no numbers: the others are still listed, sorted.
    with open(next((run / "transcripts").glob("*/*.jsonl")), "a") as transcript:
        transcript.write('{"time": "soon", "iteration": "one", "role": "coder", "kind": "decision"}\n')
    for args in (["show", str(run)], ["resume", str(run), "--no-progress"], ["report", str(run)],
                 ["transcripts", str(run)], ["transcripts", str(run), "--json"]):
        code, stdout, stderr = cli(monkeypatch, capsys, *args)
        assert code == 0, stderr
        assert f"warning: 4 unreadable line(s) in {run / 'ledger.jsonl'} skipped" in stderr or args[0] in ("report", "transcripts")
        assert "Traceback" not in stderr and "internal error" not in stderr
    code, stdout, _ = cli(monkeypatch, capsys, "show", str(run))
    assert "accepted" in stdout and "rejected" in stdout  # the records around the damage are all there


def test_a_run_id_from_heurist_runs_is_taken_where_a_run_directory_is(llm_run, workdir, monkeypatch, capsys):
    """A new user gave `heurist show` the id `heurist runs` prints first, and was refused (a review, 2026-12-06): the
    read-side commands and resume take a run id of this machine's runs index. Also from that review: a mistyped
    role names the roles there are, resuming a finished run says there is nothing to resume, a replay is marked as
    one in `heurist runs`, and `heurist --version` answers."""
    from store.rundir import RunIndexEntry, runs_index

    run = workdir / "somewhere" / "run"
    shutil.copytree(llm_run.run_dir, run, ignore=shutil.ignore_patterns("report", ".lock"))
    run_id = json.loads((run / "run.json").read_text())["run_id"]
    runs_index().append(RunIndexEntry(run_id=run_id, run_dir=str(run), task="CartPole-v1", created="2026-12-06"))
    runs_index().append(RunIndexEntry(run_id="r-replayed", run_dir=str(run), task="CartPole-v1", created="2026-12-06",
                                      replay_of=str(run)))
    code, stdout, stderr = cli(monkeypatch, capsys, "show", run_id)
    assert code == 0 and run_id in stdout and "accepted" in stdout, stderr
    code, stdout, stderr = cli(monkeypatch, capsys, "transcripts", run_id, "--role", "codr")
    assert code == 2 and "for role codr; its roles are " in stderr and "coder" in stderr, stderr
    code, stdout, stderr = cli(monkeypatch, capsys, "transcripts", run_id, "--role", "coder", "--iter", "1")
    assert code == 0 and "coder" in stdout, stderr
    code, stdout, stderr = cli(monkeypatch, capsys, "resume", run_id, "--no-progress")
    assert code == 0 and "has finished: there is nothing to resume" in stderr, stderr
    code, stdout, _ = cli(monkeypatch, capsys, "runs")
    assert "r-replayed (replay)" in stdout and f"{run_id} (replay)" not in stdout
    code, stdout, stderr = cli(monkeypatch, capsys, "show", "no-such-run-id")
    assert code == 2 and "or a run id (see `heurist runs`)" in stderr
    code, stdout, _ = cli(monkeypatch, capsys, "--version")
    assert code == 0 and stdout.startswith("heurist ")

    # A replay whose roles cannot be loaded now is refused before it makes a run (a stray "created" run was left).
    record = json.loads((run / "run.json").read_text())
    record["config"]["stages"] = {"code": "no_such_roles_module:Coder"}
    (run / "run.json").write_text(json.dumps(record))
    before = runs_index().read()[0]
    code, stdout, stderr = cli(monkeypatch, capsys, "replay", run_id, "--no-progress")
    assert code == 2 and "cannot import role module 'no_such_roles_module'" in stderr, stderr
    assert runs_index().read()[0] == before and "replaying" not in stderr


def test_a_run_directory_from_elsewhere_is_shown_inert_and_not_replayed_into_code(llm_run, workdir, monkeypatch,
                                                                                   capsys):
    """A red-team review of the read-side commands (2026-12-05): a recorded holdout's seeds with Rich markup and
    escape sequences reached the terminal through `heurist show` (a hyperlink made, the screen cleared); values of
    the wrong type were "internal error"; `heurist replay` imported the module a run.json's module:attr task named
    (``os:abort`` killed it), and replayed whatever file run.json's starting_policy named."""
    run = workdir / "run"
    shutil.copytree(llm_run.run_dir, run, ignore=shutil.ignore_patterns("report", ".lock"))
    lines = (run / "ledger.jsonl").read_text().splitlines()
    hostile = "[bold red]X[/][link=https://evil.example]c[/link]\x1b[31mESC\x1b]8;;http://x\x07"
    finish = {"event": "run_finished", "time": "2026-12-05T10:00:00+00:00", "run_id": json.loads(
        (run / "run.json").read_text())["run_id"], "reason": "done", "best_mean": 500.0, "spent": {},
        "holdout": {"seeds": [hostile, 2], "episodes": 2, "mean": "x", "std": None}}
    (run / "ledger.jsonl").write_text("\n".join([*lines, json.dumps(finish)]) + "\n")
    code, stdout, stderr = cli(monkeypatch, capsys, "show", str(run))
    assert code == 0, stderr
    assert "\x1b[31mESC" not in stdout and "\x1b]8;" not in stdout and "\\x1b[31mESC" in stdout
    assert "[bold red]X[/][link=https://evil.example]" in stdout and "mean n/a ± n/a" in stdout

    # Every field of a transcript is cut at --chars (a 5 MB summary printed whole), and a line of the right kind with
    # parts of the wrong shape is shown as damaged ("internal error" before, for the whole command).
    coder = TranscriptRecorder(run).for_role(1, "coder")
    coder.write(Decision, summary="S" * 5_000_000, details={})
    coder.write(LLMCall, model="m", attempt=1, messages=[{"role": "user", "content": ["hello", 3]}], latency_s=0.1,
                refusal="R" * 3_000_000)
    with open(next((run / "transcripts" / "0001").glob("coder.jsonl")), "ab") as transcript:
        transcript.write(b'{"kind": "decision", "summary": "\xff not text"}\n{"kind": "no such kind"}\n')
    code, stdout, stderr = cli(monkeypatch, capsys, "transcripts", str(run), "--role", "coder", "--iter", "1")
    assert code == 0, stderr
    assert len(stdout) < 100_000 and "(4998500 more chars)" in stdout and "a damaged llm_call line" in stdout
    assert "warning: 2 damaged transcript line(s) skipped" in stderr  # dropped without a word before

    record = json.loads((run / "run.json").read_text())
    record["starting_policy"] = str(workdir / "moved away.py")  # the original file is gone, and the copy changed
    (run / "run.json").write_text(json.dumps(record))
    (run / "starting_policy.py").write_text("# not the policy the run started from\n")
    code, _, stderr = cli(monkeypatch, capsys, "replay", str(run), "--run-dir", "replayed")
    assert code != 0 and "is not the policy the run started from" in stderr and "Traceback" not in stderr
    record["task"] = record["config"]["task"] = "os:abort"
    (run / "run.json").write_text(json.dumps(record))
    code, _, stderr = cli(monkeypatch, capsys, "replay", str(run), "--run-dir", "replayed")
    assert code != 0 and "(moved, or started elsewhere) and names code of its own (os:abort)" in stderr
    record["task"] = record["config"]["task"] = "CartPole-v1"
    record["config"]["stages"] = {**record["config"].get("stages", {}), "review": ["reviewer", "os:Planted"]}
    (run / "run.json").write_text(json.dumps(record))
    code, _, stderr = cli(monkeypatch, capsys, "replay", str(run), "--run-dir", "replayed")
    assert code != 0 and "names code of its own (os:Planted)" in stderr  # a plug-in role, imported as it is built
    assert not (workdir / "replayed").exists()


def test_foreign_directories_are_never_touched(workdir, monkeypatch, capsys):
    before = {p: p.read_bytes() for p in Path(workdir / "foreign").rglob("*") if p.is_file()}
    for command in (["resume", "foreign"], ["run", "--env", "CartPole-v1", "--run-dir", "foreign"],
                    ["report", "foreign"], ["replay", "foreign"]):
        assert cli(monkeypatch, capsys, *command)[0] == 2
    assert {p: p.read_bytes() for p in Path(workdir / "foreign").rglob("*") if p.is_file()} == before


def test_a_run_on_a_task_of_ones_own_resumes_and_reports_in_a_new_process(workdir, monkeypatch, capsys):
    """run.json names a run's task by its id, which a task given as module:attr has only in a process that loaded
    it: a resume (after a crash, say) or a report in a new process stopped at "unknown task". They now ask for it
    by the name the run was started with."""
    (workdir / "quiet.toml").write_text('report = false\n[budget]\nstop_when = "never"\n')
    code, _, stderr = cli(monkeypatch, capsys, "run", "--env", "tests.stall_then_fall:TASK", "--config", "quiet.toml",
                          "--iterations", "1", "--run-dir", "run", "--no-progress")
    assert code == 0, stderr
    for command in (["report", "run"], ["resume", "run", "--no-progress"], ["show", "run"]):
        registry.cache_clear()  # what a new process knows: the built-in tasks alone
        code, stdout, stderr = cli(monkeypatch, capsys, *command)
        assert code == 0, stderr
    assert (workdir / "run" / "report" / "index.html").is_file() and "StallThenFall-v0" in stdout


def test_what_eval_prints_of_a_plug_in_task_is_shown_not_interpreted(workdir, monkeypatch, capsys):
    """A task of one's own names its id, protocol and failure kinds: Rich markup in them swallowed text, and escape
    sequences reached the terminal raw (a colour change, a window title set)."""
    (workdir / "odd_tasks.py").write_text(TASKS + '''
ODD = lambda: task(id="Mine[v2]\\x1b]0;pwned\\x07", protocols=(Protocol(name="[bold]std", description="d"),),
                   failure_rules=FailureRules(termination="failure", termination_kind="[red]fell"))
''')
    monkeypatch.syspath_prepend(str(workdir))
    try:
        code, stdout, stderr = cli(monkeypatch, capsys, "eval", CARTPOLE, "--env", "odd_tasks:ODD", "--episodes", "1",
                                   "--max-steps", "20", "--ledger", str(workdir / "ledger.jsonl"))
    finally:
        sys.modules.pop("odd_tasks", None)
    assert code == 0, stderr
    assert "\x1b" not in stdout and "\x07" not in stdout
    assert "Mine[v2]" in stdout and "protocol [bold]std" in stdout


def test_eval_of_a_policy_folder_leaves_out_what_heurist_wrote_there_from_its_first_read(workdir, monkeypatch, capsys):
    """`heurist eval .` from inside a policy folder: the clips of earlier evaluations are heurist's, not the
    policy's. The evaluator left them out, and the command line's own first read did not, refusing the folder."""
    folder = workdir / "mine"
    folder.mkdir()
    shutil.copy(CARTPOLE, folder / "policy.py")
    clips = folder / "heurist-clips" / "old"
    clips.mkdir(parents=True)
    for i in range(1001):
        (clips / f"seed{i}.png").write_bytes(b"x")
    monkeypatch.chdir(folder)
    code, stdout, stderr = cli(monkeypatch, capsys, "eval", ".", "--env", "CartPole-v1", "--episodes", "1",
                               "--max-steps", "20", "--ledger", str(workdir / "ledger.jsonl"))
    assert code == 0 and "holds more than 1000 files" not in stderr, stderr


def test_a_name_with_terminal_escapes_is_shown_not_obeyed(workdir, monkeypatch, capsys):
    """A run id or a file name is the user's text, not heurist's: its escapes (one that clears the screen, one that
    colours what follows) are printed as visible escapes, as error lines print them; they reached the terminal raw."""
    code, stdout, stderr = cli(monkeypatch, capsys, "memory", "forget", "--run", "x\x1b[31mRED")
    assert code == 0 and "\x1b" not in stdout + stderr and "run x\\x1b[31mRED" in stdout, stdout + stderr
    code, stdout, stderr = cli(monkeypatch, capsys, "memory", "export", "exp\x1b[2Jout.jsonl")
    assert code == 0 and "\x1b" not in stdout + stderr and "exp\\x1b[2Jout.jsonl" in stdout, stdout + stderr


def test_a_file_in_heurist_homes_place_is_named(workdir, monkeypatch, capsys):
    """Every command blamed a --ledger or --run-dir the user never gave, and `heurist runs` listed no runs."""
    (workdir / "homefile").write_text("not a folder")
    monkeypatch.setenv("HEURIST_HOME", str(workdir / "homefile"))
    for args in (["runs"], ["eval", CARTPOLE, "--env", "CartPole-v1", "--episodes", "1"],
                 ["run", "--env", "CartPole-v1"]):
        code, _, stderr = cli(monkeypatch, capsys, *args)
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert f"HEURIST_HOME={workdir / 'homefile'} is not a folder" in stderr, stderr


def test_damaged_lines_of_the_runs_index_are_said(workdir, monkeypatch, capsys):
    """As `show` says of a run's ledger: `heurist runs` skipped them without a word, so a run vanished from the list."""
    (workdir / "home").mkdir()
    (workdir / "home" / "runs.jsonl").write_text('{"run_id": "r", "torn\n')
    code, _, stderr = cli(monkeypatch, capsys, "runs")
    assert code == 0 and "warning: 1 unreadable line(s) in" in stderr and "runs.jsonl skipped" in stderr, stderr


def test_a_ledger_whose_first_record_a_crash_tore_is_still_a_ledger(workdir, monkeypatch, capsys):
    """A power cut can leave the first record torn or zeroed; appends go on after it, and it stays a ledger
    (`--ledger` refuses only a file none of whose first lines is a record)."""
    from common.ledger import Ledger, check_ledger_file

    for head in (b'{"time":"2026-12-01T00:00:00Z","ev', b"\0" * 20 + b"\n", b'{"ti'):
        ledger = workdir / "torn.jsonl"
        ledger.write_bytes(head)
        Ledger(ledger).append({"time": "t", "event": "eval_started"})
        check_ledger_file(ledger)


def test_a_memory_folder_given_with_a_tilde_is_the_home_folders(workdir, monkeypatch, capsys):
    """`--memory=~/store` reaches heurist with its tilde (the shell expands none after `=`): the store is the home
    folder's, for reading as for the import that made it."""
    monkeypatch.setenv("HOME", str(workdir))
    (workdir / "empty.jsonl").write_text("")
    code, _, stderr = cli(monkeypatch, capsys, "memory", "import", "empty.jsonl", "--memory=~/store")
    assert code == 0 and (workdir / "store").is_dir(), stderr
    code, stdout, stderr = cli(monkeypatch, capsys, "memory", "stats", "--memory=~/store")
    assert code == 0 and "no memory store" not in stderr, stderr
