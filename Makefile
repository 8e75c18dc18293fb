# The two commands a newcomer needs: `make run` (set up, then the main job) and `make test`.
export MUJOCO_GL ?= egl
export SDL_VIDEODRIVER ?= dummy

.PHONY: setup run test benchmark

.venv/.installed: pyproject.toml scripts/bootstrap
	./scripts/bootstrap

setup: .venv/.installed

# The main job, offline and with no key: evaluate the CartPole starter on the dev seeds, with failure clips.
run: setup
	.venv/bin/heurist eval policies/cartpole.py --env CartPole-v1 --video --out runs/clips

test: setup
	.venv/bin/python -m pytest

benchmark: setup
	.venv/bin/python benchmarks/eval_throughput.py
	.venv/bin/python benchmarks/memory_speed.py
