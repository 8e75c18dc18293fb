"""The reviewer: a statistical gate in code first, then (with a model) a review of the diff for gaming.

The gate compares the candidate with the incumbent on the identical dev seeds: every
regression test must pass, no seed that completed before may fail now, and the paired
per-seed gain must be positive and either significant by a one-sided Wilcoxon signed-rank
test (scipy) or free of losses (better on some seeds, worse on none). Offline, the gate is
the whole review. A simplification (``graph.nodes.Nodes.simplify``) is judged by the non-inferiority
gate instead: it must lose nothing, not gain something.
"""

from __future__ import annotations

import math

from roles.base import Role, RoleContext
from roles.stages import LLMReview, ReviewInput, Verdict


def _wilcoxon_greater(values: list[float]) -> float:
    """One-sided Wilcoxon signed-rank p-value that ``values`` lie above 0 (NaN read as 1: no evidence).

    scipy.stats is imported here, at the first gate, not with this module: it takes half a second, and every
    heurist command (``heurist show``, a resume that finds the run finished) would pay it."""
    from scipy import stats

    p_value = float(stats.wilcoxon(values, alternative="greater", zero_method="zsplit").pvalue)
    return 1.0 if math.isnan(p_value) else p_value


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def statistical_gate(data: ReviewInput, alpha: float, min_improvement: float, pareto_seeds: int = 2) -> Verdict:
    seeds = sorted(set(data.incumbent) & set(data.candidate))
    new_failures = [s for s in seeds if data.incumbent[s] is not None and data.candidate[s] is None]
    fixed = [s for s in seeds if data.incumbent[s] is None and data.candidate[s] is not None]
    paired = [s for s in seeds if data.incumbent[s] is not None and data.candidate[s] is not None]
    before = [data.incumbent[s] for s in paired]
    after = [data.candidate[s] for s in paired]
    deltas = [a - b for a, b in zip(after, before)]
    verdict = Verdict(accept=False, reasons=[], mean_before=_mean(before), mean_after=_mean(after),
                      mean_delta=_mean(deltas), paired_seeds=len(paired), new_failures=new_failures)
    reasons = verdict.reasons
    if not data.tests_passed:
        reasons.append(f"regression tests failed: {data.tests_report.strip()[:300] or 'see the test transcript'}")
    if new_failures:
        reasons.append(f"episodes that completed before now fail on seeds {new_failures}")
    if fixed and not new_failures and data.tests_passed and (verdict.mean_delta or 0.0) >= 0:
        # Episodes that failed (a crash, a timeout, a bad action) now complete and nothing got worse
        # on average: that is the improvement, even where no completed return can be paired.
        verdict.accept = True
        reasons.append(f"episodes that failed before now complete on seeds {fixed}; no new failures; "
                       f"paired mean change {verdict.mean_delta or 0.0:+.2f} on {len(paired)} seeds; tests pass")
        return verdict
    if not paired:
        reasons.append("no dev seed completed under both policies, so nothing can be compared")
        return verdict
    if all(d == 0 for d in deltas):
        reasons.append(f"identical returns on all {len(paired)} paired seeds")
        return verdict
    verdict.p_value = _wilcoxon_greater(deltas)
    gain = verdict.mean_delta or 0.0
    # On identical seeds, better on several and worse on none is an improvement even when too
    # few seeds differ for a rank test: a policy at the ceiling on most seeds that fixes the
    # last two could otherwise never be accepted. One seed alone stays a matter for the test.
    better = sum(d > 0 for d in deltas)
    dominates = pareto_seeds > 0 and better >= pareto_seeds and all(d >= 0 for d in deltas)
    if gain <= min_improvement:
        reasons.append(f"mean gain {gain:+.3f} over {len(paired)} paired seeds is not above {min_improvement:g}")
    elif dominates and not reasons:
        verdict.accept = True
        reasons.append(f"mean {verdict.mean_before:.2f} -> {verdict.mean_after:.2f} ({gain:+.2f}): better on "
                       f"{better} of {len(paired)} paired dev seeds and worse on none "
                       f"(one-sided Wilcoxon p={verdict.p_value:.3g}); tests pass")
        return verdict
    elif verdict.p_value >= alpha:
        reasons.append(f"mean gain {gain:+.3f} is not significant (one-sided Wilcoxon p={verdict.p_value:.3g}, "
                       f"needs < {alpha:g})")
    if not reasons:
        verdict.accept = True
        reasons.append(f"mean {verdict.mean_before:.2f} -> {verdict.mean_after:.2f} ({gain:+.2f}) on "
                       f"{len(paired)} paired dev seeds, one-sided Wilcoxon p={verdict.p_value:.3g}; tests pass")
    return verdict


def non_inferiority_gate(data: ReviewInput, seed_tolerance: float = 0.0, mean_tolerance: float = 0.0,
                         alpha: float = 0.05, seeds_named: str = "dev") -> Verdict:
    """Whether a simplification loses nothing on the identical dev seeds: every regression test passes, no episode
    that completed before fails now, no seed's return falls by more than ``seed_tolerance``, and the mean does not
    fall by more than ``mean_tolerance``. A mean that did not fall passes outright; one that fell, by no more than
    the margin, must also pass a one-sided Wilcoxon signed-rank test of the paired changes shifted by the margin
    ("worse by the margin or more" rejected at ``alpha``, a paired non-inferiority test), so a fall within the
    margin on a handful of seeds is not enough. ``seeds_named`` says which seeds these are, in the reasons."""
    seeds = sorted(set(data.incumbent) & set(data.candidate))
    new_failures = [s for s in seeds if data.incumbent[s] is not None and data.candidate[s] is None]
    still_failing = [s for s in seeds if data.incumbent[s] is None and data.candidate[s] is None]
    paired = [s for s in seeds if data.incumbent[s] is not None and data.candidate[s] is not None]
    deltas = [data.candidate[s] - data.incumbent[s] for s in paired]
    verdict = Verdict(accept=False, reasons=[], mean_before=_mean([data.incumbent[s] for s in paired]),
                      mean_after=_mean([data.candidate[s] for s in paired]), mean_delta=_mean(deltas),
                      paired_seeds=len(paired), new_failures=new_failures)
    reasons = verdict.reasons
    if not data.tests_passed:
        reasons.append(f"regression tests failed: {data.tests_report.strip()[:300] or 'see the test transcript'}")
    if new_failures:
        reasons.append(f"episodes that completed before now fail on seeds {new_failures}")
    worse = [(s, d) for s, d in zip(paired, deltas) if d < -seed_tolerance]
    if worse:
        listed = ", ".join(f"{s} ({d:+.3g})" for s, d in worse[:5])
        reasons.append(f"worse beyond the tolerance of {seed_tolerance:g} on seeds {listed}")
    if reasons:
        return verdict
    if not paired and not still_failing:
        reasons.append(f"no {seeds_named} seed completed under both policies, so nothing can be compared")
        return verdict
    if all(d >= 0 for d in deltas):
        verdict.accept = True
        same = all(d == 0 for d in deltas)
        reasons.append((f"identical returns on all {len(paired)} paired {seeds_named} seeds" if same else
                        f"worse on no seed (mean {verdict.mean_delta or 0.0:+.3g})") + "; no new failures; tests pass")
        return verdict
    delta = verdict.mean_delta or 0.0
    if delta >= 0:  # some seeds lower, within the seed tolerance, and the mean not lower: nothing lost on average
        verdict.accept = True
        reasons.append(f"mean change {delta:+.3g}; no seed worse beyond {seed_tolerance:g}; no new failures; "
                       f"tests pass")
        return verdict
    if delta < -mean_tolerance:
        reasons.append(f"the mean fell by {-delta:.3g}, more than the tolerance of {mean_tolerance:g} "
                       f"(simplify.mean_tolerance)")
        return verdict
    shifted = [d + mean_tolerance for d in deltas]
    verdict.p_value = _wilcoxon_greater(shifted) if any(d != 0 for d in shifted) else 1.0
    if verdict.p_value >= alpha:
        reasons.append(f"mean change {delta:+.3g}: not shown to be within {mean_tolerance:g} of the incumbent "
                       f"(one-sided Wilcoxon p={verdict.p_value:.3g}, needs < {alpha:g})")
        return verdict
    verdict.accept = True
    reasons.append(f"mean change {delta:+.3g}, within {mean_tolerance:g} (one-sided Wilcoxon p={verdict.p_value:.3g}); "
                   f"no seed worse beyond {seed_tolerance:g}; no new failures; tests pass")
    return verdict


class Reviewer(Role[ReviewInput, Verdict]):
    name = "reviewer"
    stage = "review"
    Input = ReviewInput
    Output = Verdict

    def run(self, data: ReviewInput, ctx: RoleContext) -> Verdict:
        review = ctx.config.review
        verdict = statistical_gate(data, review.alpha, review.min_improvement, review.pareto_seeds)
        ctx.decide("statistical gate: " + ("accept" if verdict.accept else "reject"), verdict=verdict.model_dump())
        if not verdict.accept or ctx.offline:
            return verdict
        opinion = ctx.llm.structured(ctx.transcript, [
            {"role": "system", "content": self.prompt()},
            {"role": "user", "content": f"Task: {data.task}\nThe coder's rationale: {data.rationale}\n\n"
                                        f"Diff of the workspace (policy and tests):\n{data.diff}"}], LLMReview)
        verdict.llm_review = opinion
        if opinion.games_the_evaluation:
            verdict.accept = False
            verdict.reasons = ["the review found a change that games the evaluation: " + "; ".join(opinion.reasons)]
        return verdict
