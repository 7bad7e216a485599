"""Configs composed of sections, as torchtitan composes its job config (`torchtitan/config/job_config.py`).

A *section* is a frozen dataclass of the flags of one concern (the model's size, the data, the optimizer, the
run's outputs, the processes); a command's config is a frozen dataclass of sections and of the few flags that are
its own. It is built once, from the command line, in the launching process (`from_flags`), and never changed: a
value found later (`--resume latest` resolved, a step count derived from the data) makes a new config
(`replace`), so the workers and the snapshot's run_config.json see one object.

The command line stays the seed's: flat. Every field of every section is one flag with its own name
(`--learning_rate` is `cfg.optimizer.learning_rate`); names are unique within a command (`flags` raises
otherwise). A command gives a shared section's flag its own default (and, where the default means something else
there, its own help) in `DEFAULTS` / `HELP` instead of declaring the flag again.

    cfg = SquadConfig.from_flags(learning_rate=3e-5, init_checkpoint="uncased_L-12_H-768_A-12")
    cfg.optimizer.learning_rate, cfg.flat()["init_checkpoint"], cfg.replace(iter_num=100)

Errors: TypeError for a name that is not one of the command's flags; ValueError (one line naming the flag) from a
section's or the command's checks.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar


class Section:
    """Base of a section: a frozen dataclass whose fields are flags (each with metadata["help"]). Its
    __post_init__ checks its own values (ValueError naming the flag); `resolve` rewrites flat values before it is
    built (a flag that is another's other name)."""

    @staticmethod
    def resolve(values: dict[str, Any]) -> dict[str, Any]:
        return values


@dataclass(frozen=True)
class Flag:
    """One flag of a command: its name, the section holding it (None: the command's own), its dataclass field,
    its type hint, this command's default and help."""

    name: str
    section: str | None
    field: dataclasses.Field
    hint: Any
    default: Any
    help: str

    @property
    def metadata(self):
        return self.field.metadata


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


class Composed:
    """Base of a command's config: a frozen dataclass of sections (and flags of its own)."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}  # this command's defaults for flags declared in a shared section
    HELP: ClassVar[dict[str, str]] = {}  # this command's help for them, where its default means something else
    cli_hidden: ClassVar[frozenset[str]] = frozenset()  # accepted for the seed's command lines, not shown

    @classmethod
    def flags(cls) -> list[Flag]:
        """Every flag, in declaration order (section by section). Raises TypeError when two share a name."""
        cached = cls.__dict__.get("_flags")
        if cached is not None:
            return cached
        out, seen = [], {}
        hints = typing.get_type_hints(cls)
        for top in dataclasses.fields(cls):
            hint = hints[top.name]
            if _is_section(hint):
                inner = typing.get_type_hints(hint)
                members = [(top.name, f, inner[f.name]) for f in dataclasses.fields(hint)]
            else:
                members = [(None, top, hint)]
            for section, f, h in members:
                if f.name in seen:
                    raise TypeError(
                        f"{cls.__name__}: flag {f.name} is in {seen[f.name]} and {section or 'the command'}"
                    )
                seen[f.name] = section or "the command"
                default = cls.DEFAULTS.get(f.name, _default(f))
                out.append(Flag(f.name, section, f, h, default, cls.HELP.get(f.name, f.metadata.get("help", ""))))
        unknown = (set(cls.DEFAULTS) | set(cls.HELP)) - set(seen)
        if unknown:
            raise TypeError(f"{cls.__name__}: DEFAULTS/HELP name no flag: {sorted(unknown)}")
        cls._flags = out
        return out

    @classmethod
    def from_flags(cls, **given: Any):
        """The config from flag values (the rest at this command's defaults), through `resolve`.
        Raises TypeError for an unknown name, ValueError for values the command refuses."""
        flags = cls.flags()
        unknown = set(given) - {f.name for f in flags}
        if unknown:
            raise TypeError(f"{cls.__name__} has no flag {', '.join(sorted(unknown))}")
        values = {f.name: f.default for f in flags} | given
        missing = [n for n, v in values.items() if v is dataclasses.MISSING]
        if missing:
            raise ValueError(f"--{missing[0]} is required")
        for section in cls.sections().values():  # a section's own rules (the seed's --use_fp16, ...)
            values = section.resolve(values)
        cls._assemble(values)  # each section checks its flags, in order, before the command's rules combine them
        return cls._assemble(cls.resolve(values))

    @classmethod
    def sections(cls) -> dict[str, type]:
        """{attribute: section class} of this command's sections."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if _is_section(hints[f.name])}

    @classmethod
    def resolve(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A command's rules over its flat flag values before the config is built: names that mean one thing,
        defaults derived from other flags, checks across sections. Returns the values (ValueError: refused)."""
        return values

    @classmethod
    def _assemble(cls, values: dict[str, Any]):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for top in dataclasses.fields(cls):
            hint = hints[top.name]
            if _is_section(hint):
                kwargs[top.name] = hint(**{f.name: values[f.name] for f in dataclasses.fields(hint)})
            else:
                kwargs[top.name] = values[top.name]
        return cls(**kwargs)

    def flat(self) -> dict[str, Any]:
        """{flag: value} for every flag, in declaration order: the banner, run_config.json, resume comparisons."""
        return {f.name: getattr(getattr(self, f.section) if f.section else self, f.name) for f in self.flags()}

    def replace(self, **changes: Any):
        """A new config with these flags changed as given (each routed to its section, whose checks run again; no
        `resolve` rule is applied again). Raises TypeError for a name that is not a flag."""
        where = {f.name: f.section for f in self.flags()}
        unknown = set(changes) - set(where)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no flag {', '.join(sorted(unknown))}")
        top: dict[str, Any] = {}
        by_section: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            if where[name] is None:
                top[name] = value
            else:
                by_section.setdefault(where[name], {})[name] = value
        for section, values in by_section.items():
            top[section] = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **top)

    def metadata(self) -> Iterator[tuple[str, Any]]:
        """(flag, its field's metadata) for every flag: the resume rules are read from it."""
        return ((f.name, f.metadata) for f in self.flags())


def one_of(names: tuple[str, str], a, b, default=None):
    """The value of a flag that has two names (the seed's and Google's); both may be given only when they agree."""
    if a is not None and b is not None and a != b:
        raise ValueError(f"--{names[0]} {a} and --{names[1]} {b} name the same thing; give one")
    return a if a is not None else b if b is not None else default


def positive(section: object, *names: str, zero: bool = False) -> None:
    """ValueError naming the first flag among `names` that is not positive (with zero=True: negative); None
    values (derived later) pass."""
    for name in names:
        value = getattr(section, name)
        if value is not None and (value < 0 if zero else value <= 0):
            raise ValueError(f"--{name} must be {'non-negative' if zero else 'positive'}, got {value}")
