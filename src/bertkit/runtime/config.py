"""Configs composed of sections, as torchtitan composes its job config (`torchtitan/config/job_config.py`).

A *section* is a frozen dataclass of the flags of one concern (the model's size, the data, the optimizer, the
run's outputs, the processes); a command's config is a frozen dataclass of sections only (its own flags are a
section too, its `task`). It is built once, from the command line, in the launching process (`from_flags`), and
never changed: a value found later (`--resume latest` resolved, a step count derived from the data) makes a new
config (`replace`), so the workers and the snapshot's run_config.json see one object.

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
    """One flag of a command: its name, the section holding it, its dataclass field, its type hint, this command's
    default and help."""

    name: str
    section: str
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
    """Base of a command's config: a frozen dataclass whose fields are all sections."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}  # this command's defaults for flags declared in a shared section
    HELP: ClassVar[dict[str, str]] = {}  # this command's help for them, where its default means something else
    cli_hidden: ClassVar[frozenset[str]] = frozenset()  # accepted for the seed's command lines, not shown

    @classmethod
    def sections(cls) -> dict[str, type]:
        """{attribute: section class}, in declaration order. Raises TypeError for a field that is not a section."""
        cached = cls.__dict__.get("_sections")
        if cached is None:
            hints = typing.get_type_hints(cls)
            cached = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
            outside = [name for name, hint in cached.items() if not _is_section(hint)]
            if outside:
                raise TypeError(f"{cls.__name__}: {', '.join(outside)} not in a section")
            cls._sections = cached
        return cached

    @classmethod
    def flags(cls) -> list[Flag]:
        """Every flag, in declaration order (section by section). Raises TypeError when two share a name."""
        cached = cls.__dict__.get("_flags")
        if cached is not None:
            return cached
        out, seen = [], {}
        for section, sec in cls.sections().items():
            hints = typing.get_type_hints(sec)
            for f in dataclasses.fields(sec):
                if f.name in seen:
                    raise TypeError(f"{cls.__name__}: flag {f.name} is in {seen[f.name]} and {section}")
                seen[f.name] = section
                default = cls.DEFAULTS.get(f.name, _default(f))
                out.append(Flag(f.name, section, f, hints[f.name], default, cls.HELP.get(f.name, f.metadata["help"])))
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
    def resolve(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A command's rules over its flat flag values before the config is built: names that mean one thing,
        defaults derived from other flags, checks across sections. Returns the values (ValueError: refused)."""
        return values

    @classmethod
    def _assemble(cls, values: dict[str, Any]):
        return cls(**{name: sec(**{f.name: values[f.name] for f in dataclasses.fields(sec)})
                      for name, sec in cls.sections().items()})  # fmt: skip

    def flat(self) -> dict[str, Any]:
        """{flag: value} for every flag, in declaration order: the banner, run_config.json, resume comparisons."""
        return {f.name: getattr(getattr(self, f.section), f.name) for f in self.flags()}

    def replace(self, **changes: Any):
        """A new config with these flags changed as given (each routed to its section, whose checks run again; no
        `resolve` rule is applied again). Raises TypeError for a name that is not a flag."""
        where = {f.name: f.section for f in self.flags()}
        unknown = set(changes) - set(where)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no flag {', '.join(sorted(unknown))}")
        by_section: dict[str, dict[str, Any]] = {}
        for name, value in changes.items():
            by_section.setdefault(where[name], {})[name] = value
        return dataclasses.replace(
            self, **{sec: dataclasses.replace(getattr(self, sec), **values) for sec, values in by_section.items()}
        )


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
