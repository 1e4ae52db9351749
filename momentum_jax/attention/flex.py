"""FlexAttention (Dong et al., arXiv 2412.05496): softmax attention programmed by two callables,

    out_t = Σ_{s : mask_mod(b, n, t, s)} e^{ℓ_ts} v_s / Σ_{s : mask_mod(b, n, t, s)} e^{ℓ_ts},
    ℓ_ts = score_mod(scale · q_t·k_s, b, n, t, s)

``score_mod(score, b, n, t, s) -> score`` and ``mask_mod(b, n, t, s) -> bool`` act elementwise on
broadcastable jnp index arrays (b batch, n query head, t query position, s key position), so they
can be evaluated on a whole index grid or on one tile of it.

A :class:`BlockMask` classifies each [block_q, block_k] tile of the T×S grid as empty (no visible
entry), full (every entry visible) or partial, once, by :func:`create_block_mask`; it also lists
per query block the indices of its non-empty key blocks. :func:`flex_attention` loops over query
blocks and, inside, runs an online-softmax scan over only those key blocks: empty tiles are never
touched (a causal mask does about half the work of dense attention) and on full tiles mask_mod is
not evaluated. The scan and its custom VJP (memory O(T·H + tile) per head) are in
:mod:`~momentum_jax.attention.flex_scan`; ready-made mods (causal, sliding window, segments,
StreamingLLM, ALiBi, soft-capping) in :mod:`~momentum_jax.attention.flex_mods`. T and S are padded
internally to multiples of the block sizes; padded positions are invisible. A query row with no
visible key returns zeros, and its gradients are zeros.

GQA: query head n reads kv head n // (N // K). Computation is in float32 (float64 for float64
inputs), the output in q's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from momentum_jax.attention.flex_mods import (
    and_masks, causal_mask, no_mask, segment_mask, sliding_window_mask,
)
from momentum_jax.attention.flex_scan import closure_convert_score, flex_tiles, Tiles
from momentum_jax.attention.registry import AttentionVariant, register_attention
from momentum_jax.attention.splash import dense_flex_mask, splash_flex_attention
from momentum_jax.core.block_mask import BlockMask, MaskMod, ScoreMod, create_block_mask, index_grid
from momentum_jax.core.checks import check_attention_inputs, check_positive_int_or_none
from momentum_jax.core.heads import compute_dtype, repeat_kv


def _resolve_block_mask(
    q: jax.Array, k: jax.Array, mask_mod: MaskMod | None, block_mask: BlockMask | None,
    block_q: int | None, block_k: int | None,
) -> BlockMask:
  """Validates the mask arguments and returns the block mask to use (built if not given)."""
  batch, seq_q, heads, _ = q.shape
  seq_k = k.shape[1]
  check_positive_int_or_none("block_q", block_q)
  check_positive_int_or_none("block_k", block_k)
  if block_mask is None:
    mod = no_mask if mask_mod is None else mask_mod
    b_Bx1x1x1, n_1xNx1x1 = index_grid(batch, heads)
    t_1x1xTx1 = jnp.zeros((1, 1, seq_q, 1), jnp.int32)
    s_1x1x1xS = jnp.zeros((1, 1, 1, seq_k), jnp.int32)
    out = jax.eval_shape(mod, b_Bx1x1x1, n_1xNx1x1, t_1x1xTx1, s_1x1x1xS)
    lead = (1,) * (4 - len(out.shape)) + tuple(out.shape)
    uses_b, uses_n = lead[0] != 1, lead[1] != 1
    return create_block_mask(mod, batch if uses_b else None, heads if uses_n else None, seq_q,
                             seq_k, block_q or 128, block_k or 128)
  if not isinstance(block_mask, BlockMask):
    raise ValueError(f"block_mask must be a BlockMask, got {type(block_mask).__name__}")
  if mask_mod is not None and mask_mod is not block_mask.mask_mod:
    raise ValueError("mask_mod differs from block_mask.mask_mod; pass one of them")
  mask_b, mask_n, mask_t, mask_s = block_mask.shape
  if mask_t != seq_q or mask_s != seq_k or mask_b not in (1, batch) or mask_n not in (1, heads):
    raise ValueError(
        f"block_mask must have shape [B or 1, N or 1, T, S] for q.shape={q.shape} and "
        f"k.shape={k.shape}, got block_mask.shape={block_mask.shape}"
    )
  for name, given, own in (("block_q", block_q, block_mask.block_q),
                           ("block_k", block_k, block_mask.block_k)):
    if given is not None and given != own:
      raise ValueError(f"{name}={given} differs from block_mask.{name}={own}")
  return block_mask


def flex_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    score_mod: ScoreMod | None = None,
    mask_mod: MaskMod | None = None,
    block_mask: BlockMask | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    implementation: str | None = None,
) -> jax.Array:
  """Block-sparse FlexAttention in chunked XLA, layout ``[B, T, N, H]``.

  For each query block, an online-softmax scan (running max m, normaliser l, accumulator a)

      m' = max(m, max_s ℓ_ts),   l' = e^{m−m'} l + Σ_s e^{ℓ_ts−m'},
      a' = e^{m−m'} a + Σ_s e^{ℓ_ts−m'} v_s

  runs over the key blocks the block mask lists as non-empty for it; out = a / l.

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N.
    v_BxSxKxH: values.
    score_mod: ``(score, b, n, t, s) -> score`` applied to the scaled logits; None is identity.
    mask_mod: ``(b, n, t, s) -> bool``; None (and no block_mask) means every key is visible.
    block_mask: from :func:`create_block_mask` for this T and S (its mask_mod is used); built
      from ``mask_mod`` when None.
    scale: logit scale, default ``1 / sqrt(H)``.
    block_q, block_k: tile size, default 128 (or the block mask's; they must agree with it).
    implementation: None runs JAX's splash kernel on a TPU when it can (no ``score_mod``,
      S == T, and a mask_mod that does not depend on the batch row or traced values, evaluated
      densely on at most ``MAX_DENSE_MASK`` entries; :mod:`momentum_jax.attention.splash`),
      else this XLA scan; ``"xla"`` always the scan; ``"splash"`` always splash (interpret
      mode off the TPU), ``ValueError`` naming why it cannot.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=False, window=None,
                         segment_ids=None, bias=None, sinks=None)
  if implementation not in (None, "xla", "splash"):
    raise ValueError(f"implementation must be None, 'xla' or 'splash' for flex attention, got "
                     f"implementation={implementation!r}")
  mask = _resolve_block_mask(q_BxTxNxH, k_BxSxKxH, mask_mod, block_mask, block_q, block_k)
  wants_splash = implementation == "splash" or (
      implementation is None and jax.default_backend() == "tpu")
  if wants_splash:
    reason = None
    if score_mod is not None:
      reason = "splash attention has no score_mod"
    elif q_BxTxNxH.shape[1] != k_BxSxKxH.shape[1]:
      reason = (f"splash attention here needs S == T, got S={k_BxSxKxH.shape[1]} and "
                f"T={q_BxTxNxH.shape[1]}")
    else:
      dense_NxTxT = dense_flex_mask(mask.mask_mod, q_BxTxNxH.shape[2], q_BxTxNxH.shape[1])
      if dense_NxTxT is None:
        reason = ("the mask_mod depends on the batch row or traced values, or its grid passes "
                  "MAX_DENSE_MASK entries")
      else:
        return splash_flex_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, dense_NxTxT, scale=scale)
    if implementation == "splash":
      raise ValueError(f"implementation='splash': {reason}")
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  bq, bk = mask.block_q, mask.block_k
  num_q, num_k = mask.kind_BxNxQxK.shape[2:]
  width = mask.kv_index_BxNxQxM.shape[-1]
  dtype = compute_dtype(q_BxTxNxH)
  scale = head_dim**-0.5 if scale is None else scale
  lead = (batch, heads, num_q)
  kind_BxNxQxK = jnp.broadcast_to(mask.kind_BxNxQxK, (*lead, num_k))
  index_BxNxQxM = jnp.broadcast_to(mask.kv_index_BxNxQxM, (*lead, width))
  count_BxNxQ = jnp.broadcast_to(mask.kv_count_BxNxQ, lead)

  def pad(x, length):
    return jnp.pad(x.astype(dtype), ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))

  q_QxBxNxCxH = jnp.transpose(
      pad(q_BxTxNxH, num_q * bq).reshape(batch, num_q, bq, heads, head_dim), (1, 0, 3, 2, 4))
  to_tiles = lambda x: jnp.transpose(
      pad(x, num_k * bk).reshape(batch, num_k, bk, kv_heads, head_dim), (1, 0, 3, 2, 4))
  score_fn, consts = closure_convert_score(score_mod, batch, heads, bq, bk, dtype)
  tiles = Tiles(score_fn, mask.mask_mod, float(scale), seq_q, seq_k, bq, bk)
  out_QxBxNxCxH = flex_tiles(tiles, q_QxBxNxCxH, to_tiles(k_BxSxKxH), to_tiles(v_BxSxKxH),
                              consts, kind_BxNxQxK, index_BxNxQxM, count_BxNxQ)
  out_BxTxNxH = jnp.transpose(out_QxBxNxCxH, (1, 0, 3, 2, 4)).reshape(
      batch, num_q * bq, heads, head_dim)
  return out_BxTxNxH[:, :seq_q].astype(q_BxTxNxH.dtype)


def flex_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    score_mod: ScoreMod | None = None,
    mask_mod: MaskMod | None = None,
    block_mask: BlockMask | None = None,
    scale: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`flex_attention`: explicit T×S
  logits, score_mod and mask_mod evaluated on the full index grid, one softmax per row.

  ``block_mask`` contributes only its mask_mod; block sizes are validated and otherwise unused.
  With ``return_weights`` returns ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in the compute
  dtype: scores after score_mod with masked entries -inf; weights the softmax rows (all zeros for
  a row with no visible key).
  """
  check_attention_inputs(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=False, window=None,
                         segment_ids=None, bias=None, sinks=None)
  check_positive_int_or_none("block_q", block_q)
  check_positive_int_or_none("block_k", block_k)
  if block_mask is not None:
    mask_mod = _resolve_block_mask(q_BxTxNxH, k_BxSxKxH, mask_mod, block_mask, block_q,
                                   block_k).mask_mod
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k = k_BxSxKxH.shape[1]
  scale = head_dim**-0.5 if scale is None else scale
  dtype = compute_dtype(q_BxTxNxH)
  hi = jax.lax.Precision.HIGHEST
  k_BxSxNxH = repeat_kv(k_BxSxKxH.astype(dtype), heads)
  v_BxSxNxH = repeat_kv(v_BxSxKxH.astype(dtype), heads)
  scores_BxNxTxS = scale * jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH.astype(dtype), k_BxSxNxH,
                                      precision=hi)
  b_Bx1x1x1, n_1xNx1x1 = index_grid(batch, heads)
  t_1x1xTx1 = jnp.arange(seq_q, dtype=jnp.int32)[None, None, :, None]
  s_1x1x1xS = jnp.arange(seq_k, dtype=jnp.int32)[None, None, None, :]
  if score_mod is not None:
    scores_BxNxTxS = score_mod(scores_BxNxTxS, b_Bx1x1x1, n_1xNx1x1, t_1x1xTx1, s_1x1x1xS)
  if mask_mod is not None:
    visible = mask_mod(b_Bx1x1x1, n_1xNx1x1, t_1x1xTx1, s_1x1x1xS)
    scores_BxNxTxS = jnp.where(visible, scores_BxNxTxS, -jnp.inf)
  max_BxNxTx1 = jnp.max(scores_BxNxTxS, axis=-1, keepdims=True)
  max_BxNxTx1 = jax.lax.stop_gradient(jnp.where(jnp.isfinite(max_BxNxTx1), max_BxNxTx1, 0.0))
  exp_BxNxTxS = jnp.exp(scores_BxNxTxS - max_BxNxTx1)
  denom_BxNxTx1 = jnp.sum(exp_BxNxTxS, axis=-1, keepdims=True)
  weights_BxNxTxS = exp_BxNxTxS / jnp.where(denom_BxNxTx1 > 0, denom_BxNxTx1, 1.0)
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS
  return out_BxTxNxH


def _signature_mask(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, window: int | None,
    segment_ids: jax.Array | None, bias: jax.Array | None, sinks: jax.Array | None,
) -> MaskMod | None:
  """The mask_mod of the registry's ``causal`` / ``window`` / ``segment_ids`` arguments."""
  check_attention_inputs(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                         bias=bias, sinks=sinks)
  for name, value in (("bias", bias), ("sinks", sinks)):
    if value is not None:
      raise ValueError(f"flex attention takes no {name} (use a score_mod), "
                       f"got {name}.shape={value.shape}")
  mods = []
  if causal:
    mods.append(causal_mask if window is None else sliding_window_mask(window))
  if segment_ids is not None:
    mods.append(segment_mask(segment_ids))
  return and_masks(*mods) if mods else None


def flex_softmax_attention(
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
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
  """:func:`flex_attention` in the registry's signature (``"flex"``): ``causal``, ``window`` and
  ``segment_ids`` become :func:`causal_mask`, :func:`sliding_window_mask` and
  :func:`segment_mask`; ``bias`` and ``sinks`` raise ``ValueError``. The block mask is built per
  call (at trace time under jit); with traced ``segment_ids`` no tile can be skipped."""
  mask_mod = _signature_mask(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                             segment_ids=segment_ids, bias=bias, sinks=sinks)
  return flex_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_mod=mask_mod, scale=scale,
                        block_q=block_q, block_k=block_k)


def flex_softmax_attention_reference(
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
    block_q: int | None = None,
    block_k: int | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """:func:`flex_attention_reference` in the registry's signature (see
  :func:`flex_softmax_attention`)."""
  mask_mod = _signature_mask(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                             segment_ids=segment_ids, bias=bias, sinks=sinks)
  return flex_attention_reference(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_mod=mask_mod,
                                  scale=scale, block_q=block_q, block_k=block_k,
                                  return_weights=return_weights)


register_attention(
    "flex",
    AttentionVariant(flex_softmax_attention, flex_softmax_attention_reference,
                     params=("block_q", "block_k")),
)
