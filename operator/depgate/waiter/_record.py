"""A start-up-cheap stand-in for `@dataclass` (the waiter runs in every init container).

`dataclasses` pulls in `inspect` (and `ast`, `dis`, `tokenize` ...) and generates code with
exec() for every class: ~15 ms before the first attempt. The waiter's records need only
__init__ (positional or keyword, with defaults), __eq__, __hash__ when frozen, __repr__ and
immutability. Modules use it as

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from dataclasses import dataclass      # what mypy checks against
    else:
        from depgate.waiter._record import dataclass

so mypy --strict checks constructors exactly as for real dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable

_MISSING = object()


def dataclass(cls: type | None = None, *, frozen: bool = False) -> object:
    def wrap(klass: type) -> type:
        # not inspect.get_annotations: importing inspect is what this module avoids
        names = tuple(klass.__dict__.get("__annotations__", {}))  # noqa: RUF063
        defaults = {n: klass.__dict__[n] for n in names if n in klass.__dict__}
        for n in defaults:  # instance attributes, not class attributes
            delattr(klass, n)

        def __init__(self: object, *args: object, **kwargs: object) -> None:
            if len(args) > len(names):
                raise TypeError(f"{klass.__name__}() takes {len(names)} arguments, got {len(args)}")
            values = dict(zip(names, args, strict=False))
            for key, value in kwargs.items():
                if key not in names or key in values:
                    raise TypeError(f"{klass.__name__}() got an unexpected or repeated argument {key!r}")
                values[key] = value
            for n in names:
                value = values.get(n, defaults.get(n, _MISSING))
                if value is _MISSING:
                    raise TypeError(f"{klass.__name__}() missing argument {n!r}")
                object.__setattr__(self, n, value)

        def _fields(self: object) -> tuple[object, ...]:
            return tuple(getattr(self, n) for n in names)

        def __eq__(self: object, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return _fields(self) == _fields(other)

        def __repr__(self: object) -> str:
            inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
            return f"{klass.__name__}({inner})"

        methods: dict[str, Callable[..., object]] = {"__init__": __init__, "__eq__": __eq__}
        if "__repr__" not in klass.__dict__:
            methods["__repr__"] = __repr__
        if frozen:

            def __setattr__(self: object, name: str, value: object) -> None:
                raise AttributeError(f"{klass.__name__} is frozen")

            def __hash__(self: object) -> int:
                return hash(_fields(self))

            methods["__setattr__"] = __setattr__
            methods["__hash__"] = __hash__
        else:
            klass.__hash__ = None  # type: ignore[assignment]  # mutable and comparable, like dataclasses
        for key, fn in methods.items():
            setattr(klass, key, fn)
        return klass

    return wrap if cls is None else wrap(cls)
