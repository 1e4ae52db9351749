"""Lightning Attention-2 (Qin et al., arXiv 2401.04658) as fused Pallas kernels, forward and
backward, for :func:`momentum_jax.attention.lightning.lightning_attention`:

    out_t = scale · Σ_{s ≤ t} λ_n^{t−s} (q_t·k_s) v_s,      λ_n = exp(−decay_n)

One program per (batch, query head) walks the sequence in blocks of C positions, carrying the
[H, H] state KV = Σ_{s < start} λ^{start−s} k_sᵀ v_s in float32. For a block with local positions
i, j = 0..C−1 (the paper's intra/inter split):

    O_b = ((Q_b K_bᵀ) ⊙ D) V_b + diag(λ^i) Q_b KV,        D[i, j] = λ^{i−j} for j ≤ i
    KV ← λ^C KV + (diag(λ^{C−j}) K_b)ᵀ V_b

Backward, with dP = dO Vᵀ and S = Q Kᵀ on a block:

    dQ_b = ((dP ⊙ D) K_b) + diag(λ^i) dO_b KVᵀ                      (forward in time)
    dK_b = (dP ⊙ D)ᵀ Q_b + diag(λ^{C−1−j}) V_b Gᵀ,  dV_b = (S ⊙ D)ᵀ dO_b + diag(λ^{C−1−j}) K_b G
    G ← λ^C G + (diag(λ^{i+1}) Q_b)ᵀ dO_b                            (backward in time)

with G = Σ_{t > end} λ^{t−end} q_tᵀ do_t the state of the later blocks. The decay gradient (only
computed when ``decay`` is traced) is ∂L/∂decay = −Σ_{t,s} (t−s) λ^{t−s} (q_t·k_s)(do_t·v_s),
accumulated in the dQ pass from the intra-block lags and a second state

    KV' = Σ_{s < start} (start−s) λ^{start−s} k_sᵀ v_s,
    KV' ← λ^C (KV' + C·KV) + (diag((C−j) λ^{C−j}) K_b)ᵀ V_b,

so that no sum of large position-weighted terms cancels.

Every decay factor is a power λ^n with n ≥ 0. Segments (``segment_ids``) restart the state at each
change of id, as in the pure form. T is zero-padded to a multiple of the block and H to a power of
two (at least 16, the smallest Triton matmul); padded keys and values are zero. Matmul operands are
in the input dtype (float32 operands at full precision) with float32 accumulation. GQA: query head
n reads kv head n // (N // K); dK and dV are formed per query head and summed over each group.

The kernels are written for Pallas's Triton lowering on the GPU (power-of-two tiles, 2-D matmuls
of at least 16×16; the tests lower them for CUDA on the CPU); elsewhere they run in interpret mode.
The layout follows JAX's Pallas attention ops: :class:`BlockSizes`, the kernels, the validated
custom-VJP wrapper :func:`lightning_attention_kernel`. Its reference is
:func:`momentum_jax.attention.lightning.lightning_attention_reference`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from momentum_jax.core.alibi import alibi_slopes
from momentum_jax.core.checks import check_attention_inputs, check_lightning, is_concrete
from momentum_jax.core.masks import segment_runs
from momentum_jax.kernels.backend import default_interpret, triton_compiler_params


KERNEL_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
MIN_BLOCK = 16
MAX_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  """Block lengths C (positions along T) of the three kernels, powers of two >= 16.

  Attributes:
    block: forward kernel.
    block_dq: dQ (and decay-gradient) kernel.
    block_dkv: dK, dV kernel.
  """
  block: int = 64
  block_dq: int = 64
  block_dkv: int = 64

  def validate(self) -> None:
    """Raises ``ValueError`` naming any block that is not a power of two >= 16."""
    for field in dataclasses.fields(self):
      size = getattr(self, field.name)
      if (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_BLOCK
          or size & (size - 1)):
        raise ValueError(
            f"block_sizes.{field.name} must be a power of two >= {MIN_BLOCK}, "
            f"got block_sizes.{field.name}={size!r}"
        )


class _Config(NamedTuple):
  """Static arguments of the custom-VJP function."""
  scale: float
  groups: int
  block_sizes: BlockSizes
  decay_grad: bool
  interpret: bool


def _dot(a: jax.Array, b: jax.Array, dtype: jnp.dtype, *, ta: bool = False,
         tb: bool = False) -> jax.Array:
  """(aᵀ if ta) @ (bᵀ if tb) with operands cast to ``dtype`` and float32 accumulation."""
  dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
  precision = lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT
  return lax.dot_general(a.astype(dtype), b.astype(dtype), dims, precision=precision,
                         preferred_element_type=jnp.float32)


class _Decays(NamedTuple):
  """Decay tables of one head for blocks of C: its rate, local positions i, lags i − j, D."""
  slope: jax.Array
  pos_C: jax.Array
  lag_CxC: jax.Array
  diag_CxC: jax.Array

  def power(self, n: jax.Array | float) -> jax.Array:
    """λ^n = exp(−decay·n)."""
    return jnp.exp(-self.slope * n)


def _decays(slope_ref, block: int) -> _Decays:
  # Every entry of the slope block holds this head's rate.
  slope = jnp.max(slope_ref[...])
  pos_C = lax.broadcasted_iota(jnp.int32, (block,), 0).astype(jnp.float32)
  lag_CxC = pos_C[:, None] - pos_C[None, :]
  diag_CxC = jnp.where(lag_CxC >= 0, jnp.exp(-slope * jnp.maximum(lag_CxC, 0.0)), 0.0)
  return _Decays(slope, pos_C, lag_CxC, diag_CxC)


class _Masks(NamedTuple):
  """Segment masks of one block (all ones without segments)."""
  diag_CxC: jax.Array  # D restricted to pairs in the same run
  near_C: jax.Array  # position shares the run of the neighbouring block already walked
  far_C: jax.Array  # position shares this block's run at the end walked next
  edge: jax.Array | None  # that run
  carry: jax.Array  # 1.0 when the state carries over this block, else 0.0


def _masks(run_ref, rows, boundary_run, diag_CxC: jax.Array, backward: bool) -> _Masks:
  if run_ref is None:
    ones_C = jnp.ones(diag_CxC.shape[:1], jnp.float32)
    return _Masks(diag_CxC, ones_C, ones_C, None, jnp.float32(1.0))
  run_C = run_ref[rows]
  # Runs never decrease along T: the first run of a block is its min, the last its max.
  edge = jnp.min(run_C) if backward else jnp.max(run_C)
  return _Masks(
      diag_CxC=jnp.where(run_C[:, None] == run_C[None, :], diag_CxC, 0.0),
      near_C=(run_C == boundary_run).astype(jnp.float32),
      far_C=(run_C == edge).astype(jnp.float32),
      edge=edge,
      carry=(edge == boundary_run).astype(jnp.float32),
  )


def _init_run(run_ref) -> jax.Array | None:
  """Initial boundary run (any value: the state starts at zero)."""
  return None if run_ref is None else jnp.int32(0)


def _forward_kernel(slope_ref, q_ref, k_ref, v_ref, run_ref, o_ref, *, scale: float, block: int):
  """One (batch, query head): O block by block, KV carried forward."""
  seq, head_dim = q_ref.shape
  dtype = q_ref.dtype
  decays = _decays(slope_ref, block)
  q_decay_C = decays.power(decays.pos_C)
  k_decay_C = decays.power(block - decays.pos_C)

  def body(index, carry):
    kv_HxH, run = carry
    rows = pl.ds(index * block, block)
    q_CxH, k_CxH, v_CxH = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :]
    masks = _masks(run_ref, rows, run, decays.diag_CxC, backward=False)
    scores_CxC = _dot(q_CxH, k_CxH, dtype, tb=True) * masks.diag_CxC
    out_CxH = (_dot(scores_CxC, v_CxH, dtype)
               + (masks.near_C * q_decay_C)[:, None] * _dot(q_CxH, kv_HxH, dtype))
    o_ref[rows, :] = (scale * out_CxH).astype(o_ref.dtype)
    kv_HxH = masks.carry * decays.power(block) * kv_HxH + _dot(
        k_CxH * (masks.far_C * k_decay_C)[:, None], v_CxH, dtype, ta=True)
    return kv_HxH, masks.edge

  init = (jnp.zeros((head_dim, head_dim), jnp.float32), _init_run(run_ref))
  lax.fori_loop(0, seq // block, body, init)


def _dq_kernel(slope_ref, q_ref, k_ref, v_ref, do_ref, run_ref, dq_ref, *dslope_refs,
               scale: float, block: int):
  """One (batch, query head): dQ block by block, KV carried forward; with ``dslope_refs``
  also ∂L/∂decay per local position (summed by the wrapper), carrying KV'."""
  seq, head_dim = q_ref.shape
  dtype = q_ref.dtype
  decays = _decays(slope_ref, block)
  q_decay_C = decays.power(decays.pos_C)
  k_decay_C = decays.power(block - decays.pos_C)
  lagged_C = (block - decays.pos_C) * k_decay_C

  def body(index, carry):
    kv_HxH, run, slope_grad = carry
    rows = pl.ds(index * block, block)
    k_CxH, v_CxH, do_CxH = k_ref[rows, :], v_ref[rows, :], do_ref[rows, :]
    masks = _masks(run_ref, rows, run, decays.diag_CxC, backward=False)
    past_C = masks.near_C * q_decay_C
    dp_CxC = _dot(do_CxH, v_CxH, dtype, tb=True)
    inter_CxH = _dot(do_CxH, kv_HxH, dtype, tb=True)
    dq_CxH = _dot(dp_CxC * masks.diag_CxC, k_CxH, dtype) + past_C[:, None] * inter_CxH
    dq_ref[rows, :] = (scale * dq_CxH).astype(dq_ref.dtype)
    block_decay = masks.carry * decays.power(block)
    if slope_grad:
      kv_lag_HxH, acc_C = slope_grad
      q_CxH = q_ref[rows, :]
      scores_CxC = _dot(q_CxH, k_CxH, dtype, tb=True)
      inter_lag_CxH = _dot(do_CxH, kv_lag_HxH, dtype, tb=True)
      acc_C -= jnp.sum(decays.lag_CxC * masks.diag_CxC * scores_CxC * dp_CxC, axis=1)
      acc_C -= past_C * jnp.sum(
          q_CxH.astype(jnp.float32) * (decays.pos_C[:, None] * inter_CxH + inter_lag_CxH), axis=1)
      kv_lag_HxH = block_decay * (kv_lag_HxH + block * kv_HxH) + _dot(
          k_CxH * (masks.far_C * lagged_C)[:, None], v_CxH, dtype, ta=True)
      slope_grad = (kv_lag_HxH, acc_C)
    kv_HxH = block_decay * kv_HxH + _dot(
        k_CxH * (masks.far_C * k_decay_C)[:, None], v_CxH, dtype, ta=True)
    return kv_HxH, masks.edge, slope_grad

  zeros_HxH = jnp.zeros((head_dim, head_dim), jnp.float32)
  slope_grad = (zeros_HxH, jnp.zeros((block,), jnp.float32)) if dslope_refs else ()
  _, _, slope_grad = lax.fori_loop(0, seq // block, body,
                                   (zeros_HxH, _init_run(run_ref), slope_grad))
  if dslope_refs:
    dslope_refs[0][...] = scale * slope_grad[1]


def _dkv_kernel(slope_ref, q_ref, k_ref, v_ref, do_ref, run_ref, dk_ref, dv_ref, *,
                scale: float, block: int):
  """One (batch, query head): dK and dV block by block from the end, G carried backward."""
  seq, head_dim = q_ref.shape
  dtype = q_ref.dtype
  blocks = seq // block
  decays = _decays(slope_ref, block)
  later_C = decays.power(block - 1.0 - decays.pos_C)
  q_decay_C = decays.power(decays.pos_C + 1.0)

  def body(step, carry):
    g_HxH, run = carry
    rows = pl.ds((blocks - 1 - step) * block, block)
    q_CxH, k_CxH, v_CxH, do_CxH = q_ref[rows, :], k_ref[rows, :], v_ref[rows, :], do_ref[rows, :]
    masks = _masks(run_ref, rows, run, decays.diag_CxC, backward=True)
    scores_CxC = _dot(q_CxH, k_CxH, dtype, tb=True) * masks.diag_CxC
    dp_CxC = _dot(do_CxH, v_CxH, dtype, tb=True) * masks.diag_CxC
    later_Cx1 = (masks.near_C * later_C)[:, None]
    dv_CxH = _dot(scores_CxC, do_CxH, dtype, ta=True) + later_Cx1 * _dot(k_CxH, g_HxH, dtype)
    dk_CxH = (_dot(dp_CxC, q_CxH, dtype, ta=True)
              + later_Cx1 * _dot(v_CxH, g_HxH, dtype, tb=True))
    dk_ref[rows, :] = (scale * dk_CxH).astype(dk_ref.dtype)
    dv_ref[rows, :] = (scale * dv_CxH).astype(dv_ref.dtype)
    g_HxH = masks.carry * decays.power(block) * g_HxH + _dot(
        q_CxH * (masks.far_C * q_decay_C)[:, None], do_CxH, dtype, ta=True)
    return g_HxH, masks.edge

  init = (jnp.zeros((head_dim, head_dim), jnp.float32), _init_run(run_ref))
  lax.fori_loop(0, blocks, body, init)


def _specs(seq: int, head_dim: int, block: int, groups: int, runs: jax.Array | None):
  """BlockSpecs over the grid (batch, query head): per-head slopes, the whole sequence of q-like
  ``[B, T, N, H]`` and kv-like ``[B, T, K, H]`` arrays, and the runs."""
  slope = pl.BlockSpec((None, block), lambda b, n: (n, 0))
  q_like = pl.BlockSpec((None, seq, None, head_dim), lambda b, n: (b, 0, n, 0))
  kv_like = pl.BlockSpec((None, seq, None, head_dim), lambda b, n: (b, 0, n // groups, 0))
  run = None if runs is None else pl.BlockSpec((None, seq), lambda b, n: (b, 0))
  return slope, q_like, kv_like, run


def _call(kernel, config: _Config, block: int, grid: tuple[int, int], in_specs, out_specs,
          out_shape, name: str, args):
  head_dim = out_shape[0].shape[-1]
  return pl.pallas_call(
      functools.partial(kernel, scale=config.scale, block=block),
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=triton_compiler_params(num_warps=4 if head_dim <= 64 else 8, num_stages=1),
      interpret=config.interpret,
      name=name,
  )(*args)


def _slope_table(slopes_N: jax.Array, block: int) -> jax.Array:
  return jnp.broadcast_to(slopes_N[:, None], (slopes_N.shape[0], block))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _lightning(q, k, v, slopes_N, runs_BxT, config: _Config):
  batch, seq, heads, head_dim = q.shape
  block = config.block_sizes.block
  slope, q_like, kv_like, run = _specs(seq, head_dim, block, config.groups, runs_BxT)
  [out] = _call(_forward_kernel, config, block, (batch, heads),
                [slope, q_like, kv_like, kv_like, run], [q_like],
                [jax.ShapeDtypeStruct(q.shape, q.dtype)], "lightning_forward",
                (_slope_table(slopes_N, block), q, k, v, runs_BxT))
  return out


def _lightning_forward(q, k, v, slopes_N, runs_BxT, config: _Config):
  return _lightning(q, k, v, slopes_N, runs_BxT, config), (q, k, v, slopes_N, runs_BxT)


def _lightning_backward(config: _Config, residuals, do):
  q, k, v, slopes_N, runs_BxT = residuals
  batch, seq, heads, head_dim = q.shape
  grid = (batch, heads)
  do = do.astype(q.dtype)

  block = config.block_sizes.block_dq
  slope, q_like, kv_like, run = _specs(seq, head_dim, block, config.groups, runs_BxT)
  out_specs = [q_like]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  if config.decay_grad:
    out_specs.append(pl.BlockSpec((None, None, block), lambda b, n: (b, n, 0)))
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, block), jnp.float32))
  dq, *dslope = _call(_dq_kernel, config, block, grid,
                      [slope, q_like, kv_like, kv_like, q_like, run], out_specs, out_shape,
                      "lightning_dq", (_slope_table(slopes_N, block), q, k, v, do, runs_BxT))
  dslopes_N = jnp.sum(dslope[0], axis=(0, 2)) if dslope else jnp.zeros_like(slopes_N)

  block = config.block_sizes.block_dkv
  slope, q_like, kv_like, run = _specs(seq, head_dim, block, config.groups, runs_BxT)
  dk, dv = _call(_dkv_kernel, config, block, grid,
                 [slope, q_like, kv_like, kv_like, q_like, run], [q_like, q_like],
                 [jax.ShapeDtypeStruct(q.shape, jnp.float32)] * 2, "lightning_dkv",
                 (_slope_table(slopes_N, block), q, k, v, do, runs_BxT))
  kv_heads = k.shape[2]
  group_sum = lambda x: jnp.sum(
      x.reshape(batch, seq, kv_heads, config.groups, head_dim), axis=3).astype(k.dtype)
  return dq, group_sum(dk), group_sum(dv), dslopes_N, None


_lightning.defvjp(_lightning_forward, _lightning_backward)
_lightning_jit = jax.jit(_lightning, static_argnums=5)


def _padded_head_dim(head_dim: int) -> int:
  return max(MIN_BLOCK, 1 << (head_dim - 1).bit_length())


def unsupported_reason(
    q_BxTxNxH: jax.Array, *, scale: object = None, block_sizes: BlockSizes | None = None
) -> str | None:
  """Why the kernel cannot run these inputs (dtype, head dim, scale or block sizes), or None.

  Call after the pure form's validation; :func:`lightning_attention_kernel` raises
  ``ValueError`` with this message.
  """
  if q_BxTxNxH.dtype not in KERNEL_DTYPES:
    return (f"q.dtype={q_BxTxNxH.dtype} is not supported by the lightning kernel "
            f"(float32, bfloat16, float16)")
  head_dim = q_BxTxNxH.shape[-1]
  if head_dim > MAX_HEAD_DIM:
    return (f"head_dim={head_dim} must be <= {MAX_HEAD_DIM} for the lightning kernel "
            f"(its [H, H] float32 state stays on chip)")
  if scale is not None and (not is_concrete(scale) or np.ndim(scale) != 0):
    return f"scale must be None or a Python number for the lightning kernel, got scale={scale!r}"
  try:
    (block_sizes or BlockSizes()).validate()
  except ValueError as error:
    return str(error)
  return None


def lightning_attention_kernel(
    q_BxTxNxH: jax.Array,
    k_BxTxKxH: jax.Array,
    v_BxTxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    decay: jax.Array | float | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
) -> jax.Array:
  """Lightning Attention-2 by the fused Pallas kernels, layout ``[B, T, N, H]``.

      out_t = scale · Σ_{s ≤ t} λ_n^{t−s} (q_t·k_s) v_s,      λ_n = exp(−decay_n)

  Same arguments and result as :func:`momentum_jax.attention.lightning.lightning_attention` (whose
  ``block_size`` becomes ``block_sizes``); differentiable in q, k, v and a traced ``decay``.

  Args:
    q_BxTxNxH: queries, float32, bfloat16 or float16, H <= 128.
    k_BxTxKxH: keys; K divides N.
    v_BxTxKxH: values.
    causal: must be True.
    window, bias, sinks: not supported; anything but None raises ``ValueError``.
    segment_ids: ``[B, T]`` ints; the state restarts at every change of id.
    scale: a Python number multiplying q·k; None means 1.
    decay: decay rates >= 0, a scalar or ``[N]``; None gives the ALiBi slopes.
    block_sizes: :class:`BlockSizes` (default 64 everywhere).
    interpret: run the kernels in Pallas interpret mode; None means on the CPU only.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  block_sizes = block_sizes or BlockSizes()
  if not isinstance(block_sizes, BlockSizes):
    raise ValueError(f"block_sizes must be a BlockSizes, got block_sizes={block_sizes!r}")
  block_sizes.validate()
  check_attention_inputs(
      q_BxTxNxH, k_BxTxKxH, v_BxTxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_lightning(q_BxTxNxH, k_BxTxKxH, causal=causal, decay=decay, block_size=block_sizes.block,
                  window=window, bias=bias, sinks=sinks)
  reason = unsupported_reason(q_BxTxNxH, scale=scale, block_sizes=block_sizes)
  if reason is not None:
    raise ValueError(reason)
  batch, seq, heads, head_dim = q_BxTxNxH.shape
  groups = heads // k_BxTxKxH.shape[2]
  largest = max(dataclasses.astuple(block_sizes))
  padded_seq = -(-seq // largest) * largest
  padded_head_dim = _padded_head_dim(head_dim)
  pad = lambda x: jnp.pad(
      x, [(0, 0), (0, padded_seq - seq), (0, 0), (0, padded_head_dim - head_dim)])
  runs_BxT = None
  if segment_ids is not None:
    runs_BxT = jnp.broadcast_to(segment_runs(seq, segment_ids), (batch, seq))
    runs_BxT = jnp.pad(runs_BxT, [(0, 0), (0, padded_seq - seq)], mode="edge")
  rates = alibi_slopes(heads) if decay is None else decay
  slopes_N = jnp.broadcast_to(jnp.asarray(rates, jnp.float32), (heads,))
  config = _Config(
      scale=1.0 if scale is None else float(scale),
      groups=groups,
      block_sizes=block_sizes,
      decay_grad=decay is not None and not is_concrete(decay),
      interpret=default_interpret() if interpret is None else bool(interpret),
  )
  out = _lightning_jit(
      pad(q_BxTxNxH), pad(k_BxTxKxH), pad(v_BxTxKxH), slopes_N, runs_BxT, config)
  return out[:, :seq, :, :head_dim]
