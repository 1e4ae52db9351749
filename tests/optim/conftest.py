"""Shared fixtures of the optimizer tests."""

import jax
import pytest


@pytest.fixture
def counted_jit():
  """``counted_jit(fn) -> (jitted, traces)``: ``jax.jit(fn)`` and a list that grows by one each
  time jit traces ``fn``, so a test can assert that repeated calls compiled it once.

  (Counting traces rather than reading ``jitted._cache_size()``: the size of jit's C++ dispatch
  cache also depends on what else the test process has run, not only on recompilation.)
  """
  def make(fn):
    traces = []

    def traced(*args, **kwargs):
      traces.append(None)
      return fn(*args, **kwargs)

    return jax.jit(traced), traces

  return make
