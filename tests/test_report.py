"""The live view and the report: a recorded run rendered and opened in Debian's headless Chromium.

The page is checked from its DOM (plots, playable clips, highlighted diffs, transcripts with
the images sent to the model, tests, policy, git history, memory) and every request the
browser makes is recorded: none may leave the machine, and from a moved copy of the report
folder none may leave that folder. A full-page screenshot is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from functools import partial
from pathlib import Path

import pytest

from common.safe_text import environ_without_secrets
from envs.forkserver import ENV_PROCESSES, ForkServer, start_process
from envs.gitsafe import run_git
from report.render import ReportError, write_report
from runner.report_child import REPORT_PROCESSES, rebuild
from store.transcripts import LLMCall, TranscriptRecorder
from tests.conftest import ARTIFACTS, once_per_session
from tests.offline_runs import heurist
from tests.scripted_runs import BALANCES
from tests.test_cli import HEURIST
from tests.test_forkserver import fresh_shared_servers

CHROMIUM = shutil.which("chromium")
WAIT_FOR_VIDEOS = """async () => {
    const videos = [...document.querySelectorAll('video')];
    await Promise.all(videos.map(v => v.readyState >= 1 ? null : new Promise((ok, fail) => {
        v.addEventListener('loadedmetadata', ok, {once: true});
        v.addEventListener('error', () => fail(new Error('cannot play ' + v.src)), {once: true});
        v.load();
    })));
    return videos.map(v => ({src: v.currentSrc, duration: v.duration, width: v.videoWidth}));
}"""


class Browser:
    """Headless Chromium with a fresh profile; every request is recorded, and any that is not a local file fails."""

    def __init__(self, profile: Path):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.context = self._playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, viewport={"width": 1200, "height": 900},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        self.requests: list[str] = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                           else route.abort())

    def open(self, path: Path):
        page = self.context.new_page()
        page.goto(path.as_uri())
        return page

    def close(self) -> None:
        self.context.close()
        self._playwright.stop()


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed and could not be (scripts/bootstrap installs it with apt-get)")
    opened = Browser(tmp_path / "chromium-profile")
    yield opened
    opened.close()


def test_the_run_rewrote_its_report_at_every_iteration_and_at_the_end(llm_run):
    reports = [fields["path"] for kind, fields in llm_run.events if kind == "report"]
    assert len(reports) == 3  # after iterations 1 and 2, and when it finished
    assert not [fields for kind, fields in llm_run.events if kind == "warning"]
    assert Path(reports[-1]) == llm_run.run_dir / "report" / "index.html"
    stages = [fields["node"] for kind, fields in llm_run.events if kind == "stage"]
    assert stages[:2] == ["begin", "evaluate"] and stages.count("remember") == 2 and stages[-1] == "finish"


def test_report_in_headless_chromium_shows_plots_clips_diffs_and_transcripts(llm_run, browser, tmp_path):
    env = llm_run.env(dict(os.environ))
    done = heurist(env, "report", llm_run.run_dir)
    assert done.returncode == 0, done.stderr
    index = llm_run.run_dir / "report" / "index.html"
    assert done.stdout.strip() == f"report: {index}"

    # Open a moved copy of the folder: it must need nothing outside itself.
    moved = tmp_path / "moved-report"
    shutil.copytree(index.parent, moved)
    page = browser.open(moved / "index.html")
    dom = page.locator

    assert "finished" in dom("#run-status").inner_text()
    assert "cumulative env steps" in dom("#score-plot svg").text_content()
    assert "target 475" in dom("#score-plot svg").text_content()
    assert "cumulative LLM cost (USD)" in dom("#cost-plot svg").text_content()  # a model run: score against cost
    assert "pole_fell" in dom("#failure-plot svg").text_content()
    # Complexity beside the score: the three measures, and the last point is the final policy's.
    from envs.complexity import complexity

    assert all(label in dom("#complexity-plot svg").text_content() for label in ("lines of code", "branches", "AST nodes"))
    final = complexity((llm_run.run_dir / "best_policy.py").read_text())
    caption = " ".join(dom("#complexity-plot figcaption").inner_text().split())
    assert f"Last: {final.lines} lines, {final.branches} branches, {final.ast_nodes} AST nodes" in caption

    first, second = dom("#iteration-1"), dom("#iteration-2")
    assert "accepted" in first.get_attribute("class") and "rejected" in second.get_attribute("class")
    # The diff is highlighted: Pygments marks inserted and deleted lines.
    assert any(BALANCES.strip() in line for line in first.locator(".diff .gi").all_inner_texts())
    assert first.locator(".diff .gd").count() >= 1
    assert "regression tests failed" in second.locator(".verdict").inner_text()
    assert "tests/test_iteration_0001.py" in first.locator(".tests").inner_text()
    assert "written but not added" in second.locator(".tests").inner_text()

    # Every failure clip plays in the page, and its contact sheet is shown.
    videos = page.evaluate(WAIT_FOR_VIDEOS)
    assert len(videos) >= 2 and all(v["duration"] > 0 and v["width"] > 0 for v in videos), videos
    assert first.locator("video").count() >= 1
    sheets = page.evaluate("() => [...document.querySelectorAll('img.contact-sheet')].map(i => i.naturalWidth)")
    assert sheets and all(width > 0 for width in sheets)

    # Per-role transcripts, collapsed until opened: messages, the images the model saw, replies, parsed output.
    roles = first.locator("details.transcript").evaluate_all("ds => ds.map(d => d.dataset.role)")
    assert {"video_analyst", "log_parser", "recall", "coder", "test_writer", "reviewer"} <= set(roles)
    assert not first.locator("details.transcript[data-role=coder]").evaluate("d => d.open")
    coder = first.locator("details.transcript[data-role=coder]")
    coder.locator("summary").first.click()
    assert "model calls" in coder.locator("summary").first.inner_text()
    assert "prompt 1,000 tokens" in coder.locator("summary").first.inner_text()  # each role's prompt size
    assert "reply did not match the schema" in coder.inner_text()
    assert "You are the coder" in coder.locator(".message pre").first.text_content()
    analyst = first.locator("details.transcript[data-role=video_analyst]")
    assert "RateLimitError" in analyst.text_content() or "429" in analyst.text_content()
    seen = analyst.locator(".message img").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert seen and all(seen)

    assert BALANCES.strip() in dom("#policy").inner_text()
    assert dom("#git-history tr").count() == 3  # header, the start, iteration 1
    assert dom("#memory-added tr").count() > 1

    page.set_viewport_size({"width": 1200, "height": 900})
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    outside = [url for url in browser.requests if not url.startswith(moved.as_uri())]
    assert browser.requests and not outside, outside


def _in_terminal(args: list[str], env: dict, timeout: float = 180) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdin, stdout and stderr, as a person at a terminal would."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="session")
def terminal_run(llm_run, tmp_path_factory):
    """An offline run of one iteration, watched in a terminal: the live panel. Made once per session, for the
    tests on every xdist worker that read it."""
    return once_per_session(tmp_path_factory, "terminal-run", partial(_watch_a_run, llm_run))


def _watch_a_run(llm_run, tmp: Path):
    (tmp / "run.toml").write_text("[eval]\nepisodes = 6\nholdout = false\n[search]\npopulation = 4\n"
                                  "generations = 1\nseed = 3\n[budget]\nstop_when = \"never\"\n")
    # A home of its own: the recorded run's memory is read by tests on other xdist workers meanwhile.
    env = {**llm_run.env(dict(os.environ)), "TERM": "xterm-256color", "HEURIST_HOME": str(tmp / "home")}
    env.pop("NO_COLOR", None)
    code, output = _in_terminal([HEURIST, "run", "--env", "CartPole-v1", "--policy", str(llm_run.policy),
                                 "--config", str(tmp / "run.toml"), "--iterations", "1", "--run-dir",
                                 str(tmp / "run")], env)
    return code, output, tmp / "run", env


def test_a_terminal_gets_the_live_panel(terminal_run):
    code, output, run_dir, _ = terminal_run
    assert code == 0, output[-3000:]
    assert "heurist · CartPole-v1 · offline roles" in output  # the panel's title
    for row in ("iteration", "now", "dev mean", "spent", "last verdict"):
        assert row in output
    assert "iteration 1 accepted" in output or "iteration 1 rejected" in output
    assert "env steps" in output and "tokens" in output and "min" in output
    assert "\x1b[" in output  # redrawn in place, not printed line after line
    assert f"report: {run_dir / 'report' / 'index.html'}" in output, repr(output[-1500:])


def test_no_progress_in_a_terminal_gives_quiet_log_lines(llm_run, terminal_run, tmp_path):
    _, _, _, env = terminal_run
    config = tmp_path / "fast.toml"
    config.write_text("[eval]\nepisodes = 4\nholdout = false\nvideo = false\n[search]\npopulation = 2\n"
                      "generations = 1\nseed = 1\n[budget]\nstop_when = \"never\"\n")
    code, output = _in_terminal([HEURIST, "run", "--env", "CartPole-v1", "--policy", str(llm_run.policy),
                                 "--iterations", "1", "--config", str(config), "--run-dir", str(tmp_path / "run"),
                                 "--no-progress"], env)
    assert code == 0, output[-3000:]
    assert "heurist · CartPole-v1" not in output and "last verdict" not in output
    lines = [line for line in output.splitlines() if " iteration 1 " in line]
    assert len(lines) == 1 and ("accepted: dev" in lines[0] or "rejected: dev" in lines[0])
    assert "env steps" in lines[0]


def test_compare_puts_several_runs_on_one_plot(llm_run, terminal_run, browser, tmp_path):
    _, _, offline_run, env = terminal_run
    page_file = tmp_path / "compare.html"
    done = heurist(env, "report", "--compare", llm_run.run_dir, offline_run, "--out", page_file)
    assert done.returncode == 0, done.stderr
    assert str(page_file) in done.stdout
    page = browser.open(page_file)
    legend = page.locator("#compare-plot svg").text_content()
    for run_dir in (llm_run.run_dir, offline_run):
        run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        assert run_id in legend
    assert page.locator("#compare-table tr").count() == 3
    assert "model gpt-4.1-mini" in page.locator("#compare-table").inner_text()
    # Scored on different dev seeds: the page says their heights do not compare (a red-team review found
    # only different tasks were named, and seeds or protocols drew as one axis with the target).
    seeds = [json.loads(l)["dev_seeds"] for d in (llm_run.run_dir, offline_run)
             for l in (d / "ledger.jsonl").read_text().splitlines() if '"run_started"' in l]
    assert seeds[0] != seeds[1]
    shown = [f"{s[0]}..{s[-1]} ({len(s)})" for s in seeds]
    assert f"These runs differ in dev seeds ({shown[0]}, {shown[1]})" in page.locator("header").inner_text()
    assert "different dev seeds: compare shapes, not heights" in legend
    assert all(url == page_file.as_uri() for url in browser.requests), browser.requests


def test_a_damaged_run_still_reports_what_it_has(llm_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(llm_run.run_dir, run_dir, ignore=shutil.ignore_patterns("report", ".lock"))
    with open(run_dir / "ledger.jsonl", "a") as ledger:
        ledger.write('{"event": "iteration", "iter')  # a line torn by a crash mid-write
    html = write_report(run_dir).read_text()
    assert "1 ledger lines could not be read (torn by a crash mid-write" in html
    assert 'id="iteration-1"' in html and 'id="iteration-2"' in html

    # Values of the wrong type in a record's free-form parts (a ledger edited by hand) were "internal error".
    records = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()[:-1]]
    for record in records:
        if record["event"] == "run_started":
            record["start"]["mean"] = "abc"
        if record["event"] == "iteration":
            record["spent"]["env_steps"] = "lots"
        if record["event"] == "eval_finished":
            record["time"] = "yesterday"
    run_id = next(r["run_id"] for r in records if r["event"] == "run_started")
    finish = {"event": "run_finished", "time": "2026-12-05T10:00:00+00:00", "run_id": run_id,
              "reason": "done", "best_mean": 500.0, "spent": {"usd": "lots"}}
    config = json.loads((run_dir / "run.json").read_text())
    del config["config"]["llm"]
    (run_dir / "run.json").write_text(json.dumps(config))
    for holdout in ({"x": 1}, {"seeds": [], "episodes": 0, "mean": 1.0}, {"seeds": [1, 2], "episodes": 2, "mean": "abc"}):
        lines = [*(json.dumps(r) for r in records), json.dumps({**finish, "holdout": holdout})]
        (run_dir / "ledger.jsonl").write_text("\n".join(lines) + "\n")
        html = write_report(run_dir).read_text()
        assert 'id="iteration-2"' in html and "model ?" in html


def test_the_report_child_is_forked_warm_and_no_secret_passes_through_its_fork_server(llm_run, tmp_path, monkeypatch):
    """The report rebuilt after every iteration comes from a fork server of its own, whose imports (Chroma,
    matplotlib) env processes never carry. Neither the fork server nor the request to fork holds a secret; the
    child gets heurist's secret variables over a pipe, so the page is redacted (the API key, and the run's key
    variable whatever its name), forked or started fresh; a child whose secrets never came writes no page."""
    for name, value in llm_run.env({}).items():
        monkeypatch.setenv(name, value)
    key, plain = "sk-report-child-0123456789abcdef", "plain-named-but-secret-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("RUN_KEY_VARIABLE_PLAINLY_NAMED", plain)
    monkeypatch.setattr("common.safe_text._extra_names", {"RUN_KEY_VARIABLE_PLAINLY_NAMED"})
    fresh_shared_servers(monkeypatch)  # fork servers of this test's own, started with the key set
    forked, environments = [], []
    spawn = ForkServer.spawn

    def counted(server, module, argv, env, *rest):
        forked.append((server.warm.name, module))
        environments.append(env)
        return spawn(server, module, argv, env, *rest)

    monkeypatch.setattr(ForkServer, "spawn", counted)
    run_dir = tmp_path / "copy"
    shutil.copytree(llm_run.run_dir, run_dir, ignore=shutil.ignore_patterns("report", ".lock"))
    policy = run_dir / "best_policy.py"
    policy.write_text(policy.read_text() + f"# a key pasted by mistake: {key}, and the other one: {plain}\n")

    def redacted(page: str) -> bool:
        return (key not in page and plain not in page and "[redacted $OPENAI_API_KEY]" in page
                and "[redacted $RUN_KEY_VARIABLE_PLAINLY_NAMED]" in page)

    def probe(warm, name, environ=None):
        report_r, report_w = os.pipe()
        with open(tmp_path / f"{name}.log", "wb") as log:
            child = start_process("tests.forkserver_probe", [str(report_w), "exit0"],
                                  environ or environ_without_secrets(), tmp_path, log.fileno(), (report_w,), warm=warm)
        os.close(report_w)
        with os.fdopen(report_r, "rb") as report:
            seen = json.loads(report.read())
        assert child.wait(timeout=60) == 0
        return seen

    try:
        for _ in range(2):
            assert redacted(rebuild(run_dir).read_text())
        assert forked == [("report", "report.__main__")] * 2
        assert all(key not in json.dumps(env) and plain not in json.dumps(env) for env in environments)
        assert environments[0]["HEURIST_HOME"] == os.environ["HEURIST_HOME"]  # the rest of heurist's environment

        as_report, as_env = probe(REPORT_PROCESSES, "report"), probe(ENV_PROCESSES, "env")
        assert {"chromadb", "matplotlib"} <= set(as_report["imported"])
        assert "chromadb" not in as_env["imported"] and "matplotlib" not in as_env["imported"]
        assert forked[2:] == [("report", "tests.forkserver_probe"), ("env", "tests.forkserver_probe")]
        # Each kind's interpreter flags: -P for both; -O for env processes only (the simulators' asserts repeat
        # heurist's action check), never for the report, which runs heurist's code as it is.
        assert as_env["flags"] == {"optimize": 1, "safe_path": True}
        assert as_report["flags"] == {"optimize": 0, "safe_path": True}
        # A forked child's initial environment is its fork server's: heurist's own for the report's, less secrets.
        assert key not in as_report["initial_environ"] and plain not in as_report["initial_environ"]
        assert f"HEURIST_HOME={os.environ['HEURIST_HOME']}" in as_report["initial_environ"].split("\0")
    finally:
        for server in list(ForkServer._shared.values()):
            server.close()

    monkeypatch.setenv("HEURIST_FORK_SERVER", "0")  # a fresh Python, the secrets over the same pipe
    # An env process that starts its own Python has the same flags (the probe is found through PYTHONPATH: -P).
    project = str(Path(__file__).resolve().parent.parent)
    fresh = probe(ENV_PROCESSES, "env started fresh", environ_without_secrets() | {"PYTHONPATH": project})
    assert fresh["flags"] == {"optimize": 1, "safe_path": True}
    (run_dir / "report" / "index.html").unlink()
    assert redacted(rebuild(run_dir).read_text()) and len(forked) == 4

    (run_dir / "report" / "index.html").unlink()
    secrets_r, secrets_w = os.pipe()
    os.close(secrets_w)  # heurist "ended" before sending them
    done = subprocess.run([sys.executable, "-P", "-m", "report", str(run_dir), "--secrets-fd", str(secrets_r)],
                          pass_fds=(secrets_r,), capture_output=True, text=True, env=environ_without_secrets())
    os.close(secrets_r)
    assert done.returncode != 0 and "secrets did not come" in done.stderr
    assert not (run_dir / "report" / "index.html").exists()


@pytest.mark.parametrize("args, message", [
    (["report", "/"], "is not a heurist run directory"),
    (["report", "--compare", "{run}"], "--compare needs at least two run directories"),
    (["report", "{run}", "--out", "x.html"], "--out is for --compare"),
])
def test_report_bad_input_is_one_line(llm_run, args, message):
    done = heurist(llm_run.env(dict(os.environ)), *[a.replace("{run}", str(llm_run.run_dir)) for a in args])
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_what_untrusted_code_wrote_is_shown_inert_and_every_mean_says_what_it_is_over(llm_run, tmp_path, monkeypatch):
    """Found by a red-team review (2026-12-05), each through text a model or a policy could really have written:
    a right-to-left override in a policy's error or a model's edit made the page show other text than the one
    recorded (the diff's condition read as a comment); a lone surrogate in a model's reply (valid JSON, kept in its
    transcript) made every later report fail to write; a secret holding ``&`` or ``<`` was escaped before it was
    redacted, so it was no longer itself and stayed on the page; a dev mean over the episodes that completed read
    as a mean over every seed; and a model name with ``$`` in it stopped the compare page (matplotlib's mathtext)."""
    secret = "Tr0ub4dor&3-<horse>-staple"
    monkeypatch.setenv("HEURIST_CHROMA_PASSWORD", secret)
    run_dir = tmp_path / "copy"
    shutil.copytree(llm_run.run_dir, run_dir, ignore=shutil.ignore_patterns("report", ".lock"))
    override = '"unset\u202e \u2066# skip the guard when unseeded\u2069 \u2066"'
    policy = run_dir / "best_policy.py"
    policy.write_text(policy.read_text() + f"# pasted by mistake: {secret}\nSEED = {override}\n")
    lines = (run_dir / "ledger.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    start_sha = next(r for r in records if r["event"] == "run_started")["start"]["sha256"]
    dev_seeds = next(r for r in records if r["event"] == "run_started")["dev_seeds"]
    for record in records:
        if record["event"] == "iteration" and record["iteration"] == 1:
            record["diff"] += f"\n+    if self.seed != {override}:\n+        return 0\n"
            record["reason"] = "episode verdict: \u202edeliaf ton did edosipe\u202c ok \x1b[31m"  # a policy's error
            record["verdict"] = {**(record["verdict"] or {}), "reasons": [record["reason"]]}
        if record["event"] == "eval_finished" and record["policy_sha256"] == start_sha and record["seeds"] == dev_seeds:
            record["episodes_failed"] = 3  # as when 3 of its episodes crashed: the mean is over the others
    (run_dir / "ledger.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    # A model's reply as the client recorded it: valid JSON, whose string holds a lone surrogate.
    TranscriptRecorder(run_dir).for_role(1, "coder").write(
        LLMCall, model="gpt-4.1-mini", attempt=1, messages=[{"role": "user", "content": "edit"}], latency_s=0.1,
        response='{"rationale": "half a pair \ud800 here"}', error="UnicodeEncodeError: surrogates not allowed")
    # A reply of 1.6 MB (a server's non-streamed reply is read whole): the page shows its first 200,000 characters.
    TranscriptRecorder(run_dir).for_role(1, "coder").write(
        LLMCall, model="gpt-4.1-mini", attempt=2, messages=[{"role": "user", "content": "edit"}], latency_s=0.1,
        response="<b>A</b>" * 200_000)

    html = write_report(run_dir).read_text(encoding="utf-8")
    assert secret not in html and "Tr0ub4dor&amp;3" not in html and "[redacted $HEURIST_CHROMA_PASSWORD]" in html
    for character in ("\u202e", "\u2066", "\u2069", "\x1b", "\ud800"):
        assert character not in html
    assert "\\u202edeliaf ton did edosipe\\u202c ok \\x1b[31m" in html and "half a pair \\ud800 here" in html
    assert html.count("\\u202e") >= 3  # the error, the diff and the policy: each shows the override it holds
    assert f"(over {len(dev_seeds) - 3} of {len(dev_seeds)} episodes: 3 failed)" in html
    assert "[... 1,400,000 more characters, in the run&#39;s files]" in html and len(html) < 3_000_000

    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["llm"]["model"] = "acme/$\\frac{x}{y$-chat"
    (run_dir / "run.json").write_text(json.dumps(record))
    done = heurist(llm_run.env(dict(os.environ)), "report", "--compare", run_dir, llm_run.run_dir,
                   "--out", tmp_path / "c.html")
    assert done.returncode == 0, done.stderr
    assert "acme/$\\frac{x}{y$-chat" in (tmp_path / "c.html").read_text()


def test_a_run_directory_from_elsewhere_makes_the_report_run_read_or_write_nothing_outside_it(llm_run, tmp_path,
                                                                                                 monkeypatch):
    """A red-team review (2026-12-05): a run directory is data, and may be someone else's (a colleague's, an
    archive's). Edited, it had `heurist report` run a program (a ledger commit of ``--output=FILE`` given to
    `git show`, and a textconv driver in the workspace's config), copy /etc/passwd into ``report/media`` (a clip
    recorded by that path, or under a folder linked out of the run) and show it (``best_policy.py`` a link), write the
    page through a linked ``report`` folder, make a memory store wherever run.json named one, and import the module a
    ``module:attr`` task in run.json named."""
    run_dir, outside = tmp_path / "copy", tmp_path / "outside"
    shutil.copytree(llm_run.run_dir, run_dir, ignore=shutil.ignore_patterns("report", ".lock"))
    outside.mkdir()
    (outside / "secret.txt").write_text("TOPSECRET-0451\n")
    proof = outside / "a program ran"
    workspace = run_dir / "workspace"
    run_git(["config", "diff.x.textconv", f"touch '{proof}'; cat"], workspace)
    (workspace / ".gitattributes").write_text("*.py diff=x\n")
    records = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    accepted = [r for r in records if r["event"] == "iteration" and r["accepted"]]
    assert accepted
    for record in accepted:
        record["commit"] = f"--output={outside / 'written'}"
    (run_dir / "ledger.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (run_dir / "clips" / "linked").symlink_to(outside)
    changed = 0
    for cached in (run_dir / "evals").glob("*.json"):
        result = json.loads(cached.read_text())
        for clip in result.get("clips") or []:
            clip["mp4"], clip["png"] = str(outside / "secret.txt"), str(run_dir / "clips" / "linked" / "secret.txt")
            changed += 1
        cached.write_text(json.dumps(result))
    assert changed
    (run_dir / "best_policy.py").unlink()
    (run_dir / "best_policy.py").symlink_to(outside / "secret.txt")
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["memory"] = {"path": str(outside / "made by the report")}
    (run_dir / "run.json").write_text(json.dumps(record))

    html = write_report(run_dir).read_text()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]  # nothing ran, nothing was written or made
    media = run_dir / "report" / "media"
    assert "TOPSECRET" not in html and not any("TOPSECRET" in p.read_text(errors="replace")
                                               for p in (media.iterdir() if media.is_dir() else []))
    assert "the workspace&#39;s history is not shown" in html and "diff.x.textconv" in html
    assert f"no memory store at {outside / 'made by the report'} on this machine" in html

    # A memory server named by a run this machine did not start is not contacted; the run's own is (llm_run's store).
    record["config"]["memory"] = {"url": "http://127.0.0.1:9/"}
    (run_dir / "run.json").write_text(json.dumps(record))
    assert "is not contacted: the run was not started on this machine" in write_report(run_dir).read_text()

    # A task of one's own named by such a run is not imported (it names any module, and may be called).
    (outside / "planted_task.py").write_text(f"open({str(proof)!r}, 'w').close()\nTASK = None\n")
    monkeypatch.syspath_prepend(str(outside))
    record["task"] = record["config"]["task"] = "planted_task:TASK"
    (run_dir / "run.json").write_text(json.dumps(record))
    html = write_report(run_dir).read_text()
    assert "planted_task:TASK" in html and "no target shown: the module of this task of one" in html
    assert not proof.exists()
    (outside / "planted_task.py").unlink()

    shutil.rmtree(run_dir / "report")
    (run_dir / "report").symlink_to(outside)
    with pytest.raises(ReportError, match="is not a plain folder"):
        write_report(run_dir)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
