"""Numerical helpers shared by the optimisers of ``momentum_jax.optim``."""

import jax
import jax.numpy as jnp


def float_dtype() -> jnp.dtype:
  """The default float dtype: float64 when x64 is enabled, else float32.

  Example:
    >>> import jax
    >>> float_dtype() == (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    True
  """
  return jnp.result_type(float)


def after(x: jax.Array, dep: jax.Array, always: jax.Array) -> jax.Array:
  """``x``, computed only once ``dep`` is; ``always`` is a traced scalar that is true at run time.

  XLA:CPU computes each output array in a loop of its own and orders loops only by their data
  dependencies. When one loop overwrites a donated state buffer in place while another still reads
  the old contents, it copies the buffer to a fresh allocation first, on every step. Making the
  overwriting loop depend on the reader's result removes that copy; the value is ``x`` unchanged.

  Example:
    >>> x = jnp.array([1.0, 2.0])
    >>> after(x, jnp.sum(x), jnp.array(True)).tolist()
    [1.0, 2.0]
  """
  return jnp.where(always, x, jnp.asarray(dep).astype(x.dtype))
