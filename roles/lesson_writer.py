"""The lesson writer: one general line distilled from an edit that taught something (the lesson stage).

After each accepted edit, and each one rejected because it made the dev mean clearly worse, the ``remember``
node asks this role for the lesson's line (``memory.lessons``). Offline the line is heurist's template (the
change's kind, the failure kind it targeted, what it did to the dev mean). With a model it is one general
sentence, in one structured call, told the family's nearest lessons so that the same lesson is written in the
same words and merges into one record whose evidence grows. Either way the line is all the role writes: the
evidence (task, run, iteration, the dev means), the outcome and the tuned settings are heurist's own, taken
from the fix record, so a lesson's numbers are always measured ones.
"""

from __future__ import annotations

import json
import re
import unicodedata

from pydantic import BaseModel, ConfigDict, Field, field_validator

from roles.base import Role, RoleContext
from roles.stages import LessonInput, LessonOutput

# A measured-looking number: two digits or more, digits joined by a point, comma or underscore ("2.5", "0,5",
# "1_000"), groups of three after a space, a thin space or an apostrophe ("10 000", "1'000"), or an exponent ("5e2",
# "3E-4"). A lone digit is words, and so is a list of them ("actions 0, 1 and 2", "2 3-frame stacks"). Number words
# ("five hundred") are not read.
NUMBER = re.compile(r"\d[\d.,_]*\d|\d{1,3}(?:['\u2019\u00a0\u2009\u202f ]\d{3})+|\d ?[eE][+-]?\d")


def general_line(statement: str) -> bool:
    """Whether a lesson line makes no claim a number would: the measured ones are heurist's, in its evidence.
    Numerals that are not plain digits count too: superscripts, fractions, Roman numerals as characters ("5²", "½")."""
    return NUMBER.search(statement) is None and not any(
        unicodedata.category(c) in ("No", "Nl") for c in statement)


class LessonLine(BaseModel):
    """One general lesson, as the model writes it."""

    model_config = ConfigDict(extra="forbid")

    statement: str = Field(..., min_length=8, max_length=240, description="One general sentence: the kind of change, "
                                                                          "the failure it addresses, and whether it "
                                                                          "helped. No numbers, seeds or task names.")

    @field_validator("statement")
    @classmethod
    def _general(cls, value: str) -> str:
        line = " ".join(value.split())
        if not general_line(line):  # the model's numbers would be read as measured; heurist attaches the measured ones
            raise ValueError("leave numbers out of the lesson: heurist attaches the measured dev means as evidence")
        return line


class LessonWriter(Role[LessonInput, LessonOutput]):
    name = "lesson_writer"
    stage = "lesson"
    Input = LessonInput
    Output = LessonOutput

    def run(self, data: LessonInput, ctx: RoleContext) -> LessonOutput:
        if ctx.offline:
            ctx.decide(f"the template lesson: {data.template}", statement=data.template)
            return LessonOutput(statement=data.template, reason="the offline template")
        brief = [f"Task: {data.task} (the {data.family} family): {data.task_description}",
                 "The edit: " + json.dumps({"kind": data.edit.kind, "rationale": data.edit.rationale,
                                            "target_kinds": data.edit.target_kinds, "tunables": data.edit.tunables}),
                 f"What it changed: {data.diff_summary[:2000] or 'see the rationale'}",
                 ("It was accepted: the dev mean rose." if data.accepted else
                  "It was rejected: the dev mean fell.") + f" The verdict: {data.reason[:800]}",
                 "Lessons of this family already known (answer one of them word for word if it says the same):\n"
                 + ("\n".join(f"- {line}" for line in data.known) or "none yet")]
        messages = [{"role": "system", "content": self.prompt()}, {"role": "user", "content": "\n\n".join(brief)}]
        line = ctx.llm.structured(ctx.transcript, messages, LessonLine)
        return LessonOutput(statement=line.statement, reason="written by the model")
