"""The settings of components, declared once in their signatures: an argument's annotation gives
its type, and `typing.Annotated` metadata its bounds or choices (`Annotated[int, Range(ge=1)]`,
`Annotated[str, OneOf(TABLE)]`; a `Literal` or an Enum are choices too). `checked` makes a
constructor refuse an argument outside them in one line; the config schema and the configuration
reference read the same declarations (`declared`)."""

from __future__ import annotations

import enum
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, TypeVar, cast

from ddpm_lightning.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
# How a constructor's message words each bound sign.
SIGN_WORDS = {"≥": "at least", ">": "more than", "≤": "at most", "<": "less than"}
NOUNS: dict[type, tuple[str, str]] = {
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a finite number", "finite numbers"),
    str: ("a non-empty string", "non-empty strings"),
    dict: ("a mapping", "mappings"),
    object: ("any value", "values"),
}


def shown_bound(bound: float) -> str:
    """A bound as messages write it: `1`, `0.5`, `4294967295`."""
    return format(bound, "g") if isinstance(bound, float) else str(bound)


def finite_bounds(*pairs: tuple[str, float | None]) -> list[tuple[str, float]]:
    """The (sign, bound) pairs whose bound is given and finite."""
    return [(sign, bound) for sign, bound in pairs if bound is not None and not math.isinf(bound)]


@dataclass(frozen=True)
class Range:
    """Numbers ≥ `ge` or > `gt`, and ≤ `le` or < `lt` (None: no bound); on a list, each item.
    Never NaN; infinite only where a bound is infinite (`Range(ge=0, le=math.inf)`)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: float) -> bool:
        if math.isnan(value) or (math.isinf(value) and value not in (self.ge, self.le)):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    @property
    def infinite(self) -> bool:
        """Whether a bound is infinite, so the value may be too."""
        return any(bound is not None and math.isinf(bound) for bound in (self.ge, self.le))

    def __str__(self) -> str:
        """The bounds as the schema writes them: `≥ 1`, `> 0`, `in (0, 1)`; '' for none."""
        low = finite_bounds(("≥", self.ge), (">", self.gt))
        high = finite_bounds(("≤", self.le), ("<", self.lt))
        if low and high:
            (low_sign, low_bound), (high_sign, high_bound) = low[0], high[0]
            opening, closing = "[" if low_sign == "≥" else "(", "]" if high_sign == "≤" else ")"
            return f"in {opening}{shown_bound(low_bound)}, {shown_bound(high_bound)}{closing}"
        return " ".join(f"{sign} {shown_bound(bound)}" for sign, bound in low + high)

    def in_words(self) -> str:
        """The bounds as a constructor's message writes them: `at least 1`, `in (0, 1)`."""
        sign, _, rest = str(self).partition(" ")
        return f"{SIGN_WORDS[sign]} {rest}" if sign in SIGN_WORDS else str(self)


@dataclass(frozen=True, eq=False)
class OneOf:
    """Choices: the names in `table`, a registry read when a value is checked (so a name
    registered later counts) or a tuple; equal to another with the same names."""

    table: Collection[str]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.table)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OneOf) and self.names == other.names

    def __hash__(self) -> int:
        return hash(self.names)


@dataclass(frozen=True)
class Setting:
    """What one argument allows: its type (bool, int, float, str, list, dict; object: any),
    bounds, choices, the setting of a list's items, and whether it may be null."""

    kind: type = object
    range: Range = Range()
    choices: OneOf | None = None
    item: Setting | None = None
    nullable: bool = False

    @property
    def allowed(self) -> str:
        """In words, as a message or a table says it: `an integer ≥ 1 or null`."""
        return f"{self.words()} or null" if self.nullable else self.words()

    def words(self, plural: bool = False) -> str:
        """`allowed` without `or null`; `plural`: as the items of a list (`integers ≥ 1`)."""
        if self.choices is not None:
            names = self.choices.names
            return names[0] if len(names) == 1 else f"one of {', '.join(names)}"
        if self.item is not None:
            return f"a non-empty list of {self.item.words(plural=True)}"
        noun = NOUNS.get(self.kind, NOUNS[object])[plural]
        if self.range.infinite:
            noun = noun.replace("finite ", "")
        return f"{noun} {self.range}" if str(self.range) else noun

    def accepts(self, value: Any) -> bool:
        """Whether a value as a config holds it (plain YAML types) is allowed."""
        if value is None:
            return self.nullable
        if self.choices is not None:
            return isinstance(value, str) and value in self.choices.names
        if self.item is not None:
            return isinstance(value, list) and bool(value) and all(map(self.item.accepts, value))
        if self.kind in (int, float):
            return is_number(value, self.kind) and value in self.range
        if self.kind is str:
            return isinstance(value, str) and bool(value.strip())
        return self.kind is object or isinstance(value, self.kind)

    def problem(self, value: Any) -> str | None:
        """What a constructor refuses in `value`, in words, or None: only choices and bounds
        (the code converts types itself)."""
        if value is None:
            return None if self.nullable else f"must be {self.words()}"
        if self.choices is not None and value not in self.choices.names:
            return f"is unknown; choose one of {', '.join(self.choices.names)}"
        if self.item is not None and not is_nonempty_within(value, self.item):
            return ", ".join(["must be a non-empty list", *self.item.each()])
        if self.kind in (int, float) and not self.within(value):
            return f"must be {self.range.in_words()}" + (" (or null)" if self.nullable else "")
        return None

    def each(self) -> list[str]:
        """`each at least 1` for a list of these, or nothing without bounds."""
        return [f"each {self.range.in_words()}"] if str(self.range) else []

    def within(self, value: Any) -> bool:
        """Whether `value`, as a number, lies within the bounds (always, without bounds)."""
        if not str(self.range):
            return True
        try:
            return float(value) in self.range
        except (TypeError, ValueError):
            return False


def is_nonempty_within(value: Any, item: Setting) -> bool:
    """Whether `value` is a non-empty sequence (a list, tuple or a config's ListConfig), not
    text, whose items lie within `item`'s bounds."""
    is_list = isinstance(value, Sequence) and not isinstance(value, str)
    return is_list and bool(value) and all(map(item.within, value))


def is_number(value: Any, kind: type) -> bool:
    """An int (or, for a float setting, an int or a float) that is no bool."""
    allowed = (int,) if kind is int else (int, float)
    return isinstance(value, allowed) and not isinstance(value, bool)


def without_none(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether it had it)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation, False
    options = [option for option in typing.get_args(annotation) if option is not type(None)]
    return options[0], len(options) < len(typing.get_args(annotation))


def setting_of(annotation: Any) -> Setting:
    """The Setting an annotation declares: `Annotated[int, Range(ge=1)] | None`,
    `Annotated[Sequence[int], Range(ge=1)]`, `Literal['a', 'b']`, an Enum, `dict[str, Any]`."""
    annotation, nullable = without_none(annotation)
    metadata: list[Any] = []
    if typing.get_origin(annotation) is Annotated:
        annotation, *metadata = typing.get_args(annotation)
    bounds = next((m for m in metadata if isinstance(m, Range)), Range())
    choices = next((m for m in metadata if isinstance(m, OneOf)), None)
    origin = typing.get_origin(annotation) or annotation
    if origin is Literal:
        choices = OneOf(typing.get_args(annotation))
    elif isinstance(origin, type) and issubclass(origin, enum.Enum):
        choices = OneOf(tuple(member.value for member in origin))
    elif origin in NOUNS:
        return Setting(origin, bounds, choices, nullable=nullable)
    elif isinstance(origin, type) and issubclass(origin, Sequence):
        item = setting_of((typing.get_args(annotation) or (Any,))[0])
        item = replace(item, range=bounds, choices=choices or item.choices)
        return Setting(list, item=item, nullable=nullable)
    elif isinstance(origin, type) and issubclass(origin, Mapping):
        return Setting(dict, nullable=nullable)
    return Setting(str if choices else object, choices=choices, nullable=nullable)


def default_setting(default: Any) -> Setting:
    """The Setting of an unannotated argument: its default's type."""
    if isinstance(default, (list, tuple)):
        return Setting(list, item=Setting())
    return Setting(type(default)) if type(default) in NOUNS else Setting(nullable=True)


@functools.cache
def declared(source: Callable[..., Any]) -> dict[str, Setting]:
    """What each named argument of `source` allows (self, *args and **kwargs aside); for a
    TypedDict, each of its keys."""
    hints = typing.get_type_hints(source, include_extras=True)
    if typing.is_typeddict(source):
        return {name: setting_of(hint) for name, hint in hints.items()}
    return {
        name: setting_of(hints[name]) if name in hints else default_setting(parameter.default)
        for name, parameter in inspect.signature(source).parameters.items()
        if name != "self" and parameter.kind not in VARIADIC
    }


def shown(value: Any) -> str:
    """A refused value in a message: strings quoted, tuples as lists."""
    if isinstance(value, tuple):
        value = list(value)
    return repr(value) if isinstance(value, str) else str(value)


def check(key: str, value: Any, setting: Setting) -> None:
    """A ConfigError of one line naming `key` unless `setting` allows `value`."""
    problem = setting.problem(value)
    if problem is not None:
        raise ConfigError(f"{key}={shown(value)} {problem}")


def checked(kind: str) -> Callable[[F], F]:
    """Decorate a constructor (or function) so that, before it runs, each argument given is
    checked against the bounds and choices its annotation declares, a refusal naming
    `kind.argument` (e.g. `data.batch_size=0 must be at least 1`)."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = signature.bind(*args, **kwargs).arguments
            for name, setting in declared(function).items():
                if name in given:
                    check(f"{kind}.{name}", given[name], setting)
            return function(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def bare(setting: Setting) -> Setting:
    """`setting` without bounds or choices: its type alone."""
    item = None if setting.item is None else bare(setting.item)
    return replace(setting, range=Range(), choices=None, item=item)


def unified(key: str, known: Setting | None, other: Setting) -> Setting:
    """The one declaration of `key`, which several components take: theirs when equal, or the
    one with bounds or choices where the other declares the type alone; a ConfigError when
    they differ otherwise (declare it once, e.g. as a shared alias)."""
    if known is None or known == other or other == bare(known):
        return known or other
    if known == bare(other):
        return other
    raise ConfigError(
        f"{key} is declared as {known.allowed} and as {other.allowed}: declare it once"
    )


# Settings several components take, each declared once here.
InChannels = Annotated[int, Range(ge=1)]
NumTimesteps = Annotated[int, Range(ge=2)]
NumClasses = Annotated[int, Range(ge=2)]
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]
