"""Lessons that travel: distilled from edits, merged and counted in memory, carried to a related task, where an
offline search starts from them; two real offline runs, CartPole-v1 and then CartPoleLongPole-v1, sharing a memory."""

from __future__ import annotations

import json
import textwrap

import pytest

from memory.lessons import distil
from memory.records import FixRecord, LessonHit, LessonRecord, Recall
from policies import POLICY_DIR
from roles.coder import lesson_start
from store.transcripts import TranscriptRecorder
from tests.offline_runs import heurist


def _fix(outcome: str, before: float | None, after: float | None) -> FixRecord:
    return FixRecord(id="fix-1", run_id="run-a", rationale="CMA-ES over the declared tunables: angle_gain 0 -> 1.8",
                     diff_summary="4 lines", task="CartPole-v1", family="classic_control", iteration=2,
                     outcome=outcome, reason="paired test", score_before=before, score_after=after)


TUNE = {"kind": "tunables", "tunables": {"spin_gain": 2.5, "angle_gain": 1.8}, "target_kinds": ["pole_fell"],
        "rationale": "CMA-ES over the declared tunables"}


def test_an_accepted_edit_leaves_a_general_lesson_with_its_evidence_and_settings():
    lesson = distil(_fix("accepted", 9.4, 500.0), TUNE, "run-a")
    assert lesson.statement == ("Tuning angle_gain, spin_gain raised the dev mean against pole_fell on "
                                "classic-control tasks")
    assert (lesson.outcome, lesson.failure_kind, lesson.source_fix_ids) == ("helped", "pole_fell", ("fix-1",))
    assert lesson.evidence == ("CartPole-v1 run-a:2: dev mean 9.4 -> 500 (+490.6)",)
    assert lesson.settings == {"spin_gain": 2.5, "angle_gain": 1.8}


def test_only_a_clearly_worse_rejection_teaches_and_never_its_settings():
    worse = distil(_fix("rejected", 200.0, 150.0), TUNE, "run-a")
    assert worse.outcome == "did_not_help" and "lowered the dev mean" in worse.statement and worse.settings == {}
    assert distil(_fix("rejected", 200.0, 201.0), TUNE, "run-a") is None  # a gain too small to trust: no lesson
    assert distil(_fix("rejected", 200.0, None), TUNE, "run-a") is None  # never evaluated
    code = {"kind": "search_replace", "rationale": "Aim at the predicted landing point. Then serve.",
            "target_kinds": []}
    assert distil(_fix("accepted", 1.0, 2.0), code, "run-a").statement == (
        "Editing the code (Aim at the predicted landing point) raised the dev mean on the failures seen on "
        "classic-control tasks")


def test_a_lesson_that_did_not_help_never_joins_one_that_helped_with_the_same_words(tmp_path):
    """A red-team review (2026-12-05): a lesson's id was its family and words, so a clearly worse edit worded as a
    known lesson that helped joined its evidence to it, and the record stayed "helped"."""
    from memory import MemoryConfig, MemoryStore
    from memory.embedders import MiniLMOnnx

    helped = distil(_fix("accepted", 9.4, 500.0), TUNE, "run-a")
    worse = distil(_fix("rejected", 500.0, 9.0), TUNE, "run-b").model_copy(update={"statement": helped.statement,
                                                                          "id": ""})
    assert worse.with_id().id != helped.with_id().id
    with MemoryStore(MemoryConfig(path=tmp_path / "memory"), embedder=MiniLMOnnx()) as store:
        store.add([helped])
        store.add([worse])
        lessons = {r.outcome: r for r in store.records() if isinstance(r, LessonRecord)}
    assert set(lessons) == {"helped", "did_not_help"}
    assert lessons["helped"].evidence == ("CartPole-v1 run-a:2: dev mean 9.4 -> 500 (+490.6)",)


def test_a_model_lesson_is_one_general_line_without_numbers_of_its_own():
    """The model writes the line; numbers would read as measured, so they are sent back (heurist attaches the
    measured dev means as evidence), and the evidence, outcome and settings stay heurist's."""
    from pydantic import ValidationError

    from roles.lesson_writer import LessonLine

    assert LessonLine(statement="  Pushing toward\nthe fall   keeps the pole up ").statement == \
        "Pushing toward the fall keeps the pole up"
    # Numbers however written (before 2026-12-06 an exponent, a separator other than a point or comma, and numerals
    # that are not digits passed); a lone digit is words, and number words are not read.
    for claim in ("Raising the gain to 2.5 keeps the pole up", "It raised the mean by 300", "A gain of 5e2 helped",
                  "A step of 3E-4 helped", "A gain of 5 e2 helped", "It scored 1_000 more", "It scored 10 000 more",
                  "It scored 10\u202f000 more", "It scored 1'000 more", "A gain of 5\u00b2 helped",
                  "Halve it to \u00bd of the gain", "Round \u216b was best"):
        with pytest.raises(ValidationError, match="leave numbers out"):
            LessonLine(statement=claim)
    for general in ("Use 2 thresholds rather than one", "Pushing earlier keeps the pole up in 1 or 2 ways",
                    "Five hundred steps is the most there is", "Check actions 0, 1 and 2 before a jump",
                    "Use 2 3-frame stacks rather than one"):
        assert LessonLine(statement=general).statement == general
    fix = FixRecord(id="fix-1", run_id="r", rationale="push earlier", diff_summary="", task="CartPole-v1",
                    family="classic_control", iteration=1, outcome="accepted", reason="better",
                    score_before=20.0, score_after=500.0)
    lesson = distil(fix, {"kind": "search_replace", "target_kinds": ["pole_fell"]}, "r",
                    "Pushing toward the fall keeps the pole up")
    assert lesson.statement == "Pushing toward the fall keeps the pole up" and lesson.outcome == "helped"
    assert lesson.evidence == ("CartPole-v1 r:1: dev mean 20 -> 500 (+480)",)


def test_a_search_starts_only_from_a_lesson_that_helped_and_names_every_tunable():
    from envs.contract import read_tunables

    tunables = read_tunables((POLICY_DIR / "cartpole_untuned.py").read_text())
    names = {t.name: 9.0 for t in tunables}  # beyond every bound: clipped to this policy's
    hits = [LessonHit(lesson=LessonRecord(id="lesson-partial", run_id="r", statement="a", family="classic_control",
                                          task="t", settings={"angle_gain": 1.0}), similarity=0.9),
            LessonHit(lesson=LessonRecord(id="lesson-worse", run_id="r", statement="b", family="classic_control",
                                          task="t", outcome="did_not_help", settings=names), similarity=0.9),
            LessonHit(lesson=LessonRecord(id="lesson-whole", run_id="r", statement="c", family="classic_control",
                                          task="t", settings=names), similarity=0.5)]
    recall = Recall(query="q", lessons=hits).model_dump(mode="json")
    chosen, values = lesson_start(recall, tunables)
    assert chosen == "lesson-whole" and values == {t.name: t.high for t in tunables}
    assert lesson_start(Recall(query="q", lessons=hits[:2]).model_dump(mode="json"), tunables) is None


def test_a_lesson_learned_on_cartpole_carries_to_the_long_pole_variant(home):
    tmp, env = home
    (tmp / "run.toml").write_text(textwrap.dedent("""
        report = false
        [budget]
        iterations = 2
        stop_when = "target"
        [eval]
        episodes = 8
        video = false
        holdout = false
        [search]
        population = 6
        generations = 2
        seed = 3
    """))
    runs = {}
    for name, task in (("a", "CartPole-v1"), ("b", "CartPoleLongPole-v1")):
        done = heurist(env, "run", "--env", task, "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                       "--run-dir", tmp / name, "--no-progress")
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = [json.loads(line) for line in (tmp / name / "ledger.jsonl").read_text().splitlines()]
    # The long-pole run's search scored the CartPole lesson's settings first, and they reached the target.
    decisions = [e.summary for e in TranscriptRecorder(tmp / "b").read(1, "coder")]
    assert any("reach the target 475 on every search seed; proposed without a search" in d for d in decisions), decisions
    first = next(e for e in runs["b"] if e["event"] == "iteration")
    assert first["accepted"] and first["mean_after"] == 500.0
    report = heurist(env, "report", tmp / "b")
    assert report.returncode == 0, report.stderr
    page = (tmp / "b" / "report" / "index.html").read_text()
    table = page[page.index('id="lessons-used"'):page.index("</table>", page.index('id="lessons-used"'))]
    assert "raised the dev mean against pole_fell" in table and "<td>1 of 1</td>" in table
    # A replay reaches the same decisions: it is given what the recorded run recalled, not its own empty memory.
    replay = heurist(env, "replay", tmp / "b", "--run-dir", tmp / "b-replay")
    assert replay.returncode == 0, replay.stderr[-2000:]
    # One lesson, learned on both tasks, shown once, and it helped that once.
    found = heurist(env, "memory", "search", "tuning the gains", "--json")
    [lesson] = [h["lesson"] for h in json.loads(found.stdout)["lessons"]]
    assert [e.split()[0] for e in lesson["evidence"]] == ["CartPole-v1", "CartPoleLongPole-v1"]
    assert (lesson["recalled"], lesson["helped"]) == (1, 1) and lesson["helped_in"] == lesson["recalled_in"]
    assert lesson["settings_mean"] == 500.0
