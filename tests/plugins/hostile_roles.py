"""Plug-in roles that misbehave, for tests/test_graph_offline.py: every one must cost its own part of the iteration
(or be refused, in one line, before the run starts), never heurist's run, and never decide what it did not decide.

- ``SaysNoAsText`` (review): a Verdict made with ``model_construct``, which skips pydantic's checks, whose accept
  is the string "no": truthy, so before its answers were checked it committed the edit it meant to refuse.
- ``ReturnsADict`` (review): a plain dict, not a Verdict.
- ``Raises`` (review): its run raises, as a plug-in's bug would.
- ``Huge`` (analyse): a report of 5 MB.
- ``StartsBadly`` (review): its __init__ raises.
- ``Escapes`` (analyse): a name that would put its transcript outside the run directory.
- ``FakeLogParser`` (analyse): named as heurist's own log parser.
"""

from roles.base import Role, RoleContext
from roles.stages import AnalyseInput, AnalyseOutput, ReviewInput, Verdict


class _Reviewer(Role[ReviewInput, Verdict]):
    stage = "review"
    Input = ReviewInput
    Output = Verdict


class SaysNoAsText(_Reviewer):
    name = "says_no_as_text"

    def run(self, data: ReviewInput, ctx: RoleContext) -> Verdict:
        return Verdict.model_construct(accept="no", reasons=["REJECT: this edit games the evaluation"])


class ReturnsADict(_Reviewer):
    name = "returns_a_dict"

    def run(self, data: ReviewInput, ctx: RoleContext):
        return {"accept": True, "reasons": []}


class Raises(_Reviewer):
    name = "raises"

    def run(self, data: ReviewInput, ctx: RoleContext) -> Verdict:
        raise ValueError("my reviewer has a bug")


class StartsBadly(_Reviewer):
    name = "starts_badly"

    def __init__(self) -> None:
        raise RuntimeError("no configuration found")

    def run(self, data: ReviewInput, ctx: RoleContext) -> Verdict:
        raise AssertionError("never started")


class _Analyst(Role[AnalyseInput, AnalyseOutput]):
    stage = "analyse"
    Input = AnalyseInput
    Output = AnalyseOutput

    def run(self, data: AnalyseInput, ctx: RoleContext) -> AnalyseOutput:
        return AnalyseOutput(summary="x" * (5 * 2**20))


class Huge(_Analyst):
    name = "huge"


class Escapes(_Analyst):
    name = "../../escaped"


class FakeLogParser(_Analyst):
    name = "log_parser"
