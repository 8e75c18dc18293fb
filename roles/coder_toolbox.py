"""The coder agent's tools at work: each reads or changes the loop's working candidate through the run's
``Workbench``, and answers with compact text (and an image path for a vision model).

``CoderLoop`` (``roles.coder_agent``) runs the loop; this is what each call does. A tool that cannot do what
it was asked raises ``ValueError`` with the reason, which the model is told; nothing here touches the
incumbent, and evaluations and tests only ever run through the workbench's sandbox on dev seeds.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.errors import PolicyError
from envs.contract import check_policy_source, seed_special_cases
from envs.results import EpisodeResult, EvalResult
from roles.coder_tools import (
    MAX_SCORE_SEEDS,
    EditArgs,
    FramesArgs,
    ReadFileArgs,
    ScenarioArgs,
    ScoreArgs,
    SubmitArgs,
    ToolFailed,
    TraceArgs,
    Workbench,
)
from roles.edits import EditError, SearchReplace, apply_search_replace, unified_diff
from roles.video_analyst import describe_track, measure_clip
from store.config import CodeConfig

TRACE_MAX_STEPS = 80


class Best(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    blocks: list[SearchReplace]
    gain: float  # mean return above the incumbent on the seeds it was scored on (a failed episode at the floor)
    seeds: list[int]


class LoopState(BaseModel):
    """What the loop has done so far; journaled after every tool run."""

    model_config = ConfigDict(extra="forbid")

    source: str
    blocks: list[SearchReplace] = Field(default_factory=list)
    best: Best | None = None
    submitted: SubmitArgs | None = None
    tool_calls: int = 0
    env_steps: int = 0


def failure_floor(*scores: dict[int, float | None]) -> float:
    """Where a failed episode counts when gains are compared: below every completed one."""
    completed = [r for s in scores for r in s.values() if r is not None]
    spread = (max(completed) - min(completed)) if completed else 1.0
    return (min(completed) if completed else 0.0) - max(spread, 1.0)


class ToolBox:
    """The tools, as methods of the loop that owns ``wb`` (the workbench), ``state`` (its ``LoopState``),
    ``settings`` (``[code]``) and ``images`` (whether its model takes images)."""

    wb: Workbench
    state: LoopState
    settings: CodeConfig
    images: bool

    def _tool_read_file(self, args: ReadFileArgs) -> tuple[str, None]:
        files = {"policy.py": self.wb.incumbent, "candidate.py": self.state.source, **self.wb.files()}
        path = args.path.strip().lstrip("./") or "."
        if path in (".", ""):
            return "files:\n" + "\n".join(sorted(files)), None
        if path not in files:
            raise ValueError(f"no file {args.path!r}; the files are: {', '.join(sorted(files))}")
        return files[path], None

    def _tool_score(self, args: ScoreArgs) -> tuple[str, None]:
        self._dev_only(args.seeds)  # before anything changes: a refused call leaves candidate.py as it was
        if args.source is not None:
            self._set_candidate(args.source, [SearchReplace(search=self.wb.incumbent, replace=args.source)])
        result = self._evaluate(self.state.source, args.seeds)
        ours = {e.seed: (e.return_ if e.status == "ok" else None) for e in result.episodes}
        theirs = {seed: self.wb.incumbent_scores.get(seed) for seed in ours}
        floor = failure_floor(ours, theirs)
        lines = []
        for e in result.episodes:
            mine, base = ours[e.seed], theirs[e.seed]
            line = f"seed {e.seed}: {_num(mine)} (incumbent {_num(base)}), {e.length} steps"
            if e.status != "ok":
                line += f", {e.status}: {(e.error or '')[:300]}"
            if e.events:
                line += "; events: " + ", ".join(f"{ev.kind} at step {ev.step}" for ev in e.events[:4])
            lines.append(line)
        gain = sum((ours[s] if ours[s] is not None else floor) - (theirs[s] if theirs[s] is not None else floor)
                   for s in ours) / len(ours)
        if self.state.source != self.wb.incumbent and gain > 0 and (
                self.state.best is None or gain > self.state.best.gain):
            self.state.best = Best(source=self.state.source, blocks=list(self.state.blocks), gain=gain,
                                   seeds=sorted(ours))
        lines.append(f"mean change against the incumbent on these seeds: {gain:+.3f}")
        return "\n".join(lines), None

    def _tool_trace(self, args: TraceArgs) -> tuple[str, None]:
        if args.last_step < args.first_step:
            raise ValueError("last_step is before first_step")
        episode = self._episode(args.policy, args.seed)
        trace = episode.trace
        if trace is None:
            return f"seed {args.seed}: {episode.status}, no trace was recorded ({(episode.error or '')[:300]})", None
        near = {step["t"]: step for window in trace.windows for step in window.steps}
        last = min(args.last_step, len(trace.actions) - 1, args.first_step + TRACE_MAX_STEPS - 1)
        lines = [f"{args.policy}, seed {args.seed}: {episode.status}, return {_num(episode.return_)}, "
                 f"{episode.length} steps; events: " + (", ".join(f"{e.kind} at step {e.step}" for e in episode.events)
                                                        or "none")]
        for t in range(args.first_step, last + 1):
            if t in near:
                step = near[t]
                lines.append(f"t={t} action={json.dumps(step['action'])} reward={step['reward']} "
                             f"obs={json.dumps(step['obs'])[:300]} diag={json.dumps(step['diag'])[:200]}")
            else:
                lines.append(f"t={t} action={json.dumps(trace.actions[t])} reward={trace.rewards[t]}")
        if last < args.last_step:
            lines.append(f"(shown up to step {last}: at most {TRACE_MAX_STEPS} steps a call, and the episode "
                         f"has {len(trace.actions)})")
        windows = ", ".join(f"{w.label} at {w.step} (steps {w.steps[0]['t']}..{w.steps[-1]['t']})"
                            for w in trace.windows if w.steps)
        lines.append(f"observations are kept near: {windows or 'nowhere'}")
        return "\n".join(lines), None

    def _tool_frames(self, args: FramesArgs) -> tuple[str, str | None]:
        if not self.wb.films:  # an evaluation would spend env steps and still record no clip
            return "no frames: this run records no clips (eval.video = false); use trace for the steps", None
        source = self.wb.incumbent if args.policy == "incumbent" else self.state.source
        result = self._evaluate(source, [args.seed], video=True)
        clips = [c for c in result.clips if c.seed == args.seed]
        if not clips:
            return (f"no clip was recorded for seed {args.seed} of the {args.policy} (clips are recorded around "
                    f"failure events and at the end of the worst episodes)"), None
        clip = min(clips, key=lambda c: abs(c.step - args.step))
        return self._clip_view(f"clip '{clip.label}' around step {clip.step} ({clip.frames} frames)", clip.mp4,
                               clip.png)

    def _clip_view(self, head: str, mp4: str, png: str) -> tuple[str, str | None]:
        """A clip as the model reads it: its contact sheet as an image where the model takes images, else the
        moving objects measured in it."""
        if self.images:
            return head + "; its contact sheet follows as an image", png
        tracks = measure_clip(mp4)
        return head + ", measured (pixels; x right, y down):\n" + (
            "\n".join(describe_track(t) for t in tracks) or "nothing moved"), None

    def _tool_scenario(self, args: ScenarioArgs) -> tuple[str, str | None]:
        known = self.wb.scenarios()
        if args.name.strip() in (".", ""):
            return "scenarios:\n" + ("\n".join(f"{n}: {d}" for n, d in sorted(known.items())) or "none saved"), None
        if self.settings.max_env_steps is not None and self.state.env_steps >= self.settings.max_env_steps:
            raise ValueError("the loop's env steps are spent")
        source = self.wb.incumbent if args.policy == "incumbent" else self.state.source
        try:
            result, spent = self.wb.run_scenario(source, args.name, film=args.frames)
        except ToolFailed as failed:  # what it stepped before it failed is spent all the same
            self.state.env_steps += failed.env_steps
            raise
        self.state.env_steps += spent
        steps = result.get("trace") or []
        lines = [f"{args.policy} from scenario {args.name}" + (f" ({known[args.name][:200]})" if args.name in known
                                                               else "") + ": "
                 + ("failed that way again" if result.get("failed_again") else "did not fail that way")
                 + f"; return over the replay {_num(result.get('return'))}, {result.get('length')} steps, ending "
                 f"{result.get('ending') or 'none'}; events: "
                 + (", ".join(f"{e['kind']} at step {e['step']}" for e in result.get("events") or []) or "none")]
        if steps:
            first_t = steps[0]["t"]
            event = next((e["step"] for e in result.get("events") or []), steps[-1]["t"])
            first = args.first_step if args.first_step is not None else max(first_t, event - TRACE_MAX_STEPS + 1)
            last = min(args.last_step if args.last_step is not None else event, first + TRACE_MAX_STEPS - 1)
            for step in steps:
                if first <= step["t"] <= last:
                    obs = "" if step.get("obs") is None else f" obs={json.dumps(step['obs'])[:300]}"
                    lines.append(f"t={step['t']} action={json.dumps(step['action'])} reward={step.get('reward')}{obs}")
            lines.append(f"(the replay ran steps {first_t}..{steps[-1]['t']}; shown {first}..{last}, at most "
                         f"{TRACE_MAX_STEPS} a call)")
        clip = result.get("clip")
        if not clip:
            if args.frames:
                lines.append("no frames: the replay rendered none around the failure's step")
            return "\n".join(lines), None
        view, image = self._clip_view(f"its frames around step {clip['step']} ({clip['frames']} frames)",
                                      clip["mp4"], clip["png"])
        return "\n".join([*lines, view]), image

    def _tool_edit(self, args: EditArgs) -> tuple[str, None]:
        try:
            source = apply_search_replace(self.state.source, args.blocks)
        except EditError as exc:
            raise ValueError(f"{exc} (candidate.py is unchanged)") from None
        self._set_candidate(source, [*self.state.blocks, *args.blocks])
        return "candidate.py now differs from the incumbent by:\n" + (unified_diff(
            self.wb.incumbent, source, "policy.py") or "(nothing)"), None

    def _tool_run_tests(self, _args: Any) -> tuple[str, None]:
        if self.settings.max_env_steps is not None and self.state.env_steps >= self.settings.max_env_steps:
            raise ValueError("the loop's env steps are spent")
        outcomes, spent = self.wb.run_tests(self.state.source)
        self.state.env_steps += spent
        if not outcomes:
            return "there are no accepted tests yet", None
        failed = [o for o in outcomes if not o.passed]
        lines = [f"{len(outcomes) - len(failed)} of {len(outcomes)} test files passed on candidate.py"]
        lines += [f"{o.name} failed: {o.reason}\n{o.output[-1200:]}" for o in failed]
        return "\n".join(lines), None

    def _tool_submit(self, args: SubmitArgs) -> tuple[str, None]:
        if self.state.source == self.wb.incumbent:
            raise ValueError("candidate.py is the incumbent: change it (edit, or score with a source) first")
        self.state.submitted = args
        return "submitted", None

    # ------------------------------------------------------------------ helpers

    def _set_candidate(self, source: str, blocks: list[SearchReplace]) -> None:
        """Make ``source`` the working candidate once it passes the checks the check stage will make."""
        try:
            check_policy_source(source, "candidate.py")
            compile(source, "candidate.py", "exec")
        except (PolicyError, SyntaxError, ValueError) as exc:
            raise ValueError(f"the candidate would not pass the check: {exc} (candidate.py is unchanged)") from None
        special = seed_special_cases(source, before=self.wb.incumbent)
        if special:
            raise ValueError(f"{special} (candidate.py is unchanged)")
        self.state.source, self.state.blocks = source, blocks

    def _dev_only(self, seeds: list[int]) -> None:
        dev = set(self.wb.dev_seeds)
        outside = [s for s in seeds if s not in dev]
        if outside:
            raise ValueError(f"seeds {outside} are not dev seeds; use dev seeds {min(dev)}..{max(dev)}")
        if len(seeds) > MAX_SCORE_SEEDS:
            raise ValueError(f"at most {MAX_SCORE_SEEDS} seeds a call")

    def _evaluate(self, source: str, seeds: list[int], video: bool = False) -> EvalResult:
        self._dev_only(seeds)
        result, spent = self.wb.evaluate(source, sorted(set(seeds)), video)
        self.state.env_steps += spent
        return result

    def _episode(self, policy: str, seed: int) -> EpisodeResult:
        source = self.wb.incumbent if policy == "incumbent" else self.state.source
        return self._evaluate(source, [seed]).episodes[0]


def _num(value: float | None) -> str:
    return "failed" if value is None else f"{value:.3f}"


