"""Kernel dispatch: ``implementation`` None / "xla" / "pallas" on the CPU, where the default is
the pure XLA form and "pallas" runs the kernel in interpret mode and matches it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.attention import lightning_attention
from momentum_jax.kernels import dispatch

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def inputs(seed):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  ids = jnp.asarray(np.repeat([[0, 1, 1]], [20, 10, 7], axis=1))
  return normal(1, 37, 4, 24), normal(1, 37, 2, 24), normal(1, 37, 2, 24), ids


def test_check_implementation():
  for implementation in (None, "xla", "pallas"):
    dispatch.check_implementation(implementation)
  with pytest.raises(ValueError, match="implementation='cudnn'"):
    dispatch.check_implementation("cudnn")


def test_cpu_defaults():
  assert jax.default_backend() == "cpu"
  assert not dispatch.wants_kernel(None)
  assert not dispatch.wants_kernel("xla")
  assert dispatch.wants_kernel("pallas")
  assert dispatch.default_interpret()
  assert dispatch.gpu_compiler_params(num_warps=4, num_stages=1) is None


@pytest.mark.parametrize("implementation,kernel", [(None, False), ("xla", False),
                                                   ("pallas", True)])
def test_lightning_runs_the_selected_form(implementation, kernel):
  q, k, v, ids = inputs(0)
  attend = functools.partial(lightning_attention, segment_ids=ids, block_size=16,
                             implementation=implementation)
  assert ("pallas_call" in str(jax.make_jaxpr(attend)(q, k, v))) == kernel


def test_lightning_pallas_on_cpu_matches_the_pure_form():
  q, k, v, ids = inputs(1)
  cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)
  decay = jnp.asarray([0.05, 0.1, 0.2, 0.4])

  def grads(implementation):
    def loss(q, k, v, decay):
      out = lightning_attention(q, k, v, segment_ids=ids, decay=decay, scale=0.3, block_size=16,
                                implementation=implementation)
      return jnp.sum(out * cotangent), out
    return jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, decay)

  (_, out), grad = grads("pallas")
  (_, expected_out), expected_grad = grads(None)
  for got, want in zip((out, *grad), (expected_out, *expected_grad)):
    assert rel_err(got, want) <= 1e-5


def test_lightning_rejects_bad_implementations():
  q, k, v, _ = inputs(3)
  with pytest.raises(ValueError, match="implementation='triton'"):
    lightning_attention(q, k, v, implementation="triton")
  with pytest.raises(ValueError, match="block_sizes.block"):
    lightning_attention(q, k, v, block_size=5, implementation="pallas")
  pure = functools.partial(lightning_attention, block_size=5)
  assert jax.eval_shape(pure, q, k, v).shape == q.shape
