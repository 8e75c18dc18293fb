"""The base of every settings model a person writes: run configs, campaign files, memory and embedder settings.

A config is typed by hand (TOML, JSON, a command-line option), so what pydantic would quietly make of a slip is
refused instead, with the key it is under: a key it does not know, an infinite or NaN number (JSON has no infinity:
an ``inf`` budget was written to run.json as null, and the run then failed to read its own config), and a bool
where a number goes (pydantic reads true as 1 and false as 0: ``holdout_control = false`` was no control at all).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


def takes_bool(annotation: Any) -> bool:
    """Whether a field's type takes a bool: bool itself, a union with it, or anything but a plain number (a model, a
    text, Any), whose own validation says what it takes."""
    if annotation is bool:
        return True
    args = typing.get_args(annotation)
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(takes_bool(a) for a in args if a is not type(None))
    return annotation not in (int, float)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # On the model, not on each field ("*"): pydantic allows no before-validator on a discriminator field (an
    # embedder's ``kind``). The error is then the table's, and names the key in its message.
    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(field.alias or name)
                if isinstance(value, bool) and not takes_bool(field.annotation):
                    raise ValueError(f"{name}: give a number, not {str(value).lower()}")
        return data
