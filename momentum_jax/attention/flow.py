"""Flow attention (Wu et al., "Flowformer: Linearizing Transformers with Conservation Flows",
arXiv 2202.06258): linear attention whose normalisers come from flow conservation.

With φ = sigmoid, ε = 1e−6, q̃ = φ(q), k̃ = φ(k), per head and for non-causal attention::

    incoming  I_i = 1 / ((q̃_i + ε)·(Σ_j k̃_j + ε))
    outgoing  O_j = 1 / ((k̃_j + ε)·(Σ_i q̃_i + ε))
    conserved Î_i = (q̃_i + ε)·(Σ_j k̃_j O_j + ε)
              Ô_j = clamp((k̃_j + ε)·(Σ_i q̃_i I_i + ε), −1, 1)
    allocation A_i = σ(Î_i · T/S)                        competition C_j = softmax_j(Ô_j) · S
    out_i = A_i · (q̃_i I_i) · Σ_j k̃_jᵀ (v_j C_j)

Causal: every sum runs over j <= i (prefix sums) and, with norm_i = i + 1, I and O are multiplied by
norm, Î and Ô divided by it; A_i = σ(Î_i), C_j = exp(Ô_j) / Σ_{l<=j} exp(Ô_l) · norm_j and the
output uses q̃_i I_i / norm_i, as in the authors' causal code.

Time and memory are O(T): the non-causal form contracts k̃ᵀ(v C) to ``[H, H]`` per head; the causal
form runs the chunked prefix-sum scan of linear attention. Computation is in float32 (float64 for
float64 inputs), the output in q's dtype. GQA: k and v are shared by the N // K query heads of a
group, while I, O, A and C are per query head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.linear import causal_sums
from momentum_jax.attention.registry import AttentionVariant, register_attention
from momentum_jax.core.checks import (
    check_attention_inputs, check_block_size, check_unsupported, is_concrete,
)
from momentum_jax.core.heads import compute_dtype, repeat_kv


def _check_flow(
    q: jax.Array, k: jax.Array, *, causal: bool, eps: float, block_size: int,
    window: int | None, segment_ids: jax.Array | None, bias: jax.Array | None,
    sinks: jax.Array | None,
) -> None:
  check_unsupported("flow", window=window, bias=bias, sinks=sinks)
  if segment_ids is not None:
    raise ValueError(
        f"segment_ids are not supported by flow attention, "
        f"got segment_ids.shape={np.shape(segment_ids)}"
    )
  if np.shape(eps) != () or (is_concrete(eps) and not float(eps) > 0):
    raise ValueError(f"eps must be a positive scalar, got eps={eps!r}")
  check_block_size(block_size)
  if causal and q.shape[1] != k.shape[1]:
    raise ValueError(
        f"causal flow attention needs S == T, got q.shape={q.shape} and k.shape={k.shape}"
    )


def _features(
    q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, scale: float | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """φ(scale·q), φ(k) and v in the compute dtype, k and v repeated to the N query heads."""
  dtype = compute_dtype(q_BxTxNxH)
  heads = q_BxTxNxH.shape[2]
  q_BxTxNxH = q_BxTxNxH.astype(dtype)
  if scale is not None:
    q_BxTxNxH = q_BxTxNxH * scale
  fk_BxSxNxH = repeat_kv(jax.nn.sigmoid(k_BxSxKxH.astype(dtype)), heads)
  return jax.nn.sigmoid(q_BxTxNxH), fk_BxSxNxH, repeat_kv(v_BxSxKxH.astype(dtype), heads)


def flow_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    eps: float = 1e-6,
    block_size: int = 64,
) -> jax.Array:
  """O(T) flow attention (Flowformer), layout ``[B, T, N, H]``; the formulas are in the module
  docstring.

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N; S == T when ``causal``.
    v_BxSxKxH: values.
    causal: prefix-sum (causal) flow, or whole-sequence flow.
    window, segment_ids, bias, sinks: not supported; anything but None raises ``ValueError``.
    scale: multiplies q before φ; None leaves q as it is (the authors apply no scale).
    eps: ε of the flow normalisers.
    block_size: chunk length of the causal scan; any positive int.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_flow(q_BxTxNxH, k_BxSxKxH, causal=causal, eps=eps, block_size=block_size,
              window=window, segment_ids=segment_ids, bias=bias, sinks=sinks)
  fq_BxTxNxH, fk_BxSxNxH, v_BxSxNxH = _features(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale)
  batch, seq_q, heads, head_dim = fq_BxTxNxH.shape
  seq_k = fk_BxSxNxH.shape[1]
  hi = jax.lax.Precision.HIGHEST
  dot = lambda a, b: jnp.einsum("btnh,btnh->btn", a, b, precision=hi)

  if not causal:
    sum_q_Bx1xNxH = jnp.sum(fq_BxTxNxH, axis=1, keepdims=True)
    sum_k_Bx1xNxH = jnp.sum(fk_BxSxNxH, axis=1, keepdims=True)
    incoming_BxTxN = 1.0 / dot(fq_BxTxNxH + eps, sum_k_Bx1xNxH + eps)
    outgoing_BxSxN = 1.0 / dot(fk_BxSxNxH + eps, sum_q_Bx1xNxH + eps)
    flow_k_Bx1xNxH = jnp.sum(fk_BxSxNxH * outgoing_BxSxN[..., None], axis=1, keepdims=True)
    flow_q_Bx1xNxH = jnp.sum(fq_BxTxNxH * incoming_BxTxN[..., None], axis=1, keepdims=True)
    sink_BxTxN = dot(fq_BxTxNxH + eps, flow_k_Bx1xNxH + eps)
    source_BxSxN = jnp.clip(dot(fk_BxSxNxH + eps, flow_q_Bx1xNxH + eps), -1.0, 1.0)
    allocation_BxTxN = jax.nn.sigmoid(sink_BxTxN * (seq_q / seq_k))
    competition_BxSxN = jax.nn.softmax(source_BxSxN, axis=1) * seq_k
    state_BxNxHxH = jnp.einsum("bsnh,bsne->bnhe", fk_BxSxNxH,
                               v_BxSxNxH * competition_BxSxN[..., None], precision=hi)
    out_BxTxNxH = jnp.einsum("btnh,bnhe->btne", fq_BxTxNxH * incoming_BxTxN[..., None],
                             state_BxNxHxH, precision=hi)
  else:
    norm_1xTx1 = jnp.arange(1, seq_q + 1, dtype=fq_BxTxNxH.dtype)[None, :, None]
    prefix = lambda x: jnp.cumsum(x, axis=1)
    incoming_BxTxN = 1.0 / dot(fq_BxTxNxH + eps, prefix(fk_BxSxNxH) + eps)
    outgoing_BxTxN = norm_1xTx1 / dot(fk_BxSxNxH + eps, prefix(fq_BxTxNxH) + eps)
    flow_k_BxTxNxH = prefix(fk_BxSxNxH * outgoing_BxTxN[..., None])
    flow_q_BxTxNxH = prefix(fq_BxTxNxH * (norm_1xTx1 * incoming_BxTxN)[..., None])
    sink_BxTxN = dot(fq_BxTxNxH + eps, flow_k_BxTxNxH + eps) / norm_1xTx1
    source_BxTxN = jnp.clip(dot(fk_BxSxNxH + eps, flow_q_BxTxNxH + eps) / norm_1xTx1, -1.0, 1.0)
    allocation_BxTxN = jax.nn.sigmoid(sink_BxTxN)
    # Ô ∈ [−1, 1], so exp needs no shift.
    exp_source_BxTxN = jnp.exp(source_BxTxN)
    competition_BxTxN = exp_source_BxTxN / prefix(exp_source_BxTxN) * norm_1xTx1
    fq_BxTxNx1xH = (fq_BxTxNxH * incoming_BxTxN[..., None])[:, :, :, None]
    run_1xT = jnp.ones((1, seq_q), jnp.int32)
    out_BxTxNx1xH, _ = causal_sums(fq_BxTxNx1xH, fk_BxSxNxH,
                                    v_BxSxNxH * competition_BxTxN[..., None], run_1xT, block_size)
    out_BxTxNxH = out_BxTxNx1xH.reshape(batch, seq_q, heads, head_dim)
  out_BxTxNxH = out_BxTxNxH * allocation_BxTxN[..., None]
  return out_BxTxNxH.astype(q_BxTxNxH.dtype)


def flow_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    eps: float = 1e-6,
    block_size: int = 64,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`flow_attention`: every sum is an
  explicit masked sum over the visible pairs (all pairs, or s <= t when ``causal``) and the output
  is the explicit T×S mixing matrix applied to v.

  ``block_size`` is validated and otherwise unused. With ``return_weights`` returns
  ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in the compute dtype: scores are the kernel
  q̃_t·k̃_s with invisible entries −inf; weights W_ts = A_t I_t (q̃_t·k̃_s) C_s (0 where invisible),
  so that out = W v.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_flow(q_BxTxNxH, k_BxSxKxH, causal=causal, eps=eps, block_size=block_size,
              window=window, segment_ids=segment_ids, bias=bias, sinks=sinks)
  fq_BxTxNxH, fk_BxSxNxH, v_BxSxNxH = _features(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, scale)
  seq_q, seq_k = fq_BxTxNxH.shape[1], fk_BxSxNxH.shape[1]
  dtype = fq_BxTxNxH.dtype
  hi = jax.lax.Precision.HIGHEST
  dot = lambda a, b: jnp.einsum("btnh,btnh->btn", a, b, precision=hi)
  if causal:
    visible_TxS = jnp.tril(jnp.ones((seq_q, seq_k), bool))
    norm_1xTx1 = jnp.arange(1, seq_q + 1, dtype=dtype)[None, :, None]
    norm_1xSx1, ratio = norm_1xTx1, 1.0
  else:
    visible_TxS = jnp.ones((seq_q, seq_k), bool)
    norm_1xTx1 = norm_1xSx1 = jnp.ones((1, 1, 1), dtype)
    ratio = seq_q / seq_k
  mask_TxS = visible_TxS.astype(dtype)
  # Key s is seen by the queries t >= s (causal: the same lower-triangular matrix read as [s, t]).
  mask_SxT = mask_TxS if causal else jnp.ones((seq_k, seq_q), dtype)
  over_keys = lambda x_BxSxN_: jnp.einsum("ts,bsn...->btn...", mask_TxS, x_BxSxN_, precision=hi)
  over_queries = lambda x_BxTxN_: jnp.einsum("st,btn...->bsn...", mask_SxT, x_BxTxN_,
                                             precision=hi)
  incoming_BxTxN = norm_1xTx1 / dot(fq_BxTxNxH + eps, over_keys(fk_BxSxNxH) + eps)
  outgoing_BxSxN = norm_1xSx1 / dot(fk_BxSxNxH + eps, over_queries(fq_BxTxNxH) + eps)
  sink_BxTxN = dot(fq_BxTxNxH + eps,
                   over_keys(fk_BxSxNxH * outgoing_BxSxN[..., None]) + eps) / norm_1xTx1
  source_BxSxN = dot(fk_BxSxNxH + eps,
                     over_queries(fq_BxTxNxH * incoming_BxTxN[..., None]) + eps)
  source_BxSxN = jnp.clip(source_BxSxN / norm_1xSx1, -1.0, 1.0)
  allocation_BxTxN = jax.nn.sigmoid(sink_BxTxN * ratio)
  exp_source_BxSxN = jnp.exp(source_BxSxN)
  if causal:
    # exp(Ô_j) / Σ_{l <= j} exp(Ô_l) · norm_j, the prefix sum written out with the mask.
    competition_BxSxN = exp_source_BxSxN / over_keys(exp_source_BxSxN) * norm_1xSx1
  else:
    competition_BxSxN = exp_source_BxSxN / jnp.sum(exp_source_BxSxN, axis=1, keepdims=True) * seq_k
  kernel_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", fq_BxTxNxH, fk_BxSxNxH, precision=hi)
  row_BxNxTx1 = jnp.transpose(allocation_BxTxN * incoming_BxTxN / norm_1xTx1,
                              (0, 2, 1))[..., None]
  col_BxNx1xS = jnp.transpose(competition_BxSxN, (0, 2, 1))[:, :, None, :]
  weights_BxNxTxS = jnp.where(visible_TxS, row_BxNxTx1 * kernel_BxNxTxS * col_BxNx1xS, 0.0)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, jnp.where(visible_TxS, kernel_BxNxTxS, -jnp.inf), weights_BxNxTxS
  return out_BxTxNxH


register_attention(
    "flow",
    AttentionVariant(flow_attention, flow_attention_reference, params=("eps", "block_size")),
)
