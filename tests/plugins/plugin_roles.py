"""Example plug-in roles (docs/roles.md's worked examples), used by the tests.

- ``FailureRate`` (analyse): failure events per 100 env steps, by kind; produces no fact.
- ``FirstFailures`` (analyse): each failing seed's first failure event; produces the ``failures`` and
  ``seeds_by_kind`` facts, so it can stand in for the built-in log parser.
- ``CompletesTestWriter`` (test): a regression test that every seed the edit improved still completes
  at its new return or better; it replaces the built-in test writer.
"""

from roles.base import Role, RoleContext
from roles.stages import AnalyseInput, AnalyseOutput, FailureFinding, TestFile, TestWriterInput


class FailureRate(Role[AnalyseInput, AnalyseOutput]):
    """Failure events per 100 env steps, by kind, over the incumbent's dev episodes."""

    name = "failure_rate"
    stage = "analyse"
    Input = AnalyseInput
    Output = AnalyseOutput

    def run(self, data: AnalyseInput, ctx: RoleContext) -> AnalyseOutput:
        episodes = data.evaluation.episodes
        steps = sum(e.length for e in episodes) or 1
        counts: dict[str, int] = {}
        for episode in episodes:
            for event in episode.events:
                counts[event.kind] = counts.get(event.kind, 0) + 1
        rates = {kind: round(100 * n / steps, 3) for kind, n in counts.items()}
        summary = ", ".join(f"{kind}: {rate} per 100 steps" for kind, rate in rates.items()) or "no failure events"
        ctx.decide(summary, per_100_steps=rates)
        return AnalyseOutput(summary=summary, details={"per_100_steps": rates})


class FirstFailures(Role[AnalyseInput, AnalyseOutput]):
    """Each failing dev seed's first failure event."""

    name = "first_failures"
    stage = "analyse"
    Input = AnalyseInput
    Output = AnalyseOutput
    produces = frozenset({"failures", "seeds_by_kind"})

    def run(self, data: AnalyseInput, ctx: RoleContext) -> AnalyseOutput:
        failures = [FailureFinding(seed=e.seed, step=e.events[0].step, kind=e.events[0].kind,
                                   description=e.events[0].description)
                    for e in data.evaluation.episodes if e.events]
        seeds_by_kind: dict[str, list[int]] = {}
        for failure in failures:
            seeds_by_kind.setdefault(failure.kind, []).append(failure.seed)
        summary = f"{len(failures)} of {len(data.evaluation.episodes)} dev episodes failed"
        ctx.decide(summary, seeds=[f.seed for f in failures])
        return AnalyseOutput(summary=summary, failures=failures, seeds_by_kind=seeds_by_kind)


class CompletesTestWriter(Role[TestWriterInput, TestFile]):
    """Pins that each seed the edit targets still completes with at least its incumbent's return plus one."""

    name = "completes_test_writer"
    stage = "test"
    Input = TestWriterInput
    Output = TestFile
    reads = frozenset({"seeds_by_kind"})

    def run(self, data: TestWriterInput, ctx: RoleContext) -> TestFile:
        failing = sorted({seed for seeds in data.seeds_by_kind.values() for seed in seeds})
        seeds = [s for s in failing if s in data.incumbent][:2] or sorted(data.incumbent)[:2]
        lines = ["from heurist_testkit import run_episode", ""]
        for seed in seeds:
            floor = (data.incumbent[seed] or 0.0) + 1.0
            lines += ["", f"def test_seed_{seed}_does_better_than_before():", f"    result = run_episode({seed})",
                      f"    assert result['status'] == 'ok' and result['return'] >= {floor!r}", ""]
        ctx.decide(f"pinned seeds {seeds}", seeds=seeds)
        return TestFile(source="\n".join(lines), rationale="each failing seed must do better than before",
                        seeds=seeds)
