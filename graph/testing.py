"""Verify's regression tests: each test file against a policy version in a sandbox of its own, and the
fail-to-pass rule that decides whether a new test is kept.

Files run in parallel, as many at once as there are evaluation workers; each runs alone on a
throwaway read-only copy (``envs.regression``), so no file can change another's verdict.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from common import interrupts
from common.events import ScenarioSteps
from envs.regression import PolicyUnderTest, TestFileResult, run_test_file
from graph.context import Services
from graph.state import NewTestDecision

FIRST_TEST = '''"""Written by heurist when the run began: the policy loads, resets and acts on the first dev seed."""

from heurist_testkit import run_episode


def test_policy_runs_a_dev_episode():
    result = run_episode({seed})
    assert result["status"] == "ok", result.get("error")
'''


def new_test_name(taken: set[str], iteration: int, stem: str = "iteration") -> str:
    """heurist names every new test file (a writer's name is a suggestion): an accepted test is never
    overwritten, and a new one cannot take an old one's place."""
    name, n = f"tests/test_{stem}_{iteration:04d}.py", 1
    while name in taken:
        n += 1
        name = f"tests/test_{stem}_{iteration:04d}_{n}.py"
    return name


def scenario_test_name(taken: set[str], iteration: int) -> str:
    """heurist's own scenario test of an iteration (``roles.test_writer.scenario_test``), named apart from the test
    writer's so a reader sees which is which."""
    return new_test_name(taken, iteration, "scenarios")


REPLAYED = re.compile(r"""run_scenario\(\s*(['"])([A-Za-z0-9_-]{1,160})\1""")


def replayed_scenarios(tests: dict[str, str]) -> set[str]:
    """The scenarios heurist's own scenario tests among these (name -> source) replay by name: the ones that pin them.

    Only heurist's own (``roles.test_writer.scenario_test``, each asserting the failure does not come back): a
    writer's test pinned a scenario by naming it anywhere, a comment or a call whose result it never checked, and so
    kept it from the analysts and from a test of its own (a red-team review, 2026-12-05)."""
    return {match.group(2) for name, text in tests.items() if is_scenario_test(name)
            for match in REPLAYED.finditer(text)}


def is_scenario_test(name: str) -> bool:
    return name.startswith("tests/test_scenarios_")


def run_test_files(s: Services, jobs: list[tuple[str, str, PolicyUnderTest]],
                   candidate: PolicyUnderTest) -> tuple[dict[str, TestFileResult], dict[str, TestFileResult]]:
    """Each (file, source, policy) in its own sandbox; the results on the candidate and on the other policy."""
    timeout = s.config.eval.episode_timeout_s * 4
    workers = max(1, min(len(jobs), s.config.eval.workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="heurist-tests") as pool:
        with interrupts.deferred():  # submit holds the pool's locks, which the interpreter's exit takes again
            futures = [(name, policy, pool.submit(run_test_file, name, text, policy, s.limits(), timeout))
                       for name, text, policy in jobs]
        # In steps: a Ctrl-C stops the wait wherever the kernel delivered it, and the tests' threads then kill
        # their sandboxes (common/interrupts.py) rather than this run waiting them out.
        done = interrupts.results(future for _, _, future in futures)
        results = [(name, policy, result) for (name, policy, _), result in zip(futures, done)]
    on_candidate = {name: r for name, policy, r in results if policy is candidate}
    on_incumbent = {name: r for name, policy, r in results if policy is not candidate}
    return on_candidate, on_incumbent


def run_accepted_tests(s: Services, tests: dict[str, str], under_test: PolicyUnderTest, iteration: int,
                       where: str) -> dict[str, TestFileResult]:
    """The accepted test files against one policy outside verify (the coder's run_tests tool, the simplify stage),
    the env steps of the scenarios they replayed written to the ledger, since no tests_run line counts them."""
    results, _ = run_test_files(s, [(name, text, under_test) for name, text in tests.items()], under_test)
    if under_test.scenario_steps:
        s.ledger.append(ScenarioSteps(run_id=s.run_id, iteration=iteration, where=where,
                                      env_steps=under_test.scenario_steps))
    return results


def judge_new_tests(new: Iterable[str], on_candidate: dict[str, TestFileResult],
                    on_incumbent: dict[str, TestFileResult]) -> dict[str, NewTestDecision]:
    """Fail-to-pass: a new test is kept only if it fails on the incumbent and passes on the candidate."""
    decisions: dict[str, NewTestDecision] = {}
    for name in new:
        if not on_candidate[name].passed:
            where = ""
            if is_scenario_test(name):
                # Read in the morning as an alarm when the candidate scores well on that seed: what it means, short
                # enough to survive the history's 300 characters after the gate's own reason.
                where = (" from the incumbent's saved moment (one it may never reach from the start; the seeds "
                         "judge the edit)")
            decisions[name] = {"kept": False,
                               "reason": f"it fails on the candidate{where}: {on_candidate[name].reason}"}
        elif on_incumbent[name].passed:
            decisions[name] = {"kept": False, "reason": "it passes on the incumbent too, so it guards nothing "
                                                        "this edit changed (a regression test must fail before "
                                                        "the edit and pass after it)"}
        else:
            decisions[name] = {"kept": True, "reason": f"fails on the incumbent ({on_incumbent[name].reason}) "
                                                       f"and passes on the candidate"}
    return decisions
