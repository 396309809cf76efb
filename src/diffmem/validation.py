"""Declarative checks of configuration fields, in the spirit of scikit-learn's parameter constraints.

Every configuration's ``validate()`` states one constraint (or a tuple of them) per field and hands
them to :func:`check`; the first value a constraint refuses raises ``ValueError`` with a message built
from the constraint, so every configuration words the same problem the same way::

    NAME must DESCRIPTION (HINT), got VALUE

``NAME`` is the field's name, or its command-line flag, or ``Class.field``, as the configuration
chooses (``label``); a string value is shown quoted. Checks between fields (``batch_size <= n``)
follow the declarative part as plain code. This module imports nothing, so configurations that the
command-line parser is built from stay light.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Demo:
...     rate: float = 0.5
...     kind: str = "a"
>>> check(Demo(rate=2.0), {"rate": Interval(0, 1, hint="0.5 is common"), "kind": OneOf("a", "b")})
Traceback (most recent call last):
...
ValueError: rate must lie in (0, 1) (0.5 is common), got 2.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

__all__ = ["Constraint", "Each", "Integer", "Interval", "OneOf", "Optional", "Satisfies", "check", "show"]


def show(value: Any) -> str:
    """A value as a message shows it: strings quoted (``'ddim'``), everything else as ``str`` (``0.5``)."""
    return repr(value) if isinstance(value, str) else str(value)


class Constraint:
    """What a field's value must be. Subclasses define :meth:`accepts` and :meth:`describe`.

    Parameters
    ----------
    hint : str, optional
        Advice shown in parentheses after the description (``"the paper uses 1/3"``).
    text : str, optional
        Replaces the generated description: a phrase that follows "must" (``"be integers >= 2"``).
    message : str, optional
        Replaces the whole message: a template with ``{label}`` and ``{value}``.
    """

    def __init__(self, *, hint: str | None = None, text: str | None = None, message: str | None = None) -> None:
        self.hint, self.text, self.message = hint, text, message

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` satisfies the constraint."""
        raise NotImplementedError

    def _describe(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        """What the value must be, as the phrase after "must" (``"lie in (0, 1)"``)."""
        return self.text if self.text is not None else self._describe()

    def problem(self, label: str, value: Any, got: str = ", got {value}") -> str | None:
        """The message for ``value`` of the field ``label``, or None when the value is accepted."""
        if self.accepts(value):
            return None
        if self.message is not None:
            return self.message.format(label=label, value=show(value))
        hint = f" ({self.hint})" if self.hint else ""
        return f"{label} must {self.describe()}{hint}{got.format(value=show(value))}"


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not math.isnan(float(value))


def _bound(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


class Interval(Constraint):
    """A real number between ``low`` and ``high`` (either may be None: unbounded); NaN is refused.

    ``closed`` is ``"neither"``, ``"left"``, ``"right"`` or ``"both"``; ``finite`` also refuses
    infinities; ``what`` names the quantity (``Interval(0, 1, "left", what="a decay")``: "be a decay in
    [0, 1)").

    >>> Interval(0, 1).describe(), Interval(0).describe(), Interval(0, closed="left").describe()
    ('lie in (0, 1)', 'be positive', 'be >= 0')
    >>> Interval(0, finite=True).describe()
    'be a finite number > 0'
    """

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        closed: Literal["neither", "left", "right", "both"] = "neither",
        *,
        finite: bool = False,
        what: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if closed not in ("neither", "left", "right", "both"):
            raise ValueError(f"closed must be 'neither', 'left', 'right' or 'both', got {closed!r}")
        self.low, self.high, self.finite, self.what = low, high, finite, what
        self.left, self.right = closed in ("left", "both"), closed in ("right", "both")

    def accepts(self, value: Any) -> bool:
        if not _real(value) or (self.finite and not math.isfinite(float(value))):
            return False
        v = float(value)
        if self.low is not None and not (v >= self.low if self.left else v > self.low):
            return False
        return self.high is None or (v <= self.high if self.right else v < self.high)

    def _describe(self) -> str:
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            span = f"{'[' if self.left else '('}{_bound(lo)}, {_bound(hi)}{']' if self.right else ')'}"
            return f"be {self.what} in {span}" if self.what else f"lie in {span}"
        if lo is not None:
            op, bound = (">=" if self.left else ">"), _bound(lo)
        elif hi is not None:
            op, bound = ("<=" if self.right else "<"), _bound(hi)
        else:
            return f"be {self.what or ('a finite number' if self.finite else 'a number')}"
        if self.what or self.finite:
            return f"be {self.what or 'a finite number'} {op} {bound}"
        return "be positive" if (op, bound) == (">", "0") else f"be {op} {bound}"


class Integer(Constraint):
    """A whole number (``3`` or ``3.0``) from ``min`` to ``max`` (inclusive; either may be None), odd if asked.

    >>> Integer(min=1).describe(), Integer(min=2).describe(), Integer(min=1, odd=True).describe()
    ('be a positive integer', 'be an integer >= 2', 'be an odd positive integer')
    """

    def __init__(self, min: int | None = None, max: int | None = None, *, odd: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.min, self.max, self.odd = min, max, odd

    def accepts(self, value: Any) -> bool:
        try:
            whole = int(value) == value
        except (TypeError, ValueError, OverflowError):
            return False
        if not whole:
            return False
        v = int(value)
        if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
            return False
        return not self.odd or v % 2 == 1

    def _describe(self) -> str:
        kind = "an odd" if self.odd else "an"
        if self.min is not None and self.max is not None:
            return f"be {kind} integer in [{self.min}, {self.max}]"
        if self.min == 1:
            return f"be {'an odd' if self.odd else 'a'} positive integer"
        if self.min is not None:
            return f"be {kind} integer >= {self.min}"
        if self.max is not None:
            return f"be {kind} integer <= {self.max}"
        return f"be {kind} integer"


class OneOf(Constraint):
    """One of the given values.

    >>> OneOf("ddim", "ddpm").describe(), OneOf("warn", "checkpoint", "stop").describe()
    ("be 'ddim' or 'ddpm'", "be 'warn', 'checkpoint' or 'stop'")
    """

    def __init__(self, *options: Any, **kw: Any) -> None:
        super().__init__(**kw)
        if not options:
            raise ValueError("OneOf needs at least one option")
        self.options = options

    def accepts(self, value: Any) -> bool:
        return any(value == o and type(value) is type(o) for o in self.options)

    def _describe(self) -> str:
        shown = [show(o) for o in self.options]
        return "be " + (shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1])


class Optional(Constraint):
    """None (the setting left out), or a value ``inner`` accepts; described (and hinted) as ``inner``."""

    def __init__(self, inner: Constraint) -> None:
        super().__init__(hint=inner.hint, text=inner.text, message=inner.message)
        self.inner = inner

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def _describe(self) -> str:
        return self.inner.describe()


class Each(Constraint):
    """A sequence of at least ``min_len`` values, each accepted by ``inner`` (strictly increasing if asked).

    The message names ``each`` (``Each(Interval(0, 1), each="k")``: "every k must lie in (0, 1)"),
    by default "value of NAME"; ``text=`` replaces it with one phrase for the whole sequence.
    """

    def __init__(
        self, inner: Constraint, *, min_len: int = 1, increasing: bool = False, each: str | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.inner, self.min_len, self.increasing, self.each = inner, min_len, increasing, each

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) < self.min_len:
            return False
        if not all(self.inner.accepts(v) for v in value):
            return False
        return not self.increasing or all(a < b for a, b in zip(value, value[1:]))

    def _describe(self) -> str:
        return f"hold at least {self.min_len} value{'s' if self.min_len > 1 else ''}, each of which must " + (
            self.inner.describe()
        )

    def problem(self, label: str, value: Any, got: str = ", got {value}") -> str | None:
        if self.accepts(value) or self.text is not None or self.message is not None:
            return super().problem(label, value, got)
        hint = f" ({self.hint or self.inner.hint})" if (self.hint or self.inner.hint) else ""
        shown = got.format(value=show(value))
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) >= self.min_len:
            if all(self.inner.accepts(v) for v in value):  # only the order is wrong
                return f"{label} must be strictly increasing{shown}"
            return f"every {self.each or 'value of ' + label} must {self.inner.describe()}{hint}{shown}"
        if self.each is not None:  # too short: "every k must ..." still says what each value must be
            return f"every {self.each} must {self.inner.describe()}{hint}{shown}"
        return f"{label} must hold at least {self.min_len} value{'s' if self.min_len > 1 else ''}{shown}"


class Satisfies(Constraint):
    """Any value ``predicate`` returns true for; ``text`` (required) says what that is."""

    def __init__(self, predicate: Callable[[Any], bool], *, text: str, **kw: Any) -> None:
        super().__init__(text=text, **kw)
        self.predicate = predicate

    def accepts(self, value: Any) -> bool:
        return bool(self.predicate(value))


def check(
    obj: Any,
    constraints: Mapping[str, Constraint | Sequence[Constraint]],
    *,
    label: str = "{name}",
    got: str = ", got {value}",
) -> None:
    """Raise ``ValueError`` for the first field of ``obj`` (in the order of ``constraints``) a constraint refuses.

    Parameters
    ----------
    obj : object
        The configuration (its fields are read with ``getattr``).
    constraints : mapping
        Field name -> a :class:`Constraint` or a tuple of them (checked in order).
    label : str
        How a field is named in the message: ``{name}`` (the field), ``{flag}`` (the field with dashes,
        e.g. ``"--{flag}"``) and ``{cls}`` (the class name, e.g. ``"{cls}.{name}"``).
    got : str
        How the value is shown after the description (``", got {value}"`` or ``" (got {value})"``).

    Returns
    -------
    None
        Nothing; the first problem raises.
    """
    for name, cs in constraints.items():
        value = getattr(obj, name)
        shown = label.format(name=name, flag=name.replace("_", "-"), cls=type(obj).__name__)
        for c in cs if isinstance(cs, Sequence) else (cs,):
            msg = c.problem(shown, value, got)
            if msg is not None:
                raise ValueError(msg)
