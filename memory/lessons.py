"""Lessons distilled from edits: one general line per accepted (or clearly rejected) edit, with its evidence.

A lesson's line is written by the lesson writer (``roles.lesson_writer``): with a model, one general sentence;
offline, a template filled from the edit itself: its kind (tunables searched, or code
changed), the failure kind it targeted, and what it did to the dev mean. The statement leaves the
numbers out, so the same lesson learned again (another seed, another run, another task of the
family) is one lesson whose evidence grows (``memory.store`` merges them by statement); the numbers
go into ``evidence``, and the tuned values into ``settings``, where a later offline search on a task
of the same family can start from them (``roles.coder``).

An edit is clearly rejected when its candidate's dev mean fell below the incumbent's: a rejection for
a gain too small to trust teaches nothing either way, so it leaves no lesson.
"""

from __future__ import annotations

import re

from memory.records import FixRecord, LessonRecord

KIND = re.compile(r"[a-z][a-z0-9_]{0,39}")
FAMILY_WORDS = {"classic_control": "classic-control", "box2d": "Box2D", "atari": "Atari", "mujoco": "MuJoCo",
                "custom": "custom"}


def teaches(fix: FixRecord) -> bool:
    """Whether a remembered edit teaches a lesson: accepted, or rejected with a clear loss (and evaluated)."""
    gain = fix.score_delta
    return gain is not None and (fix.outcome == "accepted" or gain < 0)


def target_kinds(edit: dict) -> list[str]:
    # A model names the kinds it targets: only a word that can be a failure kind goes into a lesson, which other
    # runs' prompts will read.
    return [k for k in edit.get("target_kinds") or [] if isinstance(k, str) and KIND.fullmatch(k)]


def template_statement(fix: FixRecord, edit: dict) -> str:
    """The offline lesson: what kind of change it was, what it did to the dev mean, against which failure."""
    kinds = target_kinds(edit)
    against = f"against {kinds[0]}" if kinds else "on the failures seen"
    family = FAMILY_WORDS.get(fix.family, fix.family)
    if edit.get("kind") == "tunables" and edit.get("tunables"):
        what = f"Tuning {_names(edit['tunables'])}"
    else:
        what = f"Editing the code ({_first_clause(edit.get('rationale') or fix.rationale)})"
    effect = "raised the dev mean" if fix.outcome == "accepted" else "lowered the dev mean"
    return f"{what} {effect} {against} on {family} tasks"


def distil(fix: FixRecord, edit: dict, run_id: str, statement: str | None = None) -> LessonRecord | None:
    """The lesson of one remembered edit, or None when it teaches none (rejected without a clear loss, or never
    evaluated). ``statement``: the lesson writer's line (a model's, ``roles.lesson_writer``), else the template's;
    the evidence, the settings and the outcome are heurist's own, from the fix record, whoever wrote the line."""
    if not teaches(fix):
        return None
    gain = fix.score_delta
    helped = fix.outcome == "accepted"
    kinds = target_kinds(edit)
    return LessonRecord(
        run_id=run_id, statement=statement or template_statement(fix, edit), family=fix.family, task=fix.task,
        outcome="helped" if helped else "did_not_help", failure_kind=kinds[0] if kinds else None,
        source_fix_ids=(fix.id,) if fix.id else (),
        evidence=(f"{fix.task} {run_id}:{fix.iteration}: dev mean {fix.score_before:.4g} -> "
                  f"{fix.score_after:.4g} ({gain:+.4g})",),
        settings={k: float(v) for k, v in (edit.get("tunables") or {}).items()} if helped else {},
        settings_mean=fix.score_after if helped and edit.get("tunables") else None)


def _names(tunables: dict) -> str:
    names = sorted(tunables)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _first_clause(text: str) -> str:
    """The rationale's first clause, short: the lesson is one line."""
    first = re.split(r"(?<=[.;:])\s|\n", " ".join(text.split()), maxsplit=1)[0].rstrip(".;:")
    return first if len(first) <= 120 else first[:117].rstrip() + "..."


__all__ = ["distil", "target_kinds", "teaches", "template_statement"]
