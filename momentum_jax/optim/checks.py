"""Hyper-parameter validation shared by every optimiser in ``momentum_jax.optim``.

Every failed check raises one kind of error, a ``ValueError`` that names the argument and its
value: ``f"{name} must be {requirement}, got {name}={value!r}"``. A value that is not a real
scalar (a string, a bool, an array of several entries) fails with the requirement
``"a real number"`` instead of NumPy's conversion error. Values known only at trace time (e.g. a
hyper-parameter traced through :func:`optax.inject_hyperparams`) pass unchecked.

Example:
  >>> check_beta("b1", 1.0)
  Traceback (most recent call last):
  ...
  ValueError: b1 must be in [0, 1), got b1=1.0
  >>> check_rate("learning_rate", "1e-3")
  Traceback (most recent call last):
  ...
  ValueError: learning_rate must be a real number, got learning_rate='1e-3'
"""

from collections.abc import Callable
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np


def fail(name: str, value: Any, requirement: str) -> NoReturn:
  """Raises the ``ValueError`` of every check: ``name`` must be ``requirement``, got its value."""
  raise ValueError(f"{name} must be {requirement}, got {name}={value!r}")


def concrete(name: str, value: Any) -> float | None:
  """``value`` as a Python float, or ``None`` when it is traced; fails unless it is a real scalar.

  Example:
    >>> concrete("eps", 1e-8)
    1e-08
    >>> concrete("eps", True)
    Traceback (most recent call last):
    ...
    ValueError: eps must be a real number, got eps=True
  """
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    array = np.asarray(value)
  except (TypeError, ValueError):  # e.g. a ragged list
    array = np.asarray(None)
  if array.ndim != 0 or not (jnp.issubdtype(array.dtype, jnp.integer)
                             or jnp.issubdtype(array.dtype, jnp.floating)):
    fail(name, value, "a real number")
  return float(array)


def check(name: str, value: Any, ok: Callable[[float], bool], requirement: str) -> None:
  """Fails unless a concrete ``value`` is a real scalar that satisfies ``ok``.

  Example:
    >>> check("threshold", 0.0, lambda v: v > 0.0, "> 0")
    Traceback (most recent call last):
    ...
    ValueError: threshold must be > 0, got threshold=0.0
  """
  v = concrete(name, value)
  if v is not None and not ok(v):
    fail(name, value, requirement)


def check_beta(name: str, value: Any) -> None:
  """A decay rate: in [0, 1)."""
  check(name, value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def check_unit_interval(name: str, value: Any) -> None:
  """A weight or fraction: in [0, 1]."""
  check(name, value, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


def check_non_negative(name: str, value: Any) -> None:
  """>= 0 (NaN fails)."""
  check(name, value, lambda v: v >= 0.0, ">= 0")


def check_positive(name: str, value: Any) -> None:
  """> 0 (NaN fails)."""
  check(name, value, lambda v: v > 0.0, "> 0")


def check_finite(name: str, value: Any) -> None:
  """Neither NaN nor infinite."""
  check(name, value, np.isfinite, "finite")


def check_count(name: str, value: Any, minimum: int) -> None:
  """A whole number of steps (or slots) >= ``minimum``; ``2.0`` counts as the integer 2.

  Example:
    >>> check_count("reset_interval", 2.5, 1)
    Traceback (most recent call last):
    ...
    ValueError: reset_interval must be an integer >= 1, got reset_interval=2.5
  """
  check(name, value, lambda v: v >= minimum and v.is_integer(), f"an integer >= {minimum}")


def check_rate(name: str, value: Any) -> None:
  """A learning rate or decay as optax takes it: a schedule (any callable), or a value >= 0."""
  if not callable(value):
    check_non_negative(name, value)
