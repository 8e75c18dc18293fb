"""Write ``RUN_DIR/report/index.html`` (and the ``--compare`` page) with Jinja2.

The page needs no network: CSS is inline, plots are inline SVG, and the clips and contact
sheets are copied (hard-linked where the file system allows) into ``report/media/`` next to
it, so the folder opens from disk, moves as one piece, and a clip plays in the page. Media
are not inlined as base64: a long Atari run has hundreds of clips, and rewriting them into
one file after every iteration would cost more than the iteration.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, PythonLexer

from common.errors import HeuristError
from common.files import atomic_write
from common.formatting import cost_text, tokens_text
from common.safe_text import printable, redact, secret_values
from report.data import gather, inside_run
from report.plots import compare_plot, complexity_plot, cost_axis, failure_plot, incomparable, score_plot
from report.views import ReportData

TEMPLATES = Path(__file__).parent / "templates"
MAX_SHOWN_CHARS = 200_000  # of any one text the page shows (a reply, a test's output, a policy, a diff)
_FORMATTER = HtmlFormatter(cssclass="hl")


class ReportError(HeuristError):
    """A report that cannot be written."""


def shown(value: Any, secrets: list[tuple[str, str]] | None = None) -> Any:
    """What a page shows of a value: a text is redacted and made inert (control characters, bidirectional overrides
    and lone surrogates written as visible escapes: ``printable``) before Jinja escapes it. Before, not after: a
    secret holding ``&`` or ``<`` is no longer itself once escaped, and a right-to-left override in a policy's error
    or a model's code would make the page show other text than the one recorded. Markup (plots, highlighted code)
    is heurist's own and passes as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        text = redact(value, secrets)  # redacted before it is cut: a cut secret is no longer found
        if len(text) > MAX_SHOWN_CHARS:  # a 40 MB reply made a 100 MB page, rewritten after every iteration
            text = text[:MAX_SHOWN_CHARS] + f"\n[... {len(text) - MAX_SHOWN_CHARS:,} more characters, in the run's files]"
        return printable(text.replace("\r\n", "\n"))  # a CRLF file's lines, not a \r on each
    return value


def _environment() -> Environment:
    secrets = secret_values()  # read once per page: every value shown is redacted with them

    def code(lexer) -> Any:
        return lambda text: Markup(highlight(shown(text, secrets), lexer, _FORMATTER))

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, finalize=lambda value: shown(value, secrets))
    env.filters["diff"] = code(DiffLexer())
    env.filters["python"] = code(PythonLexer())
    env.filters["num"] = lambda value, digits=2: f"{value:,.{digits}f}" if isinstance(value, (int, float)) \
        and not isinstance(value, bool) else "n/a"
    env.filters["steps"] = lambda value: f"{int(value or 0):,}"
    # What a run spent on models: dollars, and the tokens of models with no price (never shown as $0).
    env.filters["cost"] = lambda spent, digits=4: cost_text(spent.get("usd", 0), spent.get("unpriced_tokens", 0), digits)
    # And its tokens, saying how many heurist estimated where the server gave no counts.
    env.filters["tokens"] = lambda spent: tokens_text(int(spent.get("tokens", 0) or 0),
                                                      int(spent.get("estimated_tokens", 0) or 0))
    return env


class _Media:
    """Copies the files a page shows into its media folder, once each, and gives their relative paths."""

    def __init__(self, folder: Path, run_dir: Path):
        self.folder, self.run_dir = folder, run_dir

    def __call__(self, path: str | None) -> str | None:
        # Only a regular file of the run (``inside_run``: links resolved): a clip or an image recorded as /etc/passwd,
        # or under a folder linked out of the run, is shown as text, not copied to travel with the page.
        source = inside_run(Path(path), self.run_dir) if path else None
        if source is None or source.is_relative_to(self.folder.resolve()):
            return None
        name = f"{hashlib.sha256(str(source.parent).encode()).hexdigest()[:10]}-{source.name}"
        target = self.folder / name
        try:
            if target.is_symlink() or not target.is_file() or target.stat().st_size != source.stat().st_size:
                self.folder.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{name}.{os.getpid()}.partial")  # `heurist report` may race the run
                partial.unlink(missing_ok=True)
                try:
                    os.link(source, partial)  # clips are never rewritten, so a hard link is a safe copy
                except OSError:
                    shutil.copyfile(source, partial)
                partial.replace(target)
        except OSError as exc:
            raise ReportError(f"cannot copy {source.name} into {self.folder}: {exc.strerror}; free space or make "
                              f"{self.folder} writable") from None
        return f"{self.folder.name}/{name}"


def plain_folder(folder: Path) -> None:
    """Refuse to write the report through a link or over a file: a run directory from elsewhere whose ``report`` links
    to another folder would have the page, and the media copied into it, written there."""
    for path in (folder, folder / "media"):
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise ReportError(f"{path} is not a plain folder (a link or a file); heurist writes the report only into a "
                              f"folder of the run: remove {path} and write the report again")


def _page_context(data: ReportData, media: _Media) -> dict[str, Any]:
    for view in data.iterations:
        for clip in view.clips:
            clip.mp4, clip.png = media(clip.mp4) or "", media(clip.png)
        for transcript in view.transcripts:
            for entry in transcript.entries:
                for message in entry.messages:
                    for part in message.parts:
                        if part.image is not None:
                            copied = media(part.image)
                            if copied is None:  # never a link out of the report's folder
                                part.text = f"[image no longer on disk: {part.image}]"
                            part.image = copied
    axis = cost_axis(data)
    return {"data": data, "score_plot": Markup(score_plot(data, "env_steps")),
            "cost_plot": Markup(score_plot(data, axis)) if axis else None, "cost_axis": axis,
            "failure_plot": Markup(failure_plot(data) or ""), "complexity_plot": Markup(complexity_plot(data) or ""), "pygments_css": _FORMATTER.get_style_defs(".hl"),
            "generated": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")}


def page_text(html: str) -> str:
    """The page as written: redacted once more as a whole, and encodable whatever reached it (a lone surrogate in a
    model's reply once made every later report fail to write)."""
    return redact(html).encode("utf-8", "backslashreplace").decode("utf-8")


def write_report(run_dir: Path) -> Path:
    """Render the run's report; returns the path of index.html."""
    run_dir = Path(run_dir).resolve()
    data = gather(run_dir)
    folder = run_dir / "report"
    plain_folder(folder)
    html = _environment().get_template("report.html.j2").render(**_page_context(data, _Media(folder / "media", run_dir)))
    index = folder / "index.html"
    try:
        atomic_write(index, page_text(html))
    except OSError as exc:
        raise ReportError(f"cannot write {index}: {exc.strerror}; free space or make {folder} writable") from None
    return index


def write_compare(run_dirs: list[Path], out: Path) -> Path:
    """One page with the score curves of several runs; a single file (plots only, no media)."""
    if len(run_dirs) < 2:
        raise ReportError("--compare needs at least two run directories")
    runs = [gather(Path(d)) for d in run_dirs]
    axis = "usd" if all(cost_axis(r) == "usd" for r in runs) else None
    html = _environment().get_template("compare.html.j2").render(
        runs=runs, differs=incomparable(runs), plot=Markup(compare_plot(runs, "env_steps")),
        cost_plot=Markup(compare_plot(runs, axis)) if axis else None,
        generated=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))
    out = Path(out)
    try:
        atomic_write(out, page_text(html))
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc.strerror}; choose another --out") from None
    return out
