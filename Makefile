# The two commands a newcomer needs: `make run` (set up, then the main job) and `make test`.
export MUJOCO_GL ?= egl
export SDL_VIDEODRIVER ?= dummy

.PHONY: setup run test test-slow benchmark bytecode

.venv/.installed: pyproject.toml scripts/bootstrap
	./scripts/bootstrap

# heurist's own modules compiled ahead, plain and under -O (the env processes'): where PYTHONDONTWRITEBYTECODE is set,
# as in many containers and on our CI machines, no process writes them, so every process heurist starts (a run, its
# sandboxed policy and test processes, its fork servers) compiled what it imports again: 0.1-0.3 s of CPU per run
# command. Only files changed since the last compile are compiled again. The packages are pyproject.toml's own list.
bytecode: .venv/.installed
	packages=$$(.venv/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["setuptools"]["packages"])') && \
	.venv/bin/python -m compileall -q -j 0 $$packages >/dev/null && \
	.venv/bin/python -O -m compileall -q -j 0 $$packages >/dev/null

setup: .venv/.installed bytecode

# The main job, offline and with no key: heurist improves a deliberately weak CartPole policy until it
# reaches the task's target, then evaluates the best policy once on the holdout seeds.
run: setup
	.venv/bin/heurist run --env CartPole-v1 --policy policies/cartpole_untuned.py --iterations 10

# Two pytest processes per core (at most 8): most tests wait on subprocesses, servers and limits, and the
# suite uses about half of 2 cores' CPU time, so four at once on 2 cores finished first (side by side on
# 2026-12-04: 5:51 with four, 6:15 with three, 6:43 with two); every test waits on events, never on a guess
# at how fast this is.
TEST_PROCESSES := $(shell n=$$(( $$(nproc) * 2 )); [ $$n -gt 8 ] && n=8; echo $$n)
test: setup
	.venv/bin/python -m pytest -n $(TEST_PROCESSES) --dist worksteal

# Tests too slow for the suite (the Pong and Breakout starters' 20 episodes, campaigns driven to their end on the
# embedded Ray, a two-node Ray cluster losing a node, ten kill -9s in one run, a full disk then a read-only one);
# .ci/run runs them after `make test`.
test-slow: setup
	.venv/bin/python -m pytest -m slow

benchmark: setup
	.venv/bin/python benchmarks/eval_throughput.py
	.venv/bin/python benchmarks/pair_floor.py
	.venv/bin/python benchmarks/memory_speed.py
	.venv/bin/python benchmarks/soak.py
	.venv/bin/python benchmarks/campaign_scaling.py
	.venv/bin/python benchmarks/eval_on_ray.py
	.venv/bin/python benchmarks/lessons_transfer.py
	.venv/bin/python benchmarks/setup_once.py
	.venv/bin/python benchmarks/scenario_tests.py
