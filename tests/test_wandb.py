"""Weights & Biases when asked: a real offline W&B run (wandb's own files, read back record by record), the same
scalars as TensorBoard, each iteration sent once however often the node that sends it runs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from store.config import ConfigError, WandbConfig
from tests.offline_runs import heurist

wandb = pytest.importorskip("wandb")  # in the test extra; the feature itself is optional


def _history(folder: Path) -> list[dict]:
    """Every history row in the offline W&B runs under ``folder``, read from wandb's record files (a LevelDB log
    of protobuf ``Record``s after a 7-byte header), as `wandb sync` reads them."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        pos, pieces = 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0 and length == 0:  # the rest of a block, zero-filled
                pos += left
                continue
            chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
            pieces = chunk if kind in (1, 2) else pieces + chunk
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pieces)
                if record.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                 for item in record.history.item})
    return rows


def test_a_run_logs_its_scalars_to_wandb_once_each_under_cleanrls_names(home):
    tmp, env = home
    env = {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_DATA_DIR": str(tmp / "wandb-data")}
    (tmp / "run.toml").write_text('report = false\n[budget]\niterations = 2\nstop_when = "never"\n'
                                  '[eval]\nepisodes = 4\nvideo = false\nholdout = false\n'
                                  '[search]\npopulation = 2\ngenerations = 1\nseed = 1\n')
    run_dir = tmp / "run"
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                   "--run-dir", run_dir, "--no-progress", "--wandb")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _history(run_dir)
    assert [r["_step"] for r in rows] == [1, 2], rows  # one row per iteration, each once
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    iterations = [e for e in ledger if e["event"] == "iteration"]
    assert [r["charts/episodic_return"] for r in rows] == [e["mean_after"] for e in iterations]
    assert [r["global_step"] for r in rows] == [e["spent"]["env_steps"] for e in iterations]
    assert {"charts/SPS", "heurist/accepted_edits", "heurist/tokens", "heurist/usd"} <= set(rows[0])

    # The node that sends them runs again (a resume after a kill): nothing is sent twice, no new W&B run is made.
    from store.scalars import run_rows
    from store.wandb_log import by_index, log_scalars

    runs_before = sorted(run_dir.glob("wandb/offline-run-*"))
    sent = log_scalars(run_dir, "x", WandbConfig(enabled=True, mode="offline"),
                       by_index(run_rows(run_dir), "heurist/iteration"), {})
    assert sent == 0 and sorted(run_dir.glob("wandb/offline-run-*")) == runs_before


def test_wandb_ids_are_valid_and_two_names_never_share_one():
    from store.wandb_log import wandb_id

    assert wandb_id("20261203-041341-cartpole-v1-15637b") == "20261203-041341-cartpole-v1-15637b"
    long = "campaign-" + "x" * 60
    ids = {wandb_id(long + "-2026-12-03T04:13:41+00:00"), wandb_id(long + "-2026-12-04T04:13:41+00:00")}
    assert len(ids) == 2 and all(len(i) <= 64 and i.replace("-", "").replace("_", "").isalnum() for i in ids)


def test_wandb_asked_for_where_it_is_not_installed_is_refused_before_the_run(monkeypatch):
    import importlib.util

    from store import wandb_log

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="wandb is not installed here; `pip install wandb`"):
        wandb_log.check_wandb(WandbConfig(enabled=True))
    wandb_log.check_wandb(WandbConfig(enabled=False))  # not asked: nothing needed
