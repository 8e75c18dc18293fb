"""The test writer: a pytest regression test, kept in the workspace, for the failure an edit fixes.

The tests call ``heurist_testkit`` (``envs/testkit``), whose ``run_episode`` asks heurist
for one real episode of the policy under test, run by heurist's sandboxed evaluator. Every
test ever accepted keeps running in every later iteration, so a capability that an edit
once bought cannot silently be lost by a later one. A new test is kept only if it fails on
the incumbent and passes on the candidate (``graph.nodes.verify``), and heurist names its
file, so a new test never replaces an accepted one.

Offline, tests come from a template: the test writer runs the candidate on the seeds the
edit targets and pins, per seed, that the episode completes and keeps at least half of
the gain over the incumbent. With a model, the model writes the test (it may also pin
what the policy does on a recorded observation, say); a file that does not parse or
defines no test is answered with the error and asked again.
"""

from __future__ import annotations

import re

from common.safe_text import one_line
from roles.base import Role, RoleContext
from roles.stages import TestFile, TestWriterInput

KIT_API = """heurist_testkit (import it in the test file; the test runs alone, on a copy with no policy file):
- run_episode(seed: int) -> dict: one episode of the policy under test on a dev seed. Keys: status ("ok",
  "policy_error", "invalid_action", "env_error", "timeout", "crash"), return, length, termination, events
  (list of {step, kind, description}), trace ({actions, rewards, mode_counts, windows}).
- run_scenario(name: str) -> dict: a saved failure scenario (names below: the incumbent's, and earlier runs'
  recalled from memory): the simulator restored
  some steps before that failure, the policy under test warmed up, then run over the window with its own
  actions. Keys: scenario, return (over the window), length, ending, events, failed_again (the same failure
  happened again). A test that the fix holds at the moment of failure, without replaying a whole episode.
- first_event(result, kind) -> int | None: the step of the first failure event of that kind.
- load_policy() -> the policy under test, run elsewhere: reset(seed), then act(obs, info) returns its action
  and sets .diagnostics; to pin what it does on an observation from a trace."""


def template_test(iteration: int, seeds: dict[int, tuple[float | None, float]], kinds: list[str]) -> TestFile:
    """One test per seed: the episode completes, keeping at least half of the gain measured for the edit."""
    functions = []
    for seed, (before, after) in sorted(seeds.items()):
        floor = after if before is None else before + 0.5 * (after - before)
        was = "failed" if before is None else f"returned {before:g}"
        functions.append(f'''

def test_seed_{seed}_keeps_iteration_{iteration}_fix():
    """Before iteration {iteration} seed {seed} {was}; the fix made it {after:g}. Keep at least {floor:g}."""
    result = run_episode({seed})
    assert result["status"] == "ok", result.get("error")
    assert result["return"] >= {floor!r}, (result["return"], result["events"][:3])''')
    if not functions:  # nothing completed to pin: at least the policy must load and reset
        functions.append('''

def test_policy_loads_and_resets():
    policy = load_policy()
    policy.reset(0)''')
    # The kinds are the coder's words (its edit's target_kinds): in heurist's own test file only as plain names. A
    # kind holding '"""' closed the docstring, and the model's code after it ran in every later test run, though
    # the user had set the test writer offline (a red-team review, 2026-12-05).
    kinds_text = ", ".join(re.sub(r"[^A-Za-z0-9_. -]", "_", kind)[:64] for kind in kinds[:10]) or "its failures"
    source = (f'"""Regression tests for iteration {iteration}: the seeds whose {kinds_text} the edit fixed."""\n\n'
              "from heurist_testkit import load_policy, run_episode\n" + "".join(functions) + "\n")
    return TestFile(filename=f"tests/test_iteration_{iteration:04d}.py", source=source, seeds=sorted(seeds),
                    rationale=f"pins the gain on seeds {sorted(seeds)} so later edits cannot lose it")


def scenario_test(iteration: int, name: str, recalled: bool = False) -> str:
    """One test of one saved scenario: from the moment before that failure, the policy must not fail that way again.
    heurist adds it beside the writer's test (``graph.nodes.write_tests``), in a file of its own; like every new
    test, it is kept only if it fails on the incumbent and passes on the candidate. ``recalled``: an earlier run's
    failure of this task, recalled from memory (one the incumbent already survives gets no test; one the edit fixes
    does)."""
    whose = "an earlier run's failure, recalled from memory" if recalled else \
        f"the incumbent's failure before iteration {iteration}"
    function = ("test_recalled_" if recalled else "test_") + "".join(c if c.isalnum() else "_" for c in name.lower())
    return (f'"""Scenario test for iteration {iteration}: {whose}, replayed from the saved moment before it\n'
            f'(envs.scenarios)."""\n\n'
            "from heurist_testkit import run_scenario\n\n\n"
            f"def {function}():\n"
            f"    result = run_scenario({name!r})\n"
            f'    assert not result["failed_again"], (result["events"][:3], result["return"])\n')


def _recalled(scenarios: dict[str, str], most: int = 20) -> str:
    names = sorted(scenarios.items())
    more = f"; and {len(names) - most} more" if len(names) > most else ""
    # The text is a recalled failure's description: from a store anyone may write, so one line whatever it holds.
    return "; ".join(one_line(f"{name} ({text[:160]})") for name, text in names[:most]) + more or "none"


def _returned(value: float | None) -> str:
    return "failed" if value is None else f"{value:g}"


class TestWriter(Role[TestWriterInput, TestFile]):
    name = "test_writer"
    stage = "test"
    Input = TestWriterInput
    Output = TestFile
    reads = frozenset({"seeds_by_kind"})

    def run(self, data: TestWriterInput, ctx: RoleContext) -> TestFile:
        if not ctx.offline:
            return self.ask_model(data, ctx)
        seeds = [s for s in data.edit.target_seeds if s in data.incumbent][:3]
        if not seeds:  # no target named: the incumbent's worst seeds
            seeds = sorted(data.incumbent, key=lambda s: (data.incumbent[s] is not None, data.incumbent[s] or 0))[:3]
        # The candidate's dev returns, measured before the writer runs (a plug-in's caller may not give them).
        measured = ({s: data.candidate[s] for s in seeds} if all(s in data.candidate for s in seeds)
                    else ctx.score([data.candidate_source], seeds)[0])
        gains = {s: (data.incumbent[s], measured[s]) for s in seeds
                 if measured[s] is not None and (data.incumbent[s] is None or measured[s] > data.incumbent[s])}
        if not gains:  # the edit fixed none of them: pin that the episodes still complete at their new level
            gains = {s: (measured[s], measured[s]) for s in seeds if measured[s] is not None}
        test = template_test(data.iteration, gains, data.edit.target_kinds)
        ctx.decide(f"wrote {test.filename} from the template", seeds=test.seeds, measured=measured)
        return test

    def ask_model(self, data: TestWriterInput, ctx: RoleContext) -> TestFile:
        gains = "\n".join(f"seed {s}: {_returned(data.incumbent.get(s))} -> {_returned(r)}"
                          for s, r in sorted(data.candidate.items()) if r != data.incumbent.get(s))
        existing = "\n\n".join(f"# {name}\n{text}" for name, text in sorted(data.existing_test_sources.items()))
        prompt = (f"Task: {data.task}\nIteration {data.iteration}. The edit:\n{data.edit.model_dump_json()}\n\n"
                  f"Failures before the edit: {data.failure_summary}\nSeeds by failure kind: {data.seeds_by_kind}\n"
                  f"Incumbent returns per dev seed: {data.incumbent}\n"
                  f"What the edit changed, measured on the dev seeds (incumbent -> candidate):\n"
                  f"{gains or 'no seed changed'}\n\nThe candidate policy:\n```python\n{data.candidate_source}\n```\n\n"
                  f"The accepted tests (they keep running; do not repeat them):\n{existing[:6000] or 'none'}\n\n"
                  f"Saved failure scenarios of the incumbent, by dev seed: {data.scenarios or 'none'}\n"
                  f"Earlier runs' failures of this task recalled from memory, as scenarios: "
                  f"{_recalled(data.recalled_scenarios)}\n\n"
                  f"{KIT_API}")
        return ctx.llm.structured(ctx.transcript, [{"role": "system", "content": self.prompt()},
                                                   {"role": "user", "content": prompt}], TestFile)
