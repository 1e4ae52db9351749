"""Input checks that hold under ``jax.jit``: :func:`checked` runs a function with the model's
value checks on, through ``jax.experimental.checkify``.

Shapes and dtypes are checked while tracing, always. Values of traced arrays are not known then;
their checks are ``checkify`` checks, which cannot be staged unless functionalised, so the model
emits them only inside :func:`checked` (a trace-time flag, ``momentum_jax.core.checks.
runtime_checks``, that is part of jit's cache key). Without :func:`checked` the model traces
exactly as it would without them: no check, no cost.

What is checked under :func:`checked`:

- ``tokens`` of :class:`~momentum_jax.nn.Transformer` are in ``[0, vocab_size)``: "tokens must be
  in [0, vocab_size=64), got a token id of 64 at tokens[0, 5]" (out of range, the embedding
  lookup gives NaN logits above and silently wraps below).
- a traced γ of momentum attention (or any per-head value checked >= 0, e.g. lightning's
  ``decay``), fixed or learned, is >= 0 and not NaN: "gamma must be >= 0 and not NaN, got
  gamma=nan" (``momentum_jax.core.checks.check_per_head``, the check it makes of concrete
  values when they are given).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from momentum_jax.core.checks import is_concrete, runtime_checks, runtime_checks_enabled

P = ParamSpec("P")
R = TypeVar("R")


def checked(fn: Callable[P, R]) -> Callable[P, R]:
  """``fn`` with the model's input checks on: the returned function has ``fn``'s signature and
  output and raises when a check fails.

  It runs ``checkify.checkify(fn, errors=checkify.user_checks)`` while the checks are switched
  on and raises the check that failed. ``fn`` may be jitted (``checked(jax.jit(f))``: the inner
  function is traced again with the checks), the form to use: a failed check raises
  ``checkify.JaxRuntimeError`` (a ``ValueError``) when the call returns, its message the check's
  ("tokens must be in [0, vocab_size=64), got a token id of 64 at tokens[0, 5]"). The result may
  also be jitted (``jax.jit(checked(f))``); then the check runs in a host callback when the
  compiled computation runs, and XLA reports it as ``jax.errors.JaxRuntimeError`` whose message
  starts with XLA's own words ("INTERNAL: CpuCallback error") and ends with the check's.

  Example:
    >>> logits = checked(jax.jit(lambda tokens: model(tokens)))(tokens_BxT)
  """

  @functools.wraps(fn)
  def run_checked(*args: P.args, **kwargs: P.kwargs) -> R:
    with runtime_checks(True):
      error, out = checkify.checkify(fn, errors=checkify.user_checks)(*args, **kwargs)
    if all(is_concrete(leaf) for leaf in jax.tree.leaves(error)):
      _raise_failed_check(error)
    else:
      jax.debug.callback(_raise_failed_check, error)
    return out

  return run_checked


def _raise_failed_check(error: checkify.Error) -> None:
  """Raises ``checkify.JaxRuntimeError`` with the failed check's own message first (checkify's
  suffix " (`check` failed)" dropped), chained to checkify's exception; nothing if none failed."""
  failed = error.get_exception()
  if failed is not None:
    raise checkify.JaxRuntimeError(str(failed).removesuffix(" (`check` failed)")) from failed


def check_token_values(name: str, tokens: object, vocab_size: int) -> None:
  """Raises ``ValueError`` unless the concrete ``[B, T]`` token ids ``tokens`` are all in
  ``[0, vocab_size)``, naming ``name``, the first bad id (row-major) and where it is."""
  tokens_BxT = np.asarray(tokens)
  valid_BxT = (tokens_BxT >= 0) & (tokens_BxT < vocab_size)
  if not valid_BxT.all():
    row, column = np.argwhere(~valid_BxT)[0]
    raise ValueError(f"{name} must be in [0, vocab_size={vocab_size}), got a token id of "
                     f"{tokens_BxT[row, column]} at {name}[{row}, {column}]")


def check_token_ids(tokens_BxT: jax.Array, vocab_size: int) -> None:
  """That every token id is in ``[0, vocab_size)``, naming the first bad id and where it is:
  concrete ids are checked now (:func:`check_token_values`), traced ones by a checkify check
  inside :func:`checked`, and not at all otherwise."""
  if is_concrete(tokens_BxT):
    check_token_values("tokens", tokens_BxT, vocab_size)
    return
  if not runtime_checks_enabled():
    return
  valid_BxT = (tokens_BxT >= 0) & (tokens_BxT < vocab_size)
  first = jnp.argmin(valid_BxT.ravel())
  row, column = jnp.divmod(first, tokens_BxT.shape[1])
  message = f"tokens must be in [0, vocab_size={vocab_size}), got a token id of {{}}"
  checkify.check(jnp.all(valid_BxT), message + " at tokens[{}, {}]", tokens_BxT.ravel()[first],
                 row, column)
