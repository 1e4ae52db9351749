"""The Pallas Lightning-2 kernels (interpret mode on the CPU) against the T×T float32 reference:
outputs and the gradients w.r.t. q, k, v and a learned decay, at awkward sizes (T = 1, 63, 129;
H = 40, 72; GQA 8:2; segments), float32 to 1e-5 and bfloat16 to 1e-2; ValueErrors; and the
kernels pass Pallas's Triton lowering for the GPU (lowered, not compiled, on the CPU).

Pallas interpret mode fills every output with NaN before the kernel runs (checked below), so a
tile a kernel fails to write fails the comparison.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from momentum_jax.attention.lightning import lightning_attention_reference
from momentum_jax.kernels.lightning import BlockSizes, lightning_attention_kernel

pytestmark = pytest.mark.kernels

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
SMALL = BlockSizes(block=16, block_dq=32, block_dkv=16)

# Interpret mode lowers to plain XLA loops: skip the backend optimisations (compile time).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# (T, H, N, K, segments, learned decay, scale, dtype, block sizes); each case its own seed.
CASES = [
    (1, 40, 4, 2, False, False, None, jnp.float32, BlockSizes()),
    (63, 72, 2, 2, True, True, 0.5, jnp.float32, SMALL),
    (129, 40, 8, 2, True, True, None, jnp.float32, SMALL),
    (129, 72, 2, 1, False, False, 0.125, jnp.float32, BlockSizes(32, 16, 64)),
    (63, 40, 8, 2, True, True, None, jnp.bfloat16, SMALL),
    (129, 72, 4, 2, False, False, None, jnp.bfloat16, BlockSizes()),
]


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def make_case(index, seq, head_dim, heads, kv_heads, segments):
  rng = np.random.default_rng(1000 + index)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  arrays = (normal(1, seq, heads, head_dim), normal(1, seq, kv_heads, head_dim),
            normal(1, seq, kv_heads, head_dim), normal(1, seq, heads, head_dim))
  ids = None
  if segments:
    ids = np.zeros((1, seq), np.int32)
    ids[0, seq // 3:] = 1
    ids[0, 2 * seq // 3:] = 0  # an id that recurs: a new segment
    ids = jnp.asarray(ids)
  decay = jnp.asarray(rng.uniform(0.0, 0.5, heads), jnp.float32)
  return arrays, ids, decay


def loss_and_grads(attend, q, k, v, cotangent, decay, learned):
  def loss(q, k, v, decay):
    out = attend(q, k, v, decay=decay if learned else None)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, decay)
  return out, grads


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: str(CASES[i][:8]))
def test_kernel_matches_reference(index):
  seq, head_dim, heads, kv_heads, segments, learned, scale, dtype, block_sizes = CASES[index]
  (q, k, v, cotangent), ids, decay = make_case(index, seq, head_dim, heads, kv_heads, segments)
  q, k, v = (jnp.asarray(x, dtype) for x in (q, k, v))
  kernel = functools.partial(lightning_attention_kernel, segment_ids=ids, scale=scale,
                             block_sizes=block_sizes, interpret=True)
  out, grads = jit(functools.partial(loss_and_grads, kernel, learned=learned))(
      q, k, v, cotangent, decay)
  reference = functools.partial(lightning_attention_reference, segment_ids=ids, scale=scale)
  expected_out, expected_grads = jit(functools.partial(loss_and_grads, reference, learned=learned))(
      *(x.astype(jnp.float32) for x in (q, k, v)), cotangent, decay)

  assert out.dtype == dtype and out.shape == q.shape
  names = ("out", "dq", "dk", "dv", "ddecay")[: 5 if learned else 4]
  for name, got, want in zip(names, (out, *grads), (expected_out, *expected_grads)):
    assert np.isfinite(np.asarray(got, np.float32)).all(), name
    assert rel_err(got, want) <= TOL[dtype], (name, rel_err(got, want))
  if not learned:
    assert not np.asarray(grads[3]).any()


def test_interpret_mode_poisons_unwritten_outputs():
  def write_first_block(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  x = jnp.ones((4, 16), jnp.float32)
  out = pl.pallas_call(
      write_first_block, grid=(4,), in_specs=[pl.BlockSpec((1, 16), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((1, 16), lambda i: (i, 0)),
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), interpret=True)(x)
  assert (np.asarray(out[0]) == 1).all() and np.isnan(np.asarray(out[1:])).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernels_lower_to_triton_for_the_gpu(dtype):
  q = jax.ShapeDtypeStruct((1, 70, 4, 40), dtype)
  k = jax.ShapeDtypeStruct((1, 70, 2, 40), dtype)
  ids = jax.ShapeDtypeStruct((1, 70), jnp.int32)
  decay = jax.ShapeDtypeStruct((4,), jnp.float32)

  def loss(q, k, v, ids, decay):
    out = lightning_attention_kernel(q, k, v, segment_ids=ids, decay=decay, interpret=False)
    return jnp.sum(out.astype(jnp.float32))

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 4)))
  text = step.trace(q, k, k, ids, decay).lower(lowering_platforms=("cuda",)).as_text()
  assert set(re.findall(r"custom_call @([\w$.]+)", text)) == {"__gpu$xla.gpu.triton"}
  assert re.findall(r'name = "(lightning_\w+)"', text) == [
      "lightning_forward", "lightning_dq", "lightning_dkv"]


def test_default_decay_and_constant_decay():
  (q, k, v, _), _, _ = make_case(99, 37, 24, 4, 2, False)
  for decay in (None, 0.25):
    got = jit(functools.partial(lightning_attention_kernel, decay=decay, block_sizes=SMALL))(
        q, k, v)
    want = lightning_attention_reference(q, k, v, decay=decay)
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("block_sizes,name", [
    (BlockSizes(block=48), "block_sizes.block"),
    (BlockSizes(block_dq=8), "block_sizes.block_dq"),
    (BlockSizes(block_dkv=0), "block_sizes.block_dkv"),
])
def test_invalid_block_sizes_raise(block_sizes, name):
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match=name):
    lightning_attention_kernel(q, q, q, block_sizes=block_sizes)


def test_invalid_inputs_raise():
  q = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match="block_sizes must be a BlockSizes"):
    lightning_attention_kernel(q, q, q, block_sizes=64)
  with pytest.raises(ValueError, match="head_dim=160"):
    lightning_attention_kernel(*(jnp.zeros((1, 8, 2, 160)),) * 3)
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match="q.dtype=float64"):
      lightning_attention_kernel(*(jnp.zeros((1, 8, 2, 16), jnp.float64),) * 3)
  with pytest.raises(ValueError, match="scale"):
    jax.jit(lambda s: lightning_attention_kernel(q, q, q, scale=s))(1.0)
  with pytest.raises(ValueError, match="causal=False"):
    lightning_attention_kernel(q, q, q, causal=False)
  with pytest.raises(ValueError, match="decay"):
    lightning_attention_kernel(q, q, q, decay=jnp.ones(3))
  with pytest.raises(ValueError, match="window"):
    lightning_attention_kernel(q, q, q, window=4)
