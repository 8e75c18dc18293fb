"""Where roles come from: the built-in ones, the ``heurist.roles`` entry point group, or ``module:Class``.

A third party ships a role as a ``Role`` subclass and either registers it under the entry
point group ``heurist.roles`` (``name = "package.module:Class"``) or names it as
``module:Class`` in a run config's ``[stages]``. ``heurist roles`` lists every role with
its stage and where it came from.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from importlib.metadata import entry_points

from common.errors import HeuristError
from roles.base import Role
from roles.coder import Coder
from roles.lesson_writer import LessonWriter
from roles.log_parser import LogParser
from roles.reviewer import Reviewer
from roles.simplifier import Simplifier
from roles.stages import FACTS, STAGE_IO, STAGES, Fact, Stage
from roles.test_writer import TestWriter
from roles.video_analyst import VideoAnalyst
from store.config import StageRoles

GROUP = "heurist.roles"
BUILT_IN: tuple[type[Role], ...] = (VideoAnalyst, LogParser, Coder, TestWriter, Reviewer, Simplifier, LessonWriter)


class RoleError(HeuristError):
    """A role that cannot be found, loaded, or placed where it was asked to go."""


@dataclass(frozen=True)
class RoleInfo:
    name: str
    stage: str
    source: str
    cls: type[Role]


ROLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # a role's name names its transcript file and its report's section


def check_role(cls: object, where: str) -> type[Role]:
    if not (isinstance(cls, type) and issubclass(cls, Role)):
        raise RoleError(f"{where} is not a heurist Role subclass; subclass roles.base.Role")
    for attribute in ("name", "stage", "Input", "Output"):
        if not hasattr(cls, attribute):
            raise RoleError(f"{where} has no {attribute}; a role needs name, stage, Input, Output and run()")
    if not (isinstance(cls.name, str) and ROLE_NAME.fullmatch(cls.name)):
        raise RoleError(f"{where} is named {cls.name!r}; a role's name is lower-case letters, digits and _, "
                        f"starting with a letter (it names the role's transcript file)")
    if cls.stage not in STAGES:
        raise RoleError(f"{where} names stage {cls.stage!r}; a stage is one of {', '.join(STAGES)}")
    given, taken = STAGE_IO[cls.stage]
    if cls.Input is not given:
        raise RoleError(f"{where}: the {cls.stage} stage gives its roles {given.__name__}, so Input must be "
                        f"{given.__name__}, not {getattr(cls.Input, '__name__', cls.Input)}")
    if not (isinstance(cls.Output, type) and issubclass(cls.Output, taken)):
        raise RoleError(f"{where}: the {cls.stage} stage takes {taken.__name__} back, so Output must be "
                        f"{taken.__name__} or a subclass of it (roles.stages)")
    for attribute in ("reads", "produces"):
        unknown = set(getattr(cls, attribute)) - set(FACTS)
        if unknown:
            raise RoleError(f"{where} {attribute} {', '.join(sorted(unknown))}, which is not a fact; the facts are "
                            f"{', '.join(FACTS)} (roles.stages)")
    if cls.produces and cls.stage != "analyse":
        raise RoleError(f"{where} produces facts but is a {cls.stage} role; only analyse roles produce facts")
    if cls.reads and cls.stage == "analyse":
        raise RoleError(f"{where} reads facts, but analyse roles run side by side and cannot read each other's")
    return cls


def _load_path(path: str) -> type[Role]:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise RoleError(f"{path!r} is not a role name or a module:Class path; see `heurist roles`")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # As Python imports it: heurist's own command does not look in the current folder (`python -m` would).
        raise RoleError(f"cannot import role module {module_name!r} ({exc}); install it, or put its folder on "
                        f"PYTHONPATH (e.g. `PYTHONPATH=. heurist ...` from the folder that holds it)") from None
    except (Exception, SystemExit) as exc:  # the module's own code failed, or exited: named, never heurist's crash
        raise RoleError(f"role module {module_name!r} failed to load: {_why(exc)}; fix the module") from None
    if not hasattr(module, attribute):
        raise RoleError(f"module {module_name} has no {attribute}; check the module:Class path")
    cls = check_role(getattr(module, attribute), path)
    if cls.name in {role.name for role in BUILT_IN}:
        raise RoleError(f"{path} names its role {cls.name!r}, heurist's own {cls.name}'s name; rename it, so its "
                        f"transcript and report are not read as heurist's")
    return cls


def _why(exc: BaseException, when: str = "as it was imported") -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) {when}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def available() -> dict[str, RoleInfo]:
    """Every role heurist can find, by name: built-ins first, then entry points (which may not shadow them)."""
    roles = {cls.name: RoleInfo(cls.name, cls.stage, "heurist", cls) for cls in BUILT_IN}
    for ep in entry_points(group=GROUP):
        try:
            loaded = ep.load()
        except (Exception, SystemExit) as exc:  # a third party's failure (or exit) must not read as heurist's
            raise RoleError(f"entry point {ep.name} ({ep.value}) of group {GROUP} failed to load: {_why(exc)}; "
                            f"fix or uninstall the package that declares it") from None
        cls = check_role(loaded, f"entry point {ep.name} ({ep.value})")
        if cls.name in roles:
            raise RoleError(f"entry point {ep.value} defines role {cls.name!r}, which "
                            f"{roles[cls.name].source} already defines; rename one")
        dist = getattr(ep, "dist", None)
        roles[cls.name] = RoleInfo(cls.name, cls.stage, f"entry point {ep.value}"
                                   + (f" ({dist.name})" if dist is not None else ""), cls)
    return roles


def resolve(name_or_path: str, stage: Stage) -> Role:
    """An instance of the role, checked to belong to ``stage``."""
    known = available()
    if name_or_path in known:
        cls = known[name_or_path].cls
    elif ":" in name_or_path:
        cls = _load_path(name_or_path)
    else:
        raise RoleError(f"unknown role {name_or_path!r}; known: {', '.join(sorted(known))} "
                        f"(or give module:Class)")
    if cls.stage != stage:
        raise RoleError(f"role {cls.name} belongs to the {cls.stage} stage and cannot be placed in {stage}")
    try:
        return cls()
    except (Exception, SystemExit) as exc:  # a plug-in whose __init__ fails: named, never heurist's crash
        raise RoleError(f"role {cls.name} ({name_or_path}) failed to start: {_why(exc, 'as it started')}; fix the role") from None


def stage_roles(stages: StageRoles, require_facts: bool = True) -> dict[Stage, list[Role]]:
    """The role instances of each stage, as the config places them, checked to fit together. A run that
    already exists is opened with ``require_facts=False``: it goes on as it was started (``unmet_facts``)."""
    roles: dict[Stage, list[Role]] = {
        "analyse": [resolve(name, "analyse") for name in stages.analyse],
        "code": [resolve(stages.code, "code")], "test": [resolve(stages.test, "test")],
        "review": [resolve(name, "review") for name in stages.review],
        "simplify": [resolve(stages.simplify, "simplify")], "lesson": [resolve(stages.lesson, "lesson")]}
    check_stages(roles, require_facts)
    return roles


# What the loop itself reads, besides the roles: failures go to memory after every iteration.
LOOP_READS: dict[str, frozenset[Fact]] = {"the memory of failures (written after every iteration)":
                                          frozenset({"failures"})}


def check_stages(roles: dict[Stage, list[Role]], require_facts: bool = True) -> None:
    """Refuse, in one line, stages without a reviewer, a role placed twice, or (with ``require_facts``)
    something that reads a fact no analyse role produces."""
    if not roles["review"]:
        raise RoleError("stages.review is empty; keep at least the reviewer, whose gate decides every commit")
    names = [role.name for stage in STAGES for role in roles[stage]]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise RoleError(f"role {', '.join(twice)} is placed twice in [stages]; each role runs once an iteration")
    unmet = unmet_facts(roles)
    if unmet and require_facts:
        raise RoleError(unmet[0])


def unmet_facts(roles: dict[Stage, list[Role]]) -> list[str]:
    """One line for each fact that something reads and no analyse role produces, naming who produces it."""
    produced = {fact for role in roles["analyse"] for fact in role.produces}
    readers = {f"{role.name} (the {stage} stage)": role.reads for stage in STAGES for role in roles[stage]}
    unmet = []
    for reader, reads in {**readers, **LOOP_READS}.items():
        for fact in sorted(reads - produced):
            makers = sorted(info.name for info in available().values() if fact in info.cls.produces)
            unmet.append(f"{reader} reads the fact {fact!r}, which no role in stages.analyse produces; add "
                         f"{' or '.join(makers) or 'a role that produces it'} to stages.analyse")
    return unmet
