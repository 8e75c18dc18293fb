"""The installed `heurist` command: JSON output, tables, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from policies import POLICY_DIR
from tests.warm_cli import HEURIST, run_heurist


def heurist(*args, cwd=None, env_extra=None):
    return run_heurist(list(args), {**os.environ, **(env_extra or {})}, cwd)


def assert_one_line_error(proc, *words):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_eval_json_has_the_promised_keys(tmp_path):
    proc = heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--episodes", "3", "--json",
                   "--ledger", str(tmp_path / "l.jsonl"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("mean", "std", "median", "min", "max", "episodes", "env_steps", "wall_s", "failures"):
        assert key in data
    assert data["episodes"] == 3 and data["mean"] == 500.0 and data["env_steps"] == 1500
    lines = (tmp_path / "l.jsonl").read_text().splitlines()
    assert [json.loads(l)["event"] for l in lines] == ["eval_started", "eval_finished"]


def test_eval_table_names_task_protocol_split_and_target(tmp_path):
    proc = heurist("eval", str(POLICY_DIR / "mountaincar.py"), "--env", "MountainCar-v0", "--episodes", "4",
                   "--ledger", str(tmp_path / "l.jsonl"))
    assert proc.returncode == 0, proc.stderr
    for words in ("MountainCar-v0", "protocol standard", "split dev", "seeds 0..3", "target", "env steps"):
        assert words in proc.stdout


def test_default_ledger_lives_under_heurist_home(tmp_path):
    proc = heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--episodes", "1", "--json",
                   env_extra={"HEURIST_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "home" / "ledger.jsonl").is_file()


def test_unknown_task(tmp_path):
    assert_one_line_error(heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPol-v1"),
                          "unknown task 'CartPol-v1'", "did you mean")


def test_missing_policy_file(tmp_path):
    assert_one_line_error(heurist("eval", str(tmp_path / "missing.py"), "--env", "CartPole-v1"), "does not exist")


def test_syntax_error_policy(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("class Policy:\n    def act(self, obs, info)\n        return 0\n")
    assert_one_line_error(heurist("eval", str(bad), "--env", "CartPole-v1"), "syntax error at line 2")


def test_a_python_file_that_is_not_a_policy(tmp_path):
    other = tmp_path / "script.py"
    other.write_text("print('hello')\n")
    assert_one_line_error(heurist("eval", str(other), "--env", "CartPole-v1"), "no top-level class Policy")


def test_policy_that_does_not_load_exits_non_zero_with_the_reason(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("class Policy:\n    def __init__(self):\n        raise RuntimeError('missing weights')\n"
                      "    def reset(self, seed):\n        pass\n    def act(self, obs, info):\n        return 0\n")
    proc = heurist("eval", str(broken), "--env", "CartPole-v1", "--episodes", "2", "--json",
                   "--ledger", str(tmp_path / "l.jsonl"))
    assert_one_line_error(proc, "did not run on CartPole-v1", "RuntimeError: missing weights")
    assert json.loads(proc.stdout)["status"] == "broken"  # and it was recorded as broken
    assert json.loads((tmp_path / "l.jsonl").read_text().splitlines()[-1])["status"] == "broken"


def test_protected_split_needs_the_flag(tmp_path):
    assert_one_line_error(heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--split", "holdout",
                                  "--ledger", str(tmp_path / "l.jsonl")), "--confirm-protected")
    assert_one_line_error(heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--split", "train"),
                          "unknown split 'train'")


def test_unwritable_ledger(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions; use a path under a regular file instead
        target = tmp_path / "file"
        target.write_text("")
        ledger = target / "l.jsonl"
    else:
        ledger = ro / "l.jsonl"
    assert_one_line_error(heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1",
                                  "--ledger", str(ledger)), "cannot write the ledger")


def test_debug_shows_the_traceback(tmp_path):
    proc = heurist("--debug", "eval", str(tmp_path / "missing.py"), "--env", "CartPole-v1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_any_seeds_are_a_custom_split_counted_as_a_use_of_the_protected_split_they_touch(tmp_path):
    ledger = tmp_path / "l.jsonl"
    cut = heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--seeds", "100-102,7",
                  "--max-steps", "40", "--json", "--ledger", str(ledger))
    assert cut.returncode == 0, cut.stderr
    summary = json.loads(cut.stdout)
    assert (summary["split"], summary["seeds"], summary["max_steps"]) == ("custom", [100, 101, 102, 7], 40)
    assert summary["mean"] == 40.0 and summary["env_steps"] == 160  # every episode cut at 40 steps, and said so
    assert summary["target"] is None  # a cut episode meets no target
    touched = heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--seeds", "1000",
                      "--confirm-protected", "--ledger", str(ledger))
    assert touched.returncode == 0, touched.stderr
    holdout = heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--split", "holdout",
                      "--episodes", "1", "--confirm-protected", "--ledger", str(ledger))
    assert holdout.returncode == 0, holdout.stderr
    started = [json.loads(line) for line in ledger.read_text().splitlines() if '"eval_started"' in line]
    assert [(s["split"], s["protected_split"], s["protected_uses_before"], s["max_steps"]) for s in started] == [
        ("custom", False, 0, 40), ("custom", True, 0, None), ("holdout", True, 1, None)]
    finished = [json.loads(line) for line in ledger.read_text().splitlines() if '"eval_finished"' in line]
    assert [f["max_steps"] for f in finished] == [40, None, None]


def test_envs_lists_tasks_with_targets():
    proc = heurist("envs", "--json")
    assert proc.returncode == 0
    tasks = {t["id"]: t for t in json.loads(proc.stdout)}
    assert tasks["CartPole-v1"]["target"] == 475.0
    assert tasks["ALE/Breakout-v5"]["protocols"] == ["standard", "deterministic", "deterministic-no-fire"]
    printed = json.loads(heurist("envs", "--family", "atari", "--protocols", "--json").stdout)
    settings = {g["protocol"]: g["settings"] for g in printed}
    assert settings["deterministic"] == {"frameskip": 1, "repeat_action_probability": 0.0,
                                         "max_num_frames_per_episode": 0, "max_episode_steps": 108_000,
                                         "fire_reset": True, "noop_max": 1}
    assert all(len(g["tasks"]) == 208 for g in printed)
    assert len(tasks) == 12 + 208  # CartPoleLongPole-v1, a variant, among them
    assert tasks["CartPoleLongPole-v1"]["target"] == 475.0
    table = heurist("envs", "--family", "mujoco")
    assert "HalfCheetah-v5" in table.stdout and "CartPole" not in table.stdout
    assert_one_line_error(heurist("envs", "--family", "robots"), "no tasks in family 'robots'")


def test_video_with_a_relative_out_dir_lands_where_asked(tmp_path):
    proc = heurist("eval", str(POLICY_DIR / "cartpole.py"), "--env", "CartPole-v1", "--episodes", "2", "--video",
                   "--out", "clips", "--json", "--ledger", str(tmp_path / "l.jsonl"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    clips = json.loads(proc.stdout)["clips"]
    assert len(clips) == 2
    for clip in clips:
        path = Path(clip)
        assert path.is_absolute() and path.is_relative_to(tmp_path / "clips") and path.stat().st_size > 0
        assert path.with_suffix(".png").is_file()


def test_untrusted_error_text_is_shown_inert_and_secrets_never(tmp_path):
    """A policy's error full of Rich markup and terminal escapes ends `heurist eval` with one plain line (it once
    ended it with a MarkupError traceback); the API key in heurist's own environment appears nowhere."""
    key = "sk-canary-0123456789abcdef"
    hostile = Path(__file__).parent / "hostile" / "raises_markup.py"
    proc = heurist("eval", str(hostile), "--env", "CartPole-v1", "--episodes", "1", "--ledger",
                   str(tmp_path / "l.jsonl"), env_extra={"OPENAI_API_KEY": key})
    assert_one_line_error(proc, "did not run on CartPole-v1", "[/bold] [red]x[/red]", "\\x1b[2J", "\\u202e")
    assert "\x1b[2J" not in proc.stdout + proc.stderr and "\u202e" not in proc.stdout + proc.stderr
    for hidden in ("\u061c", "\u2028"):
        assert hidden not in proc.stdout + proc.stderr
    assert "\\n2026-12-05 06:00:00 iteration 1 accepted" in proc.stderr  # its line break written out: no line of its own
    assert "MarkupError" not in proc.stdout + proc.stderr and "[/bold]" in proc.stdout  # the table shows it too
    assert key not in proc.stdout + proc.stderr + (tmp_path / "l.jsonl").read_text()


def test_secrets_heurist_prints_are_redacted(tmp_path):
    """Second line of defence: were a secret of heurist's environment ever in a message, the console shows its name."""
    key = "sk-canary-0123456789abcdef"
    proc = heurist("eval", str(tmp_path / f"{key}.py"), "--env", "CartPole-v1", env_extra={"OPENAI_API_KEY": key})
    assert_one_line_error(proc, "does not exist", "[redacted $OPENAI_API_KEY]")
    assert key not in proc.stderr + proc.stdout


def test_a_policy_in_a_repository_whose_path_has_spaces(tmp_path):
    """Provenance reads the repository's commit whatever its path; it once crashed on a space."""
    repo = tmp_path / "my policies"
    repo.mkdir()
    shutil.copy(POLICY_DIR / "cartpole.py", repo / "policy.py")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "policy.py"], ["commit", "-qm", "policy"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    proc = heurist("eval", str(repo / "policy.py"), "--env", "CartPole-v1", "--episodes", "1", "--json",
                   "--ledger", str(tmp_path / "l.jsonl"))
    assert proc.returncode == 0, proc.stderr
    started = json.loads((tmp_path / "l.jsonl").read_text().splitlines()[0])
    assert started["git"]["commit"] and started["git"]["uncommitted_changes"] is False


def test_a_secret_streaming_past_a_window_is_never_shown_in_part(monkeypatch):
    """Found by a red-team review (2026-12-05): the live panel cut a streamed reply to its last characters before
    anything redacted it, so a key in the reply was shown in two halves (its first 38 characters, then its last
    39), neither of which redaction knew. Every window of the growing reply is now cut from the redacted whole,
    with the start of a secret still arriving held back."""
    from common.safe_text import cut

    key = "sk-proj-Zq7Xw2Lm9Vb4Nc8Rt1Yh6Gf3Dk5Sa0xyz12"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    reply = "the analyst says: the pole tips right, and here is a key " + key + " and more words after it"
    for end in range(1, len(reply) + 1):
        for window in (cut(reply[:end], 40, keep="end"), cut(reply[:end], 40)):
            assert not any(key[i:i + 8] in window for i in range(len(key) - 7)), (end, window)
    assert cut(reply, 200, keep="end").endswith("[redacted $OPENAI_API_KEY] and more words after it")


def test_a_password_written_into_a_url_is_redacted_wherever_heurist_records_it(monkeypatch, tmp_path):
    """A --base-url or --memory-url holding user:password was shown and recorded as given, and where no secret
    variable was set the ledger skipped redaction altogether. The password runs to the last "@" before the host and
    may hold an apostrophe; compact JSON holding an address and an e-mail is no URL with a password; and a long run of
    letters and dots is not rescanned from every word boundary."""
    import re

    from common.ledger import Ledger
    from common.safe_text import URL_PASSWORD, redact, redact_deep, secret_values

    for name in [n for n in os.environ if n != "PATH"]:
        monkeypatch.delenv(name, raising=False)
    assert not secret_values()
    cases = {"http://alice:hunter2@127.0.0.1:8000/v1": "http://alice:[redacted]@127.0.0.1:8000/v1",
             "http://heurist:don't-tell@memory.example:8000/": "http://heurist:[redacted]@memory.example:8000/",
             "see http://u:p@ss@host/x.": "see http://u:[redacted]@host/x.",
             '{"a":"http://h:8000","x":"ops@example.com"}': '{"a":"http://h:8000","x":"ops@example.com"}',
             "git@github.com:x/y and ssh://git@host:22/r": "git@github.com:x/y and ssh://git@host:22/r"}
    for given, shown in cases.items():
        assert redact(given) == shown
    assert redact_deep({"url": ["http://a:b3c@h/"]}) == {"url": ["http://a:[redacted]@h/"]}
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append({"event": "x", "memory_url": "http://ops:s3cret@chroma:8000"})
    assert "s3cret" not in ledger.path.read_text()
    # The scheme is bounded, so a long run of letters and dots is scanned once: 0.01 s for 80,000 characters, where
    # an unbounded scheme took 8.7 s (timed apart, not here: a timing is no test's verdict).
    assert re.search(r"\]\{0,31\}://", URL_PASSWORD.pattern)
    assert redact("a." * 40_000 + " user@example.com").endswith(" user@example.com")


def test_json_is_the_only_thing_on_stdout_whatever_a_library_prints_there(tmp_path):
    """A red-team review (2026-12-05): Ray's driver printed a lost node's raylet messages on stdout, before and after
    the one JSON object `--json` promises. Here a task plug-in prints on stdout as it loads, through Python and
    straight to the descriptor, as a library may."""
    (tmp_path / "noisy_tasks.py").write_text(
        "import os\nfrom envs.tasks import FailureRules, TaskSpec\n"
        "print('noise through print')\nos.write(1, b'noise straight to the descriptor\\n')\n"
        "MINE = lambda: TaskSpec(id='Noisy-v0', gym_id='CartPole-v1', family='custom', description='noisy',\n"
        "                        failure_rules=FailureRules(termination='failure'))\n")
    done = subprocess.run([HEURIST, "eval", str(POLICY_DIR / "cartpole.py"), "--env",
                           "noisy_tasks:MINE", "--episodes", "1", "--json", "--ledger", str(tmp_path / "l.jsonl")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parent.parent}"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["task"] == "Noisy-v0", done.stdout
    assert "noise through print" in done.stderr and "noise straight to the descriptor" in done.stderr
    # With no stderr at all (`2>&-`), the JSON still comes, and the noise goes nowhere.
    done = subprocess.run([HEURIST, "eval", str(POLICY_DIR / "cartpole.py"), "--env", "noisy_tasks:MINE", "--episodes",
                           "1", "--json", "--ledger", str(tmp_path / "l.jsonl")], stdout=subprocess.PIPE, text=True,
                          timeout=300, cwd=tmp_path, preexec_fn=lambda: os.close(2),
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parent.parent}"})
    assert json.loads(done.stdout)["task"] == "Noisy-v0", done.stdout
