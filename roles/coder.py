"""The coder: proposes one edit to the policy file, as SEARCH/REPLACE blocks or new tunable values.

With a model it is told the policy, the analyse stage's reports, the failures and fixes
recalled from memory, and the run's history (and, after a failed check, the precise error,
with the nearest lines for a SEARCH block that did not match). By default
(``code.mode = "agent"``) it then experiments in a bounded tool loop (``roles.coder_agent``:
read, score, trace, frames, edit, run tests) before it submits an ``Edit``; with
``code.mode = "single"`` it answers with an ``Edit`` in one structured call.

Offline it searches the policy's declared tunables with CMA-ES (the ``cma`` package):
each tunable scaled to [0, 1] by its declared bounds, started from the incumbent's
values, seeded by the run and iteration so a replay proposes the same values, and each
candidate scored by the real evaluator on a subset of the dev seeds (the incumbent's worst,
plus some that rotate with the iteration). The best
candidate that beats the incumbent on those seeds becomes a tunables edit; the reviewer
then judges it on every dev seed.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings

from typing import NamedTuple

import numpy as np

from common.safe_text import one_line
from envs.contract import Tunable, read_tunables
from memory.records import FixRecord, Recall
from roles.base import Role, RoleContext
from roles.coder_agent import LOOP_ENDED, CoderLoop, loop_key
from roles.edits import Edit, apply_edit
from roles.stages import CoderInput, CoderOutput, gather


def recall_text(recall: Recall) -> str:
    """Memory as the coder reads it: one line a record, each record once, no ids or vectors."""
    lines, seen = [], set()

    def add(key: str, line: str) -> None:
        # Each record one line, whatever its text holds: a description or rationale from a store anyone can write
        # (an import, a shared server) broke into lines of heurist's own format and forged lessons and accepted
        # fixes in the brief (a red-team review, 2026-12-05).
        if key not in seen:
            seen.add(key)
            lines.append(one_line(line))

    # Lessons first: short and general, they are what a cut brief must keep (and what the run counts as shown).
    for lesson_hit in recall.lessons:
        lesson = lesson_hit.lesson
        where = "" if lesson_hit.same_family else f", from the {lesson.family} family"
        evidence = f"; e.g. {lesson.evidence[-1]}" if lesson.evidence else ""
        add(lesson.id, f"- lesson (helped {lesson.times_helped} of {lesson.times_recalled} times recalled{where}): "
                       f"{lesson.text}{evidence}")
    for hit in recall.failures:
        f = hit.failure
        add(f.id, f"- failure ({f.kind}, seed {f.seed}, step {f.step}, seen {f.sightings}x): {f.description}")
        for fix_hit in hit.fixes:
            add(fix_hit.fix.id, _fix_line(fix_hit.fix))
    for fix_hit in recall.fixes:
        add(fix_hit.fix.id, _fix_line(fix_hit.fix))
    return "\n".join(lines) or "nothing similar yet"


def _fix_line(fix: FixRecord) -> str:
    scores = f", dev mean {fix.score_before} -> {fix.score_after}" if fix.score_before is not None else ""
    return f"- fix {fix.outcome}{scores}: {fix.rationale[:300]} (why: {fix.reason[:200]})"


def lesson_start(recall: dict | None, tunables: list[Tunable]) -> tuple[str, dict[str, float]] | None:
    """Where an offline search may start: the best-ranked recalled lesson that helped and names every tunable of
    this policy (its values clipped to this policy's bounds), as (lesson id, values); None when none does.
    Recall ranks the family's lessons first, by how often they helped."""
    if not recall:
        return None
    for hit in Recall.model_validate(recall).lessons:
        lesson = hit.lesson
        if lesson.outcome == "helped" and tunables and all(t.name in lesson.settings for t in tunables):
            values = {t.name: min(max(float(round(lesson.settings[t.name])) if t.integer else lesson.settings[t.name],
                                      t.low), t.high) for t in tunables}
            if any(values[t.name] != t.default for t in tunables):  # not the policy's own values already
                return lesson.id, values
    return None


def _search_seeds(incumbent: dict[int, float | None], iteration: int, n: int) -> list[int]:
    """n dev seeds: the incumbent's worst half (where there is something to gain), the rest rotating
    with the iteration so that the search does not fit the same few seeds every time."""
    dev = sorted(incumbent)
    if n >= len(dev):
        return dev
    worst = sorted(dev, key=lambda s: (incumbent[s] is not None, incumbent[s] or 0.0, s))[: (n + 1) // 2]
    rest = [s for s in dev if s not in worst]
    start = ((iteration - 1) * (n - len(worst))) % len(rest)
    return sorted(worst + [rest[(start + i) % len(rest)] for i in range(n - len(worst))])


class SearchScore(NamedTuple):
    """How the offline search ranks a policy on its seeds against the incumbent's returns there, in the order the
    gate decides (``roles.reviewer.statistical_gate``): fewer episodes that completed before and fail now; then what
    the gate accepts outright, episodes that failed and now complete with the paired mean no lower, before a paired
    gain alone, which a rank test must still find; then fewer failed episodes, the higher paired gain, the higher
    mean of the completed ones. A failure counted at a floor below the incumbent's returns (as before) ranked a
    candidate that crashed on 4 seeds of 5 above one that completed all 5 at lower returns, which the gate accepts;
    and a mean over all seeds ranked a candidate that fixed one seed and lost on the others above one the gate
    accepts."""

    new_failures: int
    tier: int  # 2: fixes with the paired mean no lower (the gate accepts), 1: a paired gain, 0: neither
    failed: int
    gain: float  # the paired mean change on the seeds both completed (0 where none)
    mean: float  # over the completed episodes; -inf where none completed

    @property
    def key(self) -> tuple[int, int, int, float, float]:
        return (-self.new_failures, self.tier, -self.failed, self.gain, self.mean)

    def __str__(self) -> str:
        text = "no episode completed" if self.mean == -math.inf else f"{self.mean:.3f}"
        if self.failed:
            text += f" ({self.failed} failed)"
        if self.new_failures:
            text += f", {self.new_failures} of them completed before"
        return text

    def plain(self) -> dict[str, float | int | None]:
        """As JSON has it (no infinity)."""
        return {"failed": self.failed, "new_failures": self.new_failures, "paired_gain": self.gain,
                "mean": None if self.mean == -math.inf else self.mean}


def search_score(per_seed: dict[int, float | None], base: dict[int, float | None]) -> SearchScore:
    """``per_seed``'s score against the incumbent's returns ``base`` on the same seeds."""
    completed = [r for r in per_seed.values() if r is not None]
    new = sum(1 for s, r in per_seed.items() if r is None and base.get(s) is not None)
    fixed = sum(1 for s, r in per_seed.items() if r is not None and base.get(s) is None)
    deltas = [r - base[s] for s, r in per_seed.items() if r is not None and base.get(s) is not None]
    gain = float(np.mean(deltas)) if deltas else 0.0
    tier = 2 if fixed and not new and gain >= 0 else 1 if not new and gain > 0 else 0
    return SearchScore(new, tier, len(per_seed) - len(completed), gain,
                       float(np.mean(completed)) if completed else -math.inf)


def _ranks(scores: list[SearchScore]) -> list[float]:
    """What CMA-ES is told of one generation, to minimise: each candidate's rank (0 the best). CMA-ES uses only the
    order of a generation's values, so ranks lose nothing, and a lexicographic score needs no scalar stand-in."""
    order = sorted(range(len(scores)), key=lambda i: scores[i].key, reverse=True)
    ranks = [0.0] * len(scores)
    for rank, i in enumerate(order):
        ranks[i] = float(rank)
    return ranks


def import_cma():
    """The ``cma`` package, imported without matplotlib.

    ``cma`` imports ``matplotlib.pyplot`` at import time for its plotting helpers (``cma.s``), which heurist never
    calls: 0.4 s of every offline run's start-up. matplotlib is hidden while ``cma`` imports (it then warns, silenced
    here, that plotting is unavailable) and given back at once, so anything imported later finds it as usual (no
    other thread of heurist's imports matplotlib meanwhile: the report is drawn in a child process). Where matplotlib
    is already imported, nothing is hidden."""
    hidden = "matplotlib" not in sys.modules and "cma" not in sys.modules
    if hidden:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # makes `import matplotlib` raise ImportError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cma
    finally:
        if hidden and sys.modules.get("matplotlib", 0) is None:
            del sys.modules["matplotlib"]
    return cma


class Coder(Role[CoderInput, CoderOutput]):
    name = "coder"
    stage = "code"
    Input = CoderInput
    Output = CoderOutput

    def run(self, data: CoderInput, ctx: RoleContext) -> CoderOutput:
        if ctx.offline:
            return self.search(data, ctx)
        if ctx.config.code.mode == "agent" and ctx.workbench is not None:
            return self.experiment(data, ctx)
        return self.ask_model(data, ctx)

    # ------------------------------------------------------------------ with a model: the agent

    def experiment(self, data: CoderInput, ctx: RoleContext) -> CoderOutput:
        """A tool loop (``roles.coder_agent``): read, score, trace, edit and test, then submit one edit."""
        limits = ctx.config.code
        budget = (f"This loop may make {limits.max_tool_calls} tool calls"
                  + (f", spend {limits.max_env_steps:,} env steps" if limits.max_env_steps else "")
                  + (f" and {limits.max_tokens:,} tokens" if limits.max_tokens else "") + "; at its end, the "
                  "candidate you scored best above the incumbent is proposed if you have not submitted. Dev seeds: "
                  + ", ".join(map(str, sorted(data.incumbent))) + ".")
        focus = [f"Your focus in this loop (other loops pursue other ideas side by side): {data.focus}"] \
            if data.focus else []
        scenarios = ctx.workbench.scenarios()
        if scenarios:  # the moments before failures, saved: the scenario tool replays them in a few hundred steps
            focus.append("Saved failure scenarios (replay one with the scenario tool, on the incumbent or your "
                         "candidate):\n" + "\n".join(f"- {n}: {d}" for n, d in sorted(scenarios.items())))
        loop = CoderLoop(ctx, ctx.workbench, loop_key(data.attempt, data.branch), self.prompt_of("coder_agent.md"),
                         "\n\n".join([*self._brief(data), *focus, budget]), ctx.llm.takes_images(self.name))
        edit, reason, evidence = loop.run()
        # Submitted, the reason is the model's rationale; otherwise it already says how the loop ended (it read "the
        # agent's loop ended: the loop ended (...)").
        said = f"the agent's {reason}" if reason.startswith(LOOP_ENDED) else f"the agent submitted: {reason}"
        ctx.decide(said[:500], **evidence)
        return CoderOutput(edit=edit, reason=reason, search=evidence)

    # ------------------------------------------------------------------ with a model: one call

    def ask_model(self, data: CoderInput, ctx: RoleContext) -> CoderOutput:
        messages = [{"role": "system", "content": self.prompt()},
                    {"role": "user", "content": "\n\n".join(self._brief(data))}]
        edit = ctx.llm.structured(ctx.transcript, messages, Edit)
        return CoderOutput(edit=edit, reason=edit.rationale)

    def _brief(self, data: CoderInput) -> list[str]:
        """What the coder is told of the iteration, in either mode."""
        tunables = read_tunables(data.policy_source)
        parts = [f"Task: {data.task}: {data.task_description}",
                 "Current policy file (policy.py):\n```python\n" + data.policy_source + "\n```",
                 "Declared tunables: " + (", ".join(f"{t.name}={t.default} in [{t.low}, {t.high}] ({t.doc})"
                                                    for t in tunables) or "none"),
                 "Dev-seed returns of this policy (None = the episode failed): " + json.dumps(
                     {str(k): v for k, v in data.incumbent.items()})]
        for role, report in data.analyses.items():
            details = {k: v for k, v in report.items() if k != "summary"}
            parts.append(f"Report of the {role}: {report.get('summary', '')}\n"
                         + json.dumps(details, default=str, separators=(",", ":"))[:4000])
        if data.recall:
            parts.append("From memory (similar failures, then fixes, the ones that worked first):\n"
                         + recall_text(Recall.model_validate(data.recall))[:4000])
        if data.history:
            parts.append("This run's history, one line per iteration:\n"
                         + "\n".join(json.dumps(h, default=str) for h in data.history[-12:]))
        if data.check_error:
            parts.append("Your previous edit this iteration failed the check:\n" + data.check_error
                         + "\nPrevious edit:\n" + (data.previous_edit.model_dump_json() if data.previous_edit else ""))
        return parts

    # ------------------------------------------------------------------ offline

    def search(self, data: CoderInput, ctx: RoleContext) -> CoderOutput:
        tunables = read_tunables(data.policy_source)
        if not tunables:
            out = CoderOutput(edit=None, reason="the policy declares no tunables, so the offline coder has "
                                                "nothing to search; run with a model to edit its code")
            ctx.decide(out.reason)
            return out
        settings = ctx.config.search
        seeds = _search_seeds(data.incumbent, ctx.iteration, settings.episodes)
        base = {s: data.incumbent[s] for s in seeds}
        base_score = search_score(base, base)
        key = settings.seed if settings.seed is not None else ctx.search_key
        seed = int(hashlib.sha256(f"{key}:{ctx.iteration}".encode()).hexdigest()[:8], 16)
        start = lesson_start(data.recall, tunables)
        best, evaluated, started_from = self._cma(data.policy_source, tunables, seeds, seed, base, base_score, ctx,
                                                  start, ctx.task.target)
        evidence = {"seeds": seeds, "incumbent": base, "incumbent_score": base_score.plain(), "candidates": evaluated,
                    "lesson_start": started_from}
        score, values, result = best
        evidence.update(best_score=score.plain(), best=result, best_tunables=values)
        if score.key <= base_score.key or score.tier == 0:  # tier 0: the gate would reject it, whatever it beat
            out = CoderOutput(edit=None, search=evidence,
                              reason=f"no CMA-ES candidate of {evaluated} beat the incumbent on seeds {seeds} as the "
                                     f"gate judges ({score} vs {base_score})")
            ctx.decide(out.reason)
            return out
        # Per seed as the gate sees it: an episode that completes where it failed is improved, whatever it returns.
        improved = [s for s in seeds if result[s] is not None and (base[s] is None or result[s] > base[s])]
        kinds = sorted(gather(data.analyses, "seeds_by_kind"))  # the failure kinds the analysts counted
        changes = ", ".join(f"{t.name} {t.default:g} -> {values[t.name]:g}" for t in tunables
                            if values[t.name] != t.default)
        how = f"CMA-ES over the declared tunables ({evaluated} candidates on dev seeds {seeds})"
        if started_from is not None:
            how = (f"CMA-ES over the declared tunables ({evaluated} candidates on dev seeds {seeds}), started from "
                   f"lesson {started_from}'s settings" if evaluated > 1 else
                   f"the settings of lesson {started_from}, recalled from memory, scored on dev seeds {seeds}")
        edit = Edit(kind="tunables", tunables=values, target_seeds=improved, target_kinds=kinds,
                    rationale=f"{how}: {changes}; mean return there {base_score} -> {score}")
        out = CoderOutput(edit=edit, reason=edit.rationale, search=evidence)
        ctx.decide("proposed the best search candidate", edit=edit.model_dump(mode="json"))
        return out

    def _cma(self, source: str, tunables: list[Tunable], seeds: list[int], seed: int,
             base: dict[int, float | None], base_score: SearchScore, ctx: RoleContext, start: tuple[str, dict[str, float]] | None = None,
             target: float | None = None,
             ) -> tuple[tuple[SearchScore, dict[str, float], dict[int, float | None]], int, str | None]:
        """CMA-ES over the tunables scaled to [0, 1]; the best (score, values, per-seed returns), how many ran, and
        the lesson it started from, if any.

        ``start``: a recalled lesson's settings (``lesson_start``), scored first. Where they beat the incumbent the
        search starts from them; where they already reach the task's ``target`` on every search seed, they are
        the proposal and no generation runs (the lesson saved the search its env steps)."""
        cma = import_cma()
        settings, scorer = ctx.config.search, ctx.score
        low = np.array([t.low for t in tunables], dtype=float)
        span = np.array([t.high - t.low for t in tunables], dtype=float)
        span[span == 0] = 1.0
        x0 = (np.array([t.default for t in tunables], dtype=float) - low) / span
        best: tuple[SearchScore, dict[str, float], dict[int, float | None]] | None = None
        evaluated, started_from = 0, None
        if start is not None:
            lesson_id, values = start
            [result] = scorer([apply_edit(source, Edit(kind="tunables", rationale="search", tunables=values))], seeds)
            evaluated, score = 1, search_score(result, base)
            ctx.decide(f"scored the settings of lesson {lesson_id}: {score} on seeds {seeds} (incumbent "
                       f"{base_score})", lesson=lesson_id, tunables=values, score=score.plain())
            if score.key > base_score.key:
                best, started_from = (score, values, result), lesson_id
                x0 = (np.array([values[t.name] for t in tunables], dtype=float) - low) / span
                if target is not None and all(r is not None and r >= target for r in result.values()):
                    ctx.decide(f"lesson {lesson_id}'s settings reach the target {target:g} on every search seed; "
                               f"proposed without a search", lesson=lesson_id)
                    return best, evaluated, started_from
        # cma's bounded search cannot start in one dimension (its step sizes are never set up: "not yet initialized",
        # in most seeds, on every resume of the same iteration): one tunable gets a second coordinate nothing reads.
        dims = len(tunables)
        start_point = np.clip(x0, 0, 1).tolist() + ([0.5] if dims == 1 else [])
        es = cma.CMAEvolutionStrategy(start_point, settings.sigma, {
            "bounds": [0.0, 1.0], "popsize": settings.population, "seed": seed % (2**31 - 1) + 1, "verbose": -9})
        for generation in range(settings.generations):
            points = es.ask()
            values = [self._values(tunables, low + np.clip(np.asarray(p)[:dims], 0, 1) * span) for p in points]
            sources = [apply_edit(source, Edit(kind="tunables", rationale="search", tunables=v)) for v in values]
            results = scorer(sources, seeds)
            evaluated += len(sources)
            scores = [search_score(r, base) for r in results]
            es.tell(points, _ranks(scores))
            for score, value, result in zip(scores, values, results):
                if best is None or score.key > best[0].key:
                    best = (score, value, result)
            ctx.decide(f"CMA-ES generation {generation + 1}: best {max(scores, key=lambda x: x.key)} on seeds {seeds} "
                       f"(incumbent {base_score})", generation=generation + 1,
                       candidates=[{"tunables": v, "score": s.plain()} for v, s in zip(values, scores)])
        assert best is not None  # generations >= 1 and population >= 2
        return best, evaluated, started_from

    @staticmethod
    def _values(tunables, raw: np.ndarray) -> dict[str, float]:
        """Readable values within bounds: whole numbers for whole-number tunables (whose bounds are whole), else
        about four significant digits of the tunable's span (of the value itself, a span of 0.1 around 1000
        collapsed every candidate onto one value)."""
        out = {}
        for t, v in zip(tunables, raw):
            span = t.high - t.low
            digits = 4 - math.floor(math.log10(span)) if span > 0 else 4
            value = float(round(v)) if t.integer else float(round(float(v), digits))
            out[t.name] = min(max(value, t.low), t.high)
        return out
