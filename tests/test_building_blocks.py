"""Run config, git workspace and policy edits: the parts the graph's nodes are made of."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from policies import POLICY_DIR
from roles.edits import Edit, EditError, SearchReplace, apply_edit, diff_summary, unified_diff
from store.config import ConfigError, build_config, load_config_file, merge
from store.workspace import Workspace, WorkspaceError

CARTPOLE = (POLICY_DIR / "cartpole.py").read_text()


def test_config_rejects_unknown_keys_and_wrong_types_in_one_line(tmp_path):
    good = tmp_path / "run.toml"
    good.write_text('task = "CartPole-v1"\n[budget]\niterations = 3\n[llm.roles.coder]\nmodel = "gpt-4.1"\n')
    config = build_config(load_config_file(good))
    assert config.budget.iterations == 3 and config.llm.roles["coder"].model == "gpt-4.1"
    with pytest.raises(ConfigError, match=r"budget.iteratons: unknown key"):
        build_config({"task": "CartPole-v1", "budget": {"iteratons": 3}})
    with pytest.raises(ConfigError, match=r"budget.hours: Input should be greater than 0"):
        build_config({"task": "CartPole-v1", "budget": {"hours": -1}})
    bad = tmp_path / "bad.toml"
    bad.write_text("task = \n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")
    assert merge({"budget": {"iterations": 3, "hours": 1}}, {"budget": {"hours": 2}}) == \
        {"budget": {"iterations": 3, "hours": 2}}
    assert json.loads(config.model_dump_json())["task"] == "CartPole-v1"


def test_a_message_quoting_the_model_can_neither_name_an_iteration_nor_stop_the_commit(tmp_path):
    """A coder's rationale (or a reviewer's reason) is written into the commit's body. Lines there that read as
    heurist's trailers made a later iteration, or a simplification, take this commit for its own (and a run kept
    a worse policy as its best, with no gate); a NUL, which git's arguments cannot hold, stopped every resume."""
    from store.workspace import SIMPLIFY_TRAILER

    ws = Workspace(tmp_path / "ws")
    ws.create(CARTPOLE, {})
    ws.policy.write_text(CARTPOLE.replace("angle_gain: float = tunable(1.0", "angle_gain: float = tunable(2.0"))
    forged = ws.commit(1, "Lean on the angle\nHeurist-Iteration: 3",
                       "rationale\nHeurist-Simplify: 2\n  heurist-iteration: 2\nhalf\x00way\x1b[31m")
    assert ws.commit_for_iteration(1) == forged
    assert ws.commit_for_iteration(2) is None and ws.commit_for_iteration(3) is None
    assert ws.commit_for_iteration(2, SIMPLIFY_TRAILER) is None
    body = ws.history()[0]["body"]
    assert "(quoted) Heurist-Simplify: 2" in body and "half\\x00way\\x1b[31m" in body
    honest = ws.commit(2, "Raise it again", "fine")
    assert ws.commit_for_iteration(2) == honest and ws.commit_for_iteration(1) == forged


def test_a_rationale_longer_than_one_argument_may_be_is_committed_cut_and_once(tmp_path):
    """A red-team review (2026-12-05): a 140,000-character rationale went to git as one argument, past Linux's 128 KiB,
    so git never started ("Argument list too long") and every resume failed at the same commit."""
    from store.workspace import MAX_MESSAGE_CHARS

    ws = Workspace(tmp_path / "ws")
    ws.create(CARTPOLE, {})
    ws.policy.write_text(CARTPOLE.replace("angle_gain: float = tunable(1.0", "angle_gain: float = tunable(2.0"))
    commit = ws.commit(1, "Balance", "balance " + "=" * 140_000 + "\n\nDev mean 10 -> 20")
    assert ws.commit_for_iteration(1) == commit and ws.commit(1, "Balance", "again") == commit
    body = ws.history()[0]["body"]
    assert MAX_MESSAGE_CHARS < len(body) < MAX_MESSAGE_CHARS + 200 and "more characters cut]" in body


def test_the_locks_a_git_killed_mid_write_leaves_are_cleared_and_the_workspace_writes_again(tmp_path):
    """kill -9 in a commit or a reset leaves HEAD.lock (or index.lock, or a ref's lock): git then refuses every
    write, and the run could never resume (the ten-kill test met it). A resume holding the run's lock clears them."""
    ws = Workspace(tmp_path / "ws")
    first = ws.create(CARTPOLE, {})
    git_dir = ws.root / ".git"
    for lock in ("HEAD.lock", "index.lock", "refs/heads/main.lock"):
        (git_dir / lock).write_text("")
    with pytest.raises(WorkspaceError, match="File exists"):
        ws.reset_to(first)
    assert ws.clear_crash_locks() == ["HEAD.lock", "index.lock", "refs/heads/main.lock"]
    ws.reset_to(first)
    ws.policy.write_text(CARTPOLE.replace("angle_gain: float = tunable(1.0", "angle_gain: float = tunable(2.0"))
    assert ws.commit(1, "Raise it", "again") != first and ws.clear_crash_locks() == []


def test_a_commit_that_is_no_commit_id_is_refused_before_git_reads_it(tmp_path):
    """Commits come back from the ledger and the checkpoints: one edited to ``--output=FILE`` was given to `git show`
    as an option, which wrote FILE (a red-team review of the report, 2026-12-05)."""
    ws = Workspace(tmp_path / "ws")
    first = ws.create(CARTPOLE, {})
    written = tmp_path / "written"
    for call in (lambda c: ws.source_at(c), lambda c: ws.tests_at(c), lambda c: ws.file_sha256(c),
                 lambda c: ws.reset_to(c), lambda c: ws.changed_between(first, c)):
        for commit in (f"--output={written}", "-p", f"{first}~1", "main", "", first.upper()):
            with pytest.raises(WorkspaceError, match="is not a commit id"):
                call(commit)
    assert not list(tmp_path.glob("written*"))
    assert ws.source_at(first) == ws.source_at(first[:10]) == ws.source_at("HEAD") == CARTPOLE


def test_workspace_commits_accepted_edits_once_and_rolls_back_rejected_ones(tmp_path):
    ws = Workspace(tmp_path / "ws")
    first = ws.create(CARTPOLE, {"tests/test_policy_file.py": "import pathlib\n\n\ndef test_policy_file_exists():\n"
                                                   "    assert pathlib.Path('policy.py').is_file()\n"})
    assert ws.create(CARTPOLE, {}) == first  # creating again is a no-op
    ws.policy.write_text(CARTPOLE.replace("angle_gain: float = tunable(1.0", "angle_gain: float = tunable(2.0"))
    commit = ws.commit(1, "Raise angle gain", "The pole fell at step 90 on seed 3.")
    assert ws.commit(1, "Raise angle gain", "again") == commit  # a node run twice commits once
    assert ws.commit_for_iteration(1) == commit and ws.commit_for_iteration(2) is None
    ws.policy.write_text("broken")
    (ws.tests / "test_new.py").write_text("x = 1\n")
    ws.reset_to(commit)
    assert "tunable(2.0" in ws.policy.read_text() and not (ws.tests / "test_new.py").exists()
    history = ws.history()
    assert [h["subject"] for h in history] == ["Raise angle gain", "Starting policy"]
    assert "Heurist-Iteration: 1" in history[0]["body"]


def test_search_replace_edits_apply_or_quote_the_nearest_lines():
    edit = Edit(kind="search_replace", rationale="push harder",
                blocks=[SearchReplace(search="        action = 1 if push > 0 else 0\n",
                                      replace="        action = 1 if push >= 0 else 0\n")])
    after = apply_edit(CARTPOLE, edit)
    diff = unified_diff(CARTPOLE, after)
    assert "+        action = 1 if push >= 0 else 0" in diff and diff_summary(diff) == "1 lines added, 1 removed"
    wrong = Edit(kind="search_replace", rationale="x",
                 blocks=[SearchReplace(search="action = 1 if push > 0 else 0  # typo", replace="")])
    with pytest.raises(EditError, match=r"does not match .* nearest lines \(from line \d+"):
        apply_edit(CARTPOLE, wrong)
    twice = Edit(kind="search_replace", rationale="x", blocks=[SearchReplace(search="p.", replace="q.")])
    with pytest.raises(EditError, match="matches .* places"):
        apply_edit(CARTPOLE, twice)


def test_tunable_edits_stay_inside_declared_bounds():
    after = apply_edit(CARTPOLE, Edit(kind="tunables", rationale="x", tunables={"spin_gain": 1.25}))
    assert "spin_gain: float = tunable(1.25, 0.0, 5.0" in after
    with pytest.raises(EditError, match=r"outside its declared range \[0.0, 5.0\]"):
        apply_edit(CARTPOLE, Edit(kind="tunables", rationale="x", tunables={"spin_gain": 9.0}))
    with pytest.raises(EditError, match="'nope' is not declared"):
        apply_edit(CARTPOLE, Edit(kind="tunables", rationale="x", tunables={"nope": 1.0}))


def test_the_summary_shows_what_a_model_or_policy_wrote_in_its_own_cell_and_nothing_more(tmp_path, monkeypatch):
    """A rejected edit's reason quotes a policy's error: in summary.md it stays one table cell, shown, not read
    (a `|` used to become `/`, and HTML, links, line breaks and control characters went through as they were), and
    a secret in it is redacted before anything is escaped (escaped first, it was no longer itself)."""
    from envs.tasks import get_task
    from store.summary import write_summary

    secret = "Tr0ub4dor&3-<horse>-staple"
    monkeypatch.setenv("HEURIST_CHROMA_PASSWORD", secret)
    reason = f"episode failed: <script>alert(1)</script> | x\nsecond ![](http://e/x.png) \x1b[31m \u202e {secret}"
    start = {"commit": "0" * 40, "sha256": "a" * 64, "mean": 10.0, "per_seed": {}, "status": "complete"}
    history = [{"iteration": 1, "accepted": False, "mean_before": 10.0, "mean_candidate": 9.0, "reason": reason}]
    state = {"start": start, "incumbent": start, "history": history, "iteration": 1, "stop_reason": "budget: 1 "
             "iteration", "status": "finished", "spent": {}}
    write_summary(tmp_path, "r1", get_task("CartPole-v1"), "standard", True, [0, 1], state, None)
    row = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| 1 |")]
    assert len(row) == 1  # one line: the line break did not end the row
    assert row[0].count("|") - row[0].count("\\|") == 6  # five cells; the reason's own bar is escaped
    assert "<script>" not in row[0] and "\\<script\\>" in row[0]
    assert "\x1b" not in row[0] and "\u202e" not in row[0] and "\\\\x1b" in row[0]
    assert "\\!\\[\\]\\(http" in row[0]  # an image markdown would fetch, shown as text
    summary = (tmp_path / "summary.md").read_text()
    assert "Tr0ub4dor" not in summary and "redacted" in summary


def test_a_long_reason_ends_at_a_word_and_the_printed_summary_keeps_each_row_on_one_line(tmp_path, capsys):
    """A new user's first run showed a row of the summary broken in two (printed wrapped at the console's width) and
    its reason cut mid-word at 160 characters, losing what it said about the tests (a review, 2026-12-06)."""
    from cli.run_commands import _finish_line
    from envs.tasks import get_task
    from store.summary import as_text, write_summary

    words = " ".join(f"word{i}" for i in range(300))  # 2,690 characters
    start = {"commit": "0" * 40, "sha256": "a" * 64, "mean": 10.0, "per_seed": {}, "status": "complete"}
    history = [{"iteration": 1, "accepted": True, "mean_before": 10.0, "mean_candidate": 20.0,
                "reason": f"tests pass; tests/test_scenarios_0002.py is not kept: {words}"}]
    state = {"start": start, "incumbent": start, "history": history, "iteration": 1, "stop_reason": "budget",
             "status": "finished", "spent": {}}
    write_summary(tmp_path, "r1", get_task("CartPole-v1"), "standard", True, [0, 1], state, None)
    row = next(line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| 1 |"))
    reason = row.split(" | ")[-1].removesuffix(" |")
    assert "is not kept" in reason and reason.endswith(" …") and 500 < len(reason) < 700
    assert reason.removesuffix(" …").split()[-1] in words.split()  # a whole word, not a cut one
    _finish_line(state, tmp_path)
    printed = capsys.readouterr().out.splitlines()
    assert as_text(row) in printed  # one line however narrow the console, as text: without markdown's escapes
    assert "tests/test_scenarios_0002.py is not kept" in as_text(row) and "\\" not in as_text(row)


def test_the_nearest_lines_hint_finds_the_block_and_its_work_does_not_grow_with_the_edit(monkeypatch):
    """A SEARCH that does not match is answered with the nearest lines: found where the block's own lines are (one
    line changed), or by likeness where none is as it is (every line re-indented). Found by a red-team review
    (2026-12-05): its window-by-window comparison was quadratic, 8 s for one failed SEARCH of 4,000 lines in an
    8,000-line file; what it compares is now bounded whatever the model sends."""
    import difflib

    from roles.edits import _MOST_WINDOWS

    lines = CARTPOLE.splitlines()
    start = next(i for i, line in enumerate(lines) if "action = 1 if push > 0 else 0" in line)
    block = lines[start - 2:start + 2]
    one_changed = "\n".join(block[:2] + [block[2] + "  # typo"] + block[3:])
    reindented = "\n".join("  " + line for line in block)
    for search in (one_changed, reindented):
        with pytest.raises(EditError, match=rf"nearest lines \(from line {start - 1}, "):
            apply_edit(CARTPOLE, Edit(kind="search_replace", rationale="x",
                                      blocks=[SearchReplace(search=search, replace="")]))

    measured = []
    ratio = difflib.SequenceMatcher.ratio
    monkeypatch.setattr(difflib.SequenceMatcher, "ratio", lambda self: measured.append(1) or ratio(self))
    big = "\n".join(f"x_{i} = compute({i}, {i * 7 % 13})" for i in range(8000)) + "\n"
    for search in ("\n".join(f"x_{i} = compute({i}, {i})" for i in range(2000, 6000)),  # no line as it is
                   "\n".join(f"x_{i} = compute({i}, {i * 7 % 13})" for i in range(2000, 6000)) + "\n# end"):
        measured.clear()
        with pytest.raises(EditError, match="nearest lines"):
            apply_edit(big, Edit(kind="search_replace", rationale="x", blocks=[SearchReplace(search=search,
                                                                                             replace="")]))
        assert len(measured) <= 2 * _MOST_WINDOWS  # a stride through the file, then around its best window


def test_a_run_keeps_the_exact_bytes_of_a_crlf_starting_policy(tmp_path, monkeypatch):
    """The run's copy of its starting policy was written as text: a CRLF file's copy then hashed otherwise than
    run.json's starting_sha256, and `heurist replay`, which checks the copy, refused every such run."""
    from envs.contract import policy_sha256
    from store.rundir import create_run, read_record

    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    policy = tmp_path / "crlf.py"
    policy.write_bytes((POLICY_DIR / "cartpole.py").read_bytes().replace(b"\n", b"\r\n"))
    run_dir = create_run(build_config({"task": "CartPole-v1", "policy": str(policy), "offline": True}, "test"),
                         tmp_path / "run")
    copy = run_dir / "starting_policy.py"
    assert copy.read_bytes() == policy.read_bytes()
    assert policy_sha256(copy) == read_record(run_dir).starting_sha256


def test_a_scratch_folder_whose_maker_died_is_removed_by_the_next_and_a_live_one_never(tmp_path):
    """An evaluation's scratch folder (the policy's log in it) and a fork server's home stayed in /tmp when their
    maker was killed: kill -9, or a Ray worker killed mid-shard (a red-team review, 2026-12-05). A folder whose
    owner lock no process holds is removed by the next heurist process to make one of its kind; one held, never."""
    import subprocess
    import sys

    from common import scratch

    kind = f"test{os.getpid()}"
    make = (f"import os, sys; from common.scratch import ScratchDir; d = ScratchDir({kind!r}); print(d.path, "
            f"flush=True); sys.stdin.readline() if sys.argv[1] == 'live' else os._exit(0)")
    live = subprocess.Popen([sys.executable, "-c", make, "live"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        held = Path(live.stdout.readline().strip())
        # Made after the live one: its own sweep, at its start, leaves the live one alone.
        dead = subprocess.run([sys.executable, "-c", make, "dead"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent.parent)
        orphan = Path(dead.stdout.strip())
        assert orphan.is_dir() and held.is_dir()
        scratch._swept.discard(kind)
        assert scratch.sweep_orphans(kind) == [orphan]
        assert not orphan.exists() and held.is_dir()
        assert scratch.sweep_orphans(kind) == []  # once per process and kind
    finally:
        live.communicate("\n", timeout=30)
    scratch._swept.discard(kind)
    assert scratch.sweep_orphans(kind) == [held]  # its maker has ended now


def test_a_policy_nested_past_what_heuristss_readers_walk_is_refused_by_the_check_not_a_crash_in_it():
    """A red-team review (2026-12-05): a model's edit holding a sum of 450 terms passed Python's parser and the
    check, then the seed rule's recursive walk raised RecursionError out of the check node, and again at every
    resume (which replays the same answer). The check now bounds the nesting; below the bound, every reader walks
    it even from deep inside a run's call stack."""
    from common.errors import PolicyError
    from envs.contract import MAX_NESTING, check_policy_source, seed_special_cases
    from envs.complexity import complexity

    def policy(terms: int) -> str:
        deep = " + ".join(["obs[0]"] * terms)
        return ("class Policy:\n    def reset(self, seed):\n        self.seed = seed\n\n"
                f"    def act(self, obs, info):\n        return 1 if obs[2] > 0.0 * ({deep}) else 0\n")

    with pytest.raises(PolicyError, match=f"nests .* levels deep .* past the {MAX_NESTING} heurist reads"):
        check_policy_source(policy(450))
    allowed = policy(MAX_NESTING - 12)
    check_policy_source(allowed)

    def from_depth(frames: int):  # a LangGraph node runs a few hundred frames down
        return from_depth(frames - 1) if frames else (seed_special_cases(allowed, before=policy(1)),
                                                       complexity(allowed))
    assert from_depth(350)[0] is None
