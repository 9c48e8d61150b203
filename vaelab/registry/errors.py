"""The error of a bad configuration, and messages that name the key, the value and a close match.

Every refusal of a config value is a :class:`ConfigError` whose one-line message names the dotted
key, the offending value and, where the valid choices are finite, the choices and the closest
(:func:`suggest`); :func:`format_validation_error` turns a pydantic error into such a line.
"""

from __future__ import annotations

import difflib
import re

from pydantic import BaseModel, ValidationError

__all__ = [
    "ConfigError",
    "format_validation_error",
    "suggest",
]


class ConfigError(ValueError):
    """A configuration value is unknown, malformed or does not fit the data.

    The message always names the offending key (dotted path), the bad value and, where there is a
    finite set of valid choices, the choices and the closest match.
    """



def suggest(value: str, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` when ``value`` is close to one of ``choices``, else ``''``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(model: type[BaseModel] | None, path: list) -> list[str] | None:
    """The field names of the (nested) pydantic model reached by ``path``, if it is one."""
    for part in path:
        field = model.model_fields.get(part) if model is not None else None
        ann = field.annotation if field is not None else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else None


def format_validation_error(
    key: str,
    err: ValidationError,
    model: type[BaseModel] | None = None,
    list_keys: bool = True,
) -> str:
    """One clause per pydantic error, each naming the dotted key and the offending input.

    An unknown key (pydantic's ``extra_forbidden``) gets a close-match suggestion among the keys
    of its table when ``model`` (the validated class) is given, and the list of valid keys unless
    ``list_keys`` is false; a value outside a ``Literal`` gets a suggestion among its choices.

    :param key: dotted prefix of every location (``""`` for a whole config).
    :param err: the pydantic error.
    :param model: the pydantic model class that raised ``err``.
    :param list_keys: whether to list the valid keys after an unknown key.
    """
    lines = []
    for e in err.errors():
        parts = [p for p in e["loc"] if p != "__root__"]
        loc = ".".join(str(p) for p in parts)
        full = f"{key}.{loc}" if key and loc else (key or loc)
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            fields = _fields_at(model, parts[:-1]) if parts else None
            hint = ""
            if fields:
                hint = suggest(str(parts[-1]), fields)
                if list_keys:
                    hint += f"; valid keys: {', '.join(fields)}"
            lines.append(f"{full}: unknown key (set to {got!r}){hint}")
            continue
        hint = ""
        if e["type"] == "literal_error":
            choices = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
            hint = suggest(str(got), choices)
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for our validators
        lines.append(f"{full}: {msg} (got {got!r}){hint}")
    return "; ".join(lines)
