"""The fused flash-attention kernel in Pallas interpret mode against its reference: outputs and
every gradient (q, k, v, γ, sinks, bias factors) by relative error at awkward sizes (T = 1, 37,
63, 129; S = 29; H = 40, 72; GQA 8:2), fresh random inputs per case, and ValueErrors.

The reference runs in float64 (``jax.enable_x64``) on the same inputs; the bound is 1e-5 for
float32 kernels and 1e-2 for bfloat16 ones. dγ_j = Σ dx̂·(x_t − x_{t−1}) sums T·H·(N/K + 1)
products of both signs whose magnitudes add up to 10²–10³ times |dγ_j|, so no float32
computation of it (a float32 reference included) is within 1e-5 of its own value; its error is
measured relative to that magnitude, Σ |dx̂·(x_t − x_{t−1})|, per kv head.

Interpret mode fills output tiles that a kernel never writes with NaN (checked below), so an
unwritten tile of the output or of any gradient fails its comparison. Each case compiles the
forward and both backward kernels once, in one jitted value-and-grad.

The same value-and-grad with ``interpret=False``, lowered for CUDA, checks that each option with
the shear passes Pallas's Triton lowering (the IR only: no GPU compiles or runs it here).
"""

import functools
import re
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.extend.core import ClosedJaxpr, Jaxpr

import momentum_jax.attention as attn
from momentum_jax.attention.flash_bias import flash_bias_attention_reference
from momentum_jax.attention.flex_mods import and_masks, causal_mask, segment_mask
from momentum_jax.attention.sigmoid import sigmoid_attention_reference
from momentum_jax.core.block_mask import create_block_mask
from momentum_jax.core.masks import previous_step
from momentum_jax.kernels.flash_attention import BlockSizes, flash_attention
from momentum_jax.kernels.flash_reference import flash_attention_reference

pytestmark = pytest.mark.kernels

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

F32_TOL, BF16_TOL = 1e-5, 1e-2


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def segments(seq, *sizes_per_row):
  """``[len(sizes_per_row), seq]`` segment ids, row b made of runs of the given lengths."""
  rows = [np.repeat(np.arange(len(sizes)), sizes)[:seq] for sizes in sizes_per_row]
  return jnp.asarray(np.stack(rows), jnp.int32)


def head_window(b, n, t, s):
  """Causal window of 8 + 12 n keys for head n: a mask that differs per head."""
  del b
  return (s <= t) & (t - s < 8 + 12 * n)


# (name, B, T, S, N, K, H, dtype, static keyword arguments, differentiable extras)
CASES = [
    ("gqa8:2-gamma-per-kv-head-sinks", 1, 63, 63, 8, 2, 40, jnp.float32,
     dict(block_sizes=BlockSizes(32, 16, block_q_dkv=16, block_k_dkv=32, block_q_dq=16)),
     ("gamma_K", "sinks")),
    ("window-replicate-segments", 1, 129, 129, 2, 1, 72, jnp.float32,
     dict(window=20, boundary="replicate", segment_ids=segments(129, [31, 1, 64, 33]),
          block_sizes=BlockSizes(32, 32)), ("gamma",)),
    ("t1-cross-sinks", 1, 1, 29, 4, 2, 40, jnp.float32,
     dict(causal=False, block_sizes=BlockSizes(16, 16)), ("gamma", "sinks")),
    ("batch2-segments-flash-bias", 2, 63, 63, 4, 2, 40, jnp.float32,
     dict(segment_ids=segments(63, [20, 1, 30, 12], [40, 23]), block_sizes=BlockSizes(16, 16)),
     ("gamma_K", "bias_K")),
    ("flash-bias-per-query-head", 1, 37, 37, 8, 2, 40, jnp.float32,
     dict(block_sizes=BlockSizes(16, 16)), ("gamma", "bias_N")),
    ("sigmoid", 1, 63, 63, 4, 2, 40, jnp.float32,
     dict(sigmoid=True, sigmoid_bias=-2.0, window=40, block_sizes=BlockSizes(16, 32)),
     ("gamma_K", "bias_K")),
    ("batch2-block-mask-per-head", 2, 63, 63, 4, 2, 40, jnp.float32,
     dict(causal=False, block_mask=create_block_mask(
         and_masks(segment_mask(segments(63, [25, 38], [10, 53])), head_window),
         2, 4, 63, 63, 16, 16)),
     ("gamma", "bias_K")),
    ("bf16-gqa8:2", 1, 63, 63, 8, 2, 40, jnp.bfloat16,
     dict(block_sizes=BlockSizes(16, 16)), ("gamma_K", "sinks")),
]


def make_inputs(name, batch, seq_q, seq_k, heads, kv_heads, head_dim, dtype, extras):
  rng = np.random.default_rng(zlib.crc32(name.encode()))
  normal = lambda *shape, std=1.0: jnp.asarray(std * rng.standard_normal(shape), dtype)
  args = {"q_BxTxNxH": normal(batch, seq_q, heads, head_dim),
          "k_BxSxKxH": normal(batch, seq_k, kv_heads, head_dim),
          "v_BxSxKxH": normal(batch, seq_k, kv_heads, head_dim)}
  if "gamma" in extras:
    args["gamma"] = jnp.float32(rng.uniform(0.3, 1.5))
  if "gamma_K" in extras:
    args["gamma"] = jnp.asarray(rng.uniform(0.3, 1.5, kv_heads), jnp.float32)
  if "sinks" in extras:
    args["sinks"] = jnp.asarray(rng.standard_normal(heads), jnp.float32)
  for extra, key_heads in (("bias_K", kv_heads), ("bias_N", heads)):
    if extra in extras:
      args["q_bias"] = normal(batch, seq_q, heads, 3, std=0.5)
      args["k_bias"] = normal(batch, seq_k, key_heads, 3, std=0.5)
  # bf16-representable cotangent weights: the kernel's bf16 output passes them on exactly.
  weights = jnp.asarray(rng.standard_normal((batch, seq_q, heads, head_dim)), jnp.bfloat16)
  return args, weights.astype(jnp.float32)


def weighted_sum(fn, static, weights, args):
  out = fn(**args, **static)
  return jnp.sum(out.astype(jnp.promote_types(out.dtype, jnp.float32)) * weights), out


def reference_and_gamma_magnitude(args64, weights, static):
  """Float64 reference output and gradients, and Σ |dx̂·(x_t − x_{t−1})| over q and k per kv
  head (the magnitude of the terms that add up to dγ)."""
  loss = functools.partial(weighted_sum, flash_attention_reference, static, weights)
  (_, ref), ref_grads = jax.value_and_grad(loss, has_aux=True)(args64)
  if "gamma" not in args64:
    return ref, ref_grads, None
  args64 = dict(args64)
  q, k = args64.pop("q_BxTxNxH"), args64.pop("k_BxSxKxH")
  kv_heads = k.shape[2]
  gamma_K = jnp.broadcast_to(args64.pop("gamma"), (kv_heads,))
  boundary, seg = static.get("boundary", "zero"), static.get("segment_ids")
  diff_q = q - previous_step(q, boundary=boundary, segment_ids=seg)
  diff_k = k - previous_step(k, boundary=boundary, segment_ids=seg)
  q_hat = q + jnp.repeat(gamma_K, q.shape[2] // kv_heads)[:, None] * diff_q
  k_hat = k + gamma_K[:, None] * diff_k
  hat_loss = lambda q_hat, k_hat: loss(dict(args64, q_BxTxNxH=q_hat, k_BxSxKxH=k_hat))[0]
  dq_hat, dk_hat = jax.grad(hat_loss, argnums=(0, 1))(q_hat, k_hat)
  terms_N = jnp.sum(jnp.abs(dq_hat * diff_q), axis=(0, 1, 3))
  terms_K = jnp.sum(jnp.abs(dk_hat * diff_k), axis=(0, 1, 3))
  return ref, ref_grads, terms_N.reshape(kv_heads, -1).sum(axis=1) + terms_K


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_kernel_matches_reference_outputs_and_gradients(case):
  name, batch, seq_q, seq_k, heads, kv_heads, head_dim, dtype, static, extras = case
  args, weights = make_inputs(name, batch, seq_q, seq_k, heads, kv_heads, head_dim, dtype,
                              extras)
  kernel = functools.partial(flash_attention, interpret=True)
  loss = functools.partial(weighted_sum, kernel, static, weights)
  (_, out), grads = jit(jax.value_and_grad(loss, has_aux=True))(args)
  with jax.enable_x64(True):
    args64 = {key: value.astype(jnp.float64) for key, value in args.items()}
    ref, ref_grads, magnitude_K = jit(
        functools.partial(reference_and_gamma_magnitude, static=static))(args64, weights)

  tol = F32_TOL if dtype == jnp.float32 else BF16_TOL
  assert out.dtype == dtype and out.shape == args["q_BxTxNxH"].shape
  errors = {"out": rel_err(out, ref)}
  errors.update({key: rel_err(grads[key], ref_grads[key]) for key in args if key != "gamma"})
  if "gamma" in args:
    errors["gamma"] = np.max(np.abs(np.asarray(grads["gamma"], np.float64)
                                    - np.asarray(ref_grads["gamma"])) / np.asarray(magnitude_K))
  assert set(errors) >= {"out", "q_BxTxNxH", "k_BxSxKxH", "v_BxSxKxH"}
  assert all(err <= tol for err in errors.values()), errors
  for key, value in args.items():
    assert grads[key].dtype == value.dtype and grads[key].shape == value.shape, key


# (name, T, S, N, K, H, differentiable extras, static keyword arguments): every option with the
# shear, lowered for the GPU. Block mask: a mask_mod of index arithmetic (Triton has no gather).
TRITON_CASES = [
    ("gqa8:2-gamma-per-kv-head-sinks", 70, 70, 8, 2, 40, ("gamma_K", "sinks"), {}),
    ("cross-replicate", 70, 45, 4, 2, 72, ("gamma",), dict(causal=False, boundary="replicate")),
    ("window-segments", 70, 70, 4, 2, 40, ("gamma",),
     dict(window=20, segment_ids=segments(70, [31, 1, 38]))),
    ("flash-bias", 70, 70, 4, 2, 64, ("gamma_K", "bias_K"), {}),
    ("flash-bias-per-query-head", 70, 70, 4, 2, 40, ("gamma", "bias_N"), {}),
    ("sigmoid", 70, 70, 4, 2, 72, ("gamma_K", "bias_K"), dict(sigmoid=True, window=40)),
    ("block-mask-per-head", 70, 70, 4, 2, 40, ("gamma",),
     dict(causal=False, block_mask=create_block_mask(head_window, None, 4, 70, 70, 16, 16))),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=[case[0] for case in TRITON_CASES])
def test_forward_and_backward_lower_to_triton(case):
  """The forward, dq and dk/dv kernels with the shear pass Pallas's Triton lowering for CUDA
  (built on the CPU; not compiled or run), at head dims that are not powers of two too."""
  name, seq_q, seq_k, heads, kv_heads, head_dim, extras, static = case
  args, weights = make_inputs(name, 1, seq_q, seq_k, heads, kv_heads, head_dim, jnp.bfloat16,
                              extras)
  if "block_mask" not in static:
    static = dict(static, block_sizes=BlockSizes(32, 16))
  kernel = functools.partial(flash_attention, interpret=False)
  loss = functools.partial(weighted_sum, kernel, static, weights)
  lowered = jax.jit(jax.value_and_grad(loss, has_aux=True)).trace(args).lower(
      lowering_platforms=("cuda",))
  text = lowered.as_text()
  assert set(re.findall(r"custom_call @([\w$.]+)", text)) == {"__gpu$xla.gpu.triton"}
  assert set(re.findall(r'name = "(\w+)"', text)) == {
      "flash_attention_forward", "flash_attention_dq", "flash_attention_dkv"}


def test_interpret_mode_poisons_unwritten_output_tiles():
  """The premise of the comparisons above: a tile the kernel skips comes back as NaN."""

  def write_first_tile(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = x_ref[...]

  spec = pl.BlockSpec((8, 4), lambda i: (i, 0))
  out = pl.pallas_call(write_first_tile, out_shape=jax.ShapeDtypeStruct((16, 4), jnp.float32),
                       grid=(2,), in_specs=[spec], out_specs=spec, interpret=True)(
                           jnp.ones((16, 4)))
  assert np.all(np.asarray(out[:8]) == 1) and np.all(np.isnan(np.asarray(out[8:])))


@pytest.mark.parametrize("skipped", ["block-mask", "causal"])
def test_empty_tiles_are_never_visited(skipped):
  """Keys 48..63 (block mask: 16..31) are hidden from every query, so every kernel skips their
  tile: NaN there would reach the output (0 · NaN) and the gradients of a kernel that visited it.
  Causal: T = 33 < S = 64, the last key tile lies above every query."""
  seq_q, hidden = (63, slice(16, 32)) if skipped == "block-mask" else (33, slice(48, 64))
  static = dict(block_sizes=BlockSizes(16, 16))
  if skipped == "block-mask":
    hide = lambda b, n, t, s: (s <= t) & ((s < 16) | (s >= 32))
    block_mask = create_block_mask(hide, None, None, 63, 64, 16, 16)
    assert np.all(np.asarray(block_mask.kind_BxNxQxK)[..., 1] == 0)
    static = dict(causal=False, block_mask=block_mask)
  args, weights = make_inputs(skipped, 1, seq_q, 64, 4, 2, 40, jnp.float32, ())
  poisoned = {key: args[key].at[:, hidden].set(jnp.nan) for key in ("k_BxSxKxH", "v_BxSxKxH")}
  kernel = functools.partial(flash_attention, interpret=True)
  loss = functools.partial(weighted_sum, kernel, static, weights)
  (_, out), grads = jit(jax.value_and_grad(loss, has_aux=True))(dict(args, **poisoned))
  ref_loss = functools.partial(weighted_sum, flash_attention_reference, static, weights)
  (_, ref), ref_grads = jit(jax.value_and_grad(ref_loss, has_aux=True))(args)
  assert rel_err(out, ref) <= F32_TOL
  for key in args:
    assert rel_err(grads[key], ref_grads[key]) <= F32_TOL, key


def _avals(jaxpr):
  """Every value's abstract shape in a jaxpr and, recursively, in the jaxprs in its equations'
  parameters (the Pallas kernels' bodies included)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for var in (*jaxpr.invars, *jaxpr.constvars):
    yield var.aval
  for eqn in jaxpr.eqns:
    yield from (var.aval for var in eqn.outvars)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, (Jaxpr, ClosedJaxpr)):
          yield from _avals(sub)


def test_no_txs_array_anywhere():
  """Forward and backward with the shear, segments and a window at T = S = 129: no value in the
  traced program or in the kernels has two axes as long as the sequence."""
  static = dict(window=50, segment_ids=segments(129, [60, 69]), block_sizes=BlockSizes(32, 32))
  args, weights = make_inputs("no-txs", 1, 129, 129, 4, 2, 40, jnp.float32, ("gamma_K",))
  kernel = functools.partial(flash_attention, interpret=True)
  loss = functools.partial(weighted_sum, kernel, static, weights)
  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, has_aux=True))(args)
  shapes = [getattr(aval, "shape", ()) for aval in _avals(jaxpr)]
  assert any(129 in shape or 160 in shape for shape in shapes)
  assert not [shape for shape in shapes if sum(size >= 129 for size in shape) >= 2]


def test_reference_matches_the_attention_references():
  """The explicit reference agrees with the library's pure references on their options."""
  rng = np.random.default_rng(7)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 13, n, 6)), jnp.float32) for n in (4, 2, 2))
  gamma = jnp.asarray([0.4, 1.2], jnp.float32)
  sinks = jnp.asarray(rng.standard_normal(4), jnp.float32)
  q_bias, k_bias = (jnp.asarray(rng.standard_normal((1, 13, n, 3)), jnp.float32) for n in (4, 2))
  seg = segments(13, [5, 8])
  pairs = [
      (dict(gamma=gamma, sinks=sinks, segment_ids=seg, boundary="replicate"),
       functools.partial(attn.momentum_attention_reference, gamma=gamma, sinks=sinks,
                         segment_ids=seg, boundary="replicate", rope=False)),
      (dict(q_bias=q_bias, k_bias=k_bias, window=4),
       functools.partial(flash_bias_attention_reference, q_bias=q_bias, k_bias=k_bias,
                         window=4)),
      (dict(sigmoid=True, segment_ids=seg),
       functools.partial(sigmoid_attention_reference, segment_ids=seg)),
  ]
  for ours, theirs in pairs:
    ours = jit(functools.partial(flash_attention_reference, **ours))
    assert rel_err(ours(q, k, v), jit(theirs)(q, k, v)) <= 1e-6


def tiny_qkv(dtype=jnp.float32, head_dim=8):
  x = jnp.zeros((1, 5, 2, head_dim), dtype)
  return x, x, x


@pytest.mark.parametrize("block_sizes, field", [
    (BlockSizes(12, 16), "block_q"),
    (BlockSizes(16, 0), "block_k"),
    (BlockSizes(16, 16, block_q_dkv=-8), "block_q_dkv"),
    (BlockSizes(16, 16, block_k_dq=True), "block_k_dq"),
])
def test_invalid_block_sizes_raise(block_sizes, field):
  with pytest.raises(ValueError, match=field):
    flash_attention(*tiny_qkv(), block_sizes=block_sizes)


def test_invalid_head_dim_and_dtype_raise():
  with pytest.raises(ValueError, match="head_dim=300"):
    flash_attention(*tiny_qkv(head_dim=300))
  with jax.enable_x64(True):
    with pytest.raises(ValueError, match="dtype=float64"):
      flash_attention(*tiny_qkv(jnp.float64))


def test_invalid_options_raise():
  q, k, v = tiny_qkv()
  with pytest.raises(ValueError, match="sinks"):
    flash_attention(q, k, v, sigmoid=True, sinks=jnp.zeros(2))
  with pytest.raises(ValueError, match="gamma"):
    flash_attention(q, k, v, gamma=jnp.ones(3))
  with pytest.raises(ValueError, match="gamma"):
    flash_attention(q, k, v, gamma=-0.5)
  with pytest.raises(ValueError, match="boundary"):
    flash_attention(q, k, v, gamma=0.5, boundary="wrap")
  with pytest.raises(ValueError, match="sigmoid_bias"):
    flash_attention(q, k, v, sigmoid_bias=-1.0)
  with pytest.raises(ValueError, match="k_bias"):
    flash_attention(q, k, v, q_bias=jnp.zeros((1, 5, 2, 3)))
  mask = create_block_mask(causal_mask, None, None, 5, 5, 8, 8)
  with pytest.raises(ValueError, match="block_q"):
    flash_attention(q, k, v, block_mask=mask, block_sizes=BlockSizes(16, 8))
  with pytest.raises(ValueError, match="block_mask"):
    flash_attention(q, k, v, block_mask=create_block_mask(causal_mask, None, None, 6,
                                                               5, 8, 8))
