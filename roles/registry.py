"""Where roles come from: the built-in ones, the ``heurist.roles`` entry point group, or ``module:Class``.

A third party ships a role as a ``Role`` subclass and either registers it under the entry
point group ``heurist.roles`` (``name = "package.module:Class"``) or names it as
``module:Class`` in a run config's ``[stages]``. ``heurist roles`` lists every role with
its stage and where it came from.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from envs.errors import HeuristError
from roles.base import Role
from roles.coder import Coder
from roles.log_parser import LogParser
from roles.reviewer import Reviewer
from roles.test_writer import TestWriter
from roles.video_analyst import VideoAnalyst

GROUP = "heurist.roles"
BUILT_IN: tuple[type[Role], ...] = (VideoAnalyst, LogParser, Coder, TestWriter, Reviewer)


class RoleError(HeuristError):
    """A role that cannot be found, loaded, or placed where it was asked to go."""


@dataclass(frozen=True)
class RoleInfo:
    name: str
    stage: str
    source: str
    cls: type[Role]


def _check(cls: object, where: str) -> type[Role]:
    if not (isinstance(cls, type) and issubclass(cls, Role)):
        raise RoleError(f"{where} is not a heurist Role subclass; subclass roles.base.Role")
    for attribute in ("name", "stage", "Input", "Output"):
        if not hasattr(cls, attribute):
            raise RoleError(f"{where} has no {attribute}; a role needs name, stage, Input, Output and run()")
    return cls


def _load_path(path: str) -> type[Role]:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise RoleError(f"{path!r} is not a role name or a module:Class path; see `heurist roles`")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RoleError(f"cannot import role module {module_name!r} ({exc}); install it or fix the path") from None
    if not hasattr(module, attribute):
        raise RoleError(f"module {module_name} has no {attribute}; check the module:Class path")
    return _check(getattr(module, attribute), path)


def available() -> dict[str, RoleInfo]:
    """Every role heurist can find, by name: built-ins first, then entry points (which may not shadow them)."""
    roles = {cls.name: RoleInfo(cls.name, cls.stage, "heurist", cls) for cls in BUILT_IN}
    for ep in entry_points(group=GROUP):
        try:
            loaded = ep.load()
        except Exception as exc:  # a third party's import error must not read as heurist's crash
            raise RoleError(f"entry point {ep.name} ({ep.value}) of group {GROUP} failed to load: "
                            f"{type(exc).__name__}: {exc}") from None
        cls = _check(loaded, f"entry point {ep.name} ({ep.value})")
        if cls.name in roles:
            raise RoleError(f"entry point {ep.value} defines role {cls.name!r}, which "
                            f"{roles[cls.name].source} already defines; rename one")
        dist = getattr(ep, "dist", None)
        roles[cls.name] = RoleInfo(cls.name, cls.stage, f"entry point {ep.value}"
                                   + (f" ({dist.name})" if dist is not None else ""), cls)
    return roles


def resolve(name_or_path: str, stage: str) -> Role:
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
    return cls()
