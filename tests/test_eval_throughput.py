"""The throughput benchmark's fit of the sandbox's cost: a round's share and a step's, and the ceiling they put on one
worker (benchmarks/eval_throughput.sandbox_fit). The benchmark itself is too slow for the suite; its arithmetic is not."""

from __future__ import annotations

import re

import pytest

from benchmarks.eval_throughput import sandbox_fit


def _timings(bare: float, record: float, per_round: float, per_step: float, wide: int) -> dict[str, float]:
    """Microseconds a step as the benchmark measures them, for a sandbox costing exactly ``per_step + per_round / w``."""
    inside = bare + record
    return {"bare": bare, "in": inside, "solo": inside + per_step + per_round,
            "one": inside + per_step + per_round / wide}


def _read(line: str) -> tuple[float, float, float]:
    found = re.search(r"(-?[\d.]+) us a round \+ (-?[\d.]+) us a step.*1w / bare <= ([\d.]+)$", line)
    assert found, line
    return tuple(float(g) for g in found.groups())


def test_the_fit_gives_back_the_round_and_the_step_it_was_made_of():
    per_round, per_step, ceiling = _read(sandbox_fit(_timings(80.0, 12.0, 240.0, 18.0, wide=32), 32))
    assert per_round == pytest.approx(240, abs=0.5) and per_step == pytest.approx(18.0, abs=0.05)
    assert ceiling == pytest.approx(80 / (80 + 12 + 18), abs=0.005)  # at any width the round's share can vanish


def test_a_step_cost_below_zero_is_noise_and_the_ceiling_is_the_record_alone():
    line = sandbox_fit(_timings(12.5, 6.4, 142.0, -0.8, wide=32), 32)
    per_round, per_step, ceiling = _read(line)
    assert per_step == pytest.approx(-0.8, abs=0.05) and "noise: read as 0" in line
    assert ceiling == pytest.approx(12.5 / 18.9, abs=0.005)


def test_the_pair_floor_runs_the_same_episodes_as_the_bare_loop():
    """benchmarks/pair_floor.py compares ways of running the same episodes: its floor (the policy in a forked process,
    no bookkeeping) and heurist's unsandboxed pair take exactly the bare loop's steps, each episode to its end, at
    a width that leaves episodes waiting and a width with slots never filled."""
    from benchmarks.eval_throughput import bare_loop, with_dev_seeds
    from benchmarks.pair_floor import floor_pair, heurist_pair, pinned
    from envs.tasks import get_task
    from policies import POLICY_DIR

    spec = with_dev_seeds(get_task("CartPole-v1"), 5)
    policy = POLICY_DIR / "cartpole_untuned.py"  # episodes of about 9 steps: the test takes a moment
    steps, _ = bare_loop(spec, None, policy, spec.seeds.dev)
    assert steps > 5
    for width in (2, 8):
        assert pinned(floor_pair, spec, policy, spec.seeds.dev, width)[0] == steps
        assert pinned(heurist_pair, spec, policy, spec.seeds.dev, width)[0] == steps
