"""SLA, sparse-linear attention (Zhang et al., "SLA: Beyond Sparsity in Diffusion Transformers via
Fine-Tunable Sparse-Linear Attention", arXiv 2509.24006).

The T×S attention map is split at the granularity of blocks of C = ``block_size`` positions:

1. Block classification. Keys are smoothed, k̃ = k − mean_s(k) (SageAttention's smoothing), q
   and k̃ are mean-pooled over each block (over real positions only), and every query block i and
   query head ranks its visible key blocks j by the pooled score q̄_i · k̃̄_j. The paper ranks
   the rows of P_c = softmax(q̄ k̃̄ᵀ / √H); a row's softmax is increasing in the score, so the
   order is the same. Three tiers:

   - critical: the ``⌈ratio · num_key_blocks⌉`` blocks with the largest score (the authors' code
     rounds down, ``int(ratio · n)``; we round up so that a small ratio still keeps one block);
   - negligible: of the visible blocks that are not critical, the ``⌊negligible · visible_i⌋``
     with the smallest score, or all of them where fewer remain (the paper's bottom k_l %;
     visible_i = number of key blocks, or i + 1 when causal [our choice: a share of the visible
     blocks, rounded down, so a small share skips nothing]); skipped, they reach neither branch;
   - marginal: every other visible block, the linear branch's.

   The paper's method section has the three tiers; the authors' released code has no negligible
   tier (every block that is not critical is marginal), and ``negligible=0.0``, our default, is
   that code's rule.
2. Critical ("kept") blocks: exact softmax attention restricted to their keys,
   o_s(t) = Σ_{s ∈ kept(t)} e^{scale·q_t·k_s} v_s / Σ_{s ∈ kept(t)} e^{scale·q_t·k_s}.
3. Marginal blocks ("rest"): linear attention with φ = softmax over the feature dim,

       o_l(t) = φ(q_t) Σ_{s∈rest} φ(k_s)ᵀ v_s / (φ(q_t) · Σ_{s∈rest} φ(k_s) + ε),

   and o_l = 0 where the rest is empty (as the authors' kernel does when every block is kept).
   ε = 1e-6 as in ``linear.py`` (the authors' first release used 1e-5, their fused kernel none):
   huge logits make φ one-hot, the denominator underflows and the bare ratio would be NaN.
4. o = o_s + o_l · W with W = ``proj`` a learned H×H matrix per query head, zero at
   initialisation, so that SLA starts as block-sparse softmax attention. (The authors' ``proj_l``
   is one ``nn.Linear(H, H)`` with a bias, shared by the heads; we keep one matrix per head and,
   like every projection of our attention layer, no bias.)

Causal (our choice; the authors' SLA is for bidirectional diffusion transformers and has no causal
mode): with S == T, query block i classifies the visible key blocks j ≤ i only, the diagonal block
is always kept (it gets the largest score), the softmax part masks s > t inside it, and the linear
part covers the blocks j < i that are marginal. The key mean of the smoothing then runs over the
keys of blocks ≤ i only, so no future key reaches a query's selection. (Subtracting a mean shifts
a query block's pooled scores by a constant, so it never changes the selection in exact
arithmetic; it keeps the pooled scores small in low precision.)

The fast form never builds a T×S array: it gathers the critical key/value blocks of each query
block (``lax.top_k`` indices), O(T · kept · C · H) for the sparse part, and computes the linear
part from per-block summaries S_j = Σ_{s∈j} φ(k_s)ᵀ v_s, z_j = Σ_{s∈j} φ(k_s): the rest of query
block i is Σ_j marginal_ij · S_j (and likewise z) with the 0/1 marginal map of the blocks, one
(T/C) × (S/C) by (S/C) × H² matrix product per head, O((T/C) · (S/C) · H²), less than the
sparse part's O(T · kept · C · H) while S · H < kept · C³. (The authors' kernel subtracts the
kept summaries from the total instead; the product costs the same for every share of negligible
blocks and leaves no round-off where the rest is empty.) T and S are zero-padded internally to
multiples of C; padded keys are masked and excluded from the summaries. The float32 reference
builds the dense T×S scores and the dense φ(q)·φ(k) kernel, each masked by the same block
classification. The classification is a discrete choice: no gradient flows through it. GQA:
query head n reads kv head n // (N // K) and classifies its own blocks. Computation is in float32
(float64 for float64 inputs), the output in q's dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.registry import AttentionDims, AttentionVariant, register_attention
from momentum_jax.core.checks import check_attention_inputs, check_block_size, check_unsupported
from momentum_jax.core.heads import repeat_kv

_HI = jax.lax.Precision.HIGHEST
# Added to the linear branch's denominator, as in linear attention: it keeps the branch and its
# gradients finite when huge logits make φ one-hot and φ(q)·Σ φ(k) underflows.
_EPS = 1e-6


def sla_proj_zero_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """Per-query-head projection of the linear branch ``[N, H, H]``, zero at initialisation."""
  del key
  return jnp.zeros((dims.num_heads, dims.head_dim, dims.head_dim), jnp.float32)


def _check_sla(q: jax.Array, k: jax.Array, *, proj: jax.Array, causal: bool, ratio: float,
               negligible: float, block_size: int, window: int | None,
               segment_ids: jax.Array | None, bias: jax.Array | None,
               sinks: jax.Array | None) -> None:
  check_unsupported("sla", window=window, bias=bias, sinks=sinks)
  if segment_ids is not None:
    raise ValueError(
        f"segment_ids are not supported by sla attention, got segment_ids.shape="
        f"{np.shape(segment_ids)}")
  check_block_size(block_size)
  if (isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating))
      or not 0 < ratio <= 1):
    raise ValueError(f"ratio must be a Python float in (0, 1], got ratio={ratio!r}")
  if (isinstance(negligible, bool) or not isinstance(negligible, (int, float, np.floating))
      or not 0 <= negligible < 1):
    raise ValueError(f"negligible must be a Python float in [0, 1), got negligible={negligible!r}")
  if ratio + negligible > 1:
    raise ValueError(
        f"ratio + negligible must be at most 1, got ratio={ratio!r} and negligible={negligible!r}")
  if causal and q.shape[1] != k.shape[1]:
    raise ValueError(
        f"causal sla attention needs S == T, got q.shape={q.shape} and k.shape={k.shape}")
  heads, head_dim = q.shape[2:]
  if np.shape(proj) not in ((head_dim, head_dim), (heads, head_dim, head_dim)):
    raise ValueError(
        f"proj must have shape [H, H] = {(head_dim, head_dim)} or [N, H, H] = "
        f"{(heads, head_dim, head_dim)}, got proj.shape={np.shape(proj)}")


def _blocks(x_BxTxKxH: jax.Array, block_size: int) -> jax.Array:
  """``[B, T, K, H] -> [B, K, L, C, H]``, zero-padding T up to L·C."""
  batch, seq, heads, dim = x_BxTxKxH.shape
  num = -(-seq // block_size)
  x = jnp.pad(x_BxTxKxH, ((0, 0), (0, num * block_size - seq), (0, 0), (0, 0)))
  return jnp.transpose(x.reshape(batch, num, block_size, heads, dim), (0, 3, 1, 2, 4))


def _real(seq: int, num: int, block_size: int) -> jax.Array:
  """Boolean ``[L, C]``: True at positions < seq."""
  return (jnp.arange(num * block_size) < seq).reshape(num, block_size)


def sla_block_selection(
    q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, *, causal: bool, ratio: float, block_size: int,
    negligible: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The three tiers of every query block and query head (see the module docstring).

  Returns ``(index_BxKxGxQxM, valid_BxKxGxQxM, marginal_BxKxGxQxL)``: the critical blocks, M =
  ⌈ratio · L⌉ key-block indices per query block (L = ⌈S/C⌉), largest pooled score first, and
  whether each is visible (causal: index ≤ query block; the first M of a query block i < M − 1
  include invisible blocks, marked invalid); and the boolean map of the marginal blocks. The
  negligible blocks are the visible ones in neither. G = N / K.
  """
  dtype = jnp.promote_types(q_BxTxNxH.dtype, jnp.float32)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  groups = heads // kv_heads
  num_q, num_k = -(-seq_q // block_size), -(-seq_k // block_size)
  kept = min(num_k, max(1, math.ceil(ratio * num_k)))
  q_BxKxGxQxCxH = _blocks(q_BxTxNxH.astype(dtype), block_size).reshape(
      batch, kv_heads, groups, num_q, block_size, head_dim)
  k_BxKxLxCxH = _blocks(k_BxSxKxH.astype(dtype), block_size)
  count_q_Q = jnp.sum(_real(seq_q, num_q, block_size), axis=1).astype(dtype)
  count_k_L = jnp.sum(_real(seq_k, num_k, block_size), axis=1).astype(dtype)
  qbar_BxKxGxQxH = jnp.sum(q_BxKxGxQxCxH, axis=4) / count_q_Q[:, None]
  ksum_BxKxLxH = jnp.sum(k_BxKxLxCxH, axis=3)
  kbar_BxKxLxH = ksum_BxKxLxH / count_k_L[:, None]
  if causal:  # the mean over the keys of blocks <= i, one per query block i
    mean_BxKxQxH = jnp.cumsum(ksum_BxKxLxH, axis=2) / jnp.cumsum(count_k_L)[:, None]
  else:
    mean_BxKxQxH = (jnp.sum(ksum_BxKxLxH, axis=2, keepdims=True) / seq_k)
    mean_BxKxQxH = jnp.broadcast_to(mean_BxKxQxH, (batch, kv_heads, num_q, head_dim))
  scores = jnp.einsum("bkgqh,bklh->bkgql", qbar_BxKxGxQxH, kbar_BxKxLxH, precision=_HI)
  scores -= jnp.einsum("bkgqh,bkqh->bkgq", qbar_BxKxGxQxH, mean_BxKxQxH, precision=_HI)[..., None]
  q_Qx1, l_1xL = jnp.arange(num_q)[:, None], jnp.arange(num_k)[None, :]
  visible_QxL = l_1xL <= q_Qx1 if causal else jnp.ones((num_q, num_k), bool)
  if causal:
    scores = jnp.where(l_1xL > q_Qx1, -jnp.inf, jnp.where(l_1xL == q_Qx1, jnp.inf, scores))
  scores = jax.lax.stop_gradient(scores)
  _, index_BxKxGxQxM = jax.lax.top_k(scores, kept)
  valid_BxKxGxQxM = jnp.take_along_axis(
      jnp.broadcast_to(visible_QxL, scores.shape), index_BxKxGxQxM, axis=-1)
  critical_BxKxGxQxL = jnp.any(
      (index_BxKxGxQxM[..., None] == jnp.arange(num_k)) & valid_BxKxGxQxM[..., None], axis=-2)
  marginal_BxKxGxQxL = visible_QxL & ~critical_BxKxGxQxL
  if negligible > 0:
    # The rank of each visible non-critical block in its row, smallest score first; the first
    # ⌊negligible · visible_i⌋ are skipped (counts in float64, static).
    order = jnp.where(marginal_BxKxGxQxL, scores, jnp.inf)
    rank_BxKxGxQxL = jnp.argsort(jnp.argsort(order, axis=-1, stable=True), axis=-1, stable=True)
    visible_Q = np.minimum(np.arange(num_q) + 1, num_k) if causal else np.full(num_q, num_k)
    skipped_Q = np.array([math.floor(negligible * count) for count in visible_Q], np.int32)
    marginal_BxKxGxQxL &= rank_BxKxGxQxL >= skipped_Q[:, None]
  return index_BxKxGxQxM, valid_BxKxGxQxM, marginal_BxKxGxQxL


def _proj_KxGxHxH(proj: jax.Array, heads: int, kv_heads: int, head_dim: int,
                  dtype: jnp.dtype) -> jax.Array:
  proj = jnp.broadcast_to(jnp.asarray(proj, dtype), (heads, head_dim, head_dim))
  return proj.reshape(kv_heads, heads // kv_heads, head_dim, head_dim)


def _sparse_branch(q_BxKxGxQxCxH: jax.Array, k_sel: jax.Array, v_sel: jax.Array,
                   index_BxKxGxQxM: jax.Array, valid_BxKxGxQxM: jax.Array, *, scale: float,
                   causal: bool, seq_k: int) -> jax.Array:
  """SLA's sparse part: softmax over the gathered kept blocks ``k_sel``/``v_sel``
  ``[B, K, G, Q, M, C, H]`` (logits ``[B, K, G, Q, C, M, C]``), padded and, when ``causal``,
  future keys masked; a query row with no kept key gives zeros."""
  num_q, size = q_BxKxGxQxCxH.shape[3:5]
  logits = scale * jnp.einsum("bkgqch,bkgqmeh->bkgqcme", q_BxKxGxQxCxH, k_sel, precision=_HI)
  key_pos_BxKxGxQxMxC = index_BxKxGxQxM[..., None] * size + jnp.arange(size)
  keep = (valid_BxKxGxQxM[..., None] & (key_pos_BxKxGxQxMxC < seq_k))[:, :, :, :, None]
  if causal:
    query_pos_QxC = jnp.arange(num_q * size).reshape(num_q, size)
    keep &= key_pos_BxKxGxQxMxC[:, :, :, :, None] <= query_pos_QxC[:, :, None, None]
  logits = jnp.where(keep, logits, -jnp.inf)
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=(5, 6), keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  exp = jnp.exp(logits - row_max)
  weights = exp / jnp.sum(exp, axis=(5, 6), keepdims=True)
  return jnp.einsum("bkgqcme,bkgqmeh->bkgqch", weights, v_sel, precision=_HI)


def _linear_branch(q_BxKxGxQxCxH: jax.Array, k_BxKxLxCxH: jax.Array, v_BxKxLxCxH: jax.Array,
                   marginal_BxKxGxQxL: jax.Array, *, seq_k: int) -> jax.Array:
  """SLA's linear part over the marginal blocks, from per-block summaries
  S_j = Σ_{s∈j} φ(k_s)ᵀ v_s and z_j = Σ_{s∈j} φ(k_s) (padded keys excluded); zeros for a query
  block without marginal blocks."""
  num_k, size = k_BxKxLxCxH.shape[2:4]
  phi_q = jax.nn.softmax(q_BxKxGxQxCxH, axis=-1)
  phi_k = jax.nn.softmax(k_BxKxLxCxH, axis=-1) * _real(seq_k, num_k, size)[..., None]
  state_BxKxLxHxH = jnp.einsum("bklch,bklce->bklhe", phi_k, v_BxKxLxCxH, precision=_HI)
  norm_BxKxLxH = jnp.sum(phi_k, axis=3)
  weight = marginal_BxKxGxQxL.astype(phi_q.dtype)
  rest_s = jnp.einsum("bkgql,bklhe->bkgqhe", weight, state_BxKxLxHxH, precision=_HI)
  rest_z = jnp.einsum("bkgql,bklh->bkgqh", weight, norm_BxKxLxH, precision=_HI)
  num = jnp.einsum("bkgqch,bkgqhe->bkgqce", phi_q, rest_s, precision=_HI)
  den = jnp.einsum("bkgqch,bkgqh->bkgqc", phi_q, rest_z, precision=_HI)
  nonempty = jnp.any(marginal_BxKxGxQxL, axis=-1)[..., None, None]
  return jnp.where(nonempty, num / (den[..., None] + _EPS), 0.0)


def sla_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    proj: jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    ratio: float = 0.2,
    negligible: float = 0.0,
    block_size: int = 64,
) -> jax.Array:
  """SLA: block-sparse softmax on the critical key blocks plus projected linear attention on the
  marginal ones, the negligible ones skipped, without any T×S array (see the module docstring).

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N; S == T when ``causal``.
    v_BxSxKxH: values.
    proj: ``[N, H, H]`` (or shared ``[H, H]``) projection of the linear branch,
      o = o_s + o_l · proj. Differentiable; learned, zero-initialised.
    causal: block classification among visible blocks with the diagonal block always kept,
      s ≤ t inside it.
    window, segment_ids, bias, sinks: not supported; anything but None raises ``ValueError``.
    scale: softmax logit scale, default ``1 / sqrt(H)`` (the feature map φ is unscaled).
    ratio: share of key blocks kept (critical) per query block, a Python float in (0, 1].
    negligible: share of the visible key blocks skipped per query block (the lowest pooled
      scores among those not kept), a Python float in [0, 1) with ratio + negligible ≤ 1;
      0 (the default) sends every block that is not kept to the linear branch.
    block_size: block length C for queries and keys (T, S are padded internally).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_sla(q_BxTxNxH, k_BxSxKxH, proj=proj, causal=causal, ratio=ratio, negligible=negligible,
             block_size=block_size, window=window, segment_ids=segment_ids, bias=bias,
             sinks=sinks)
  dtype = jnp.promote_types(q_BxTxNxH.dtype, jnp.float32)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  groups, size = heads // kv_heads, block_size
  num_q = -(-seq_q // size)
  scale = head_dim**-0.5 if scale is None else scale
  index_BxKxGxQxM, valid_BxKxGxQxM, marginal_BxKxGxQxL = sla_block_selection(
      q_BxTxNxH, k_BxSxKxH, causal=causal, ratio=ratio, block_size=size, negligible=negligible)

  q_BxKxGxQxCxH = _blocks(q_BxTxNxH.astype(dtype), size).reshape(
      batch, kv_heads, groups, num_q, size, head_dim)
  k_BxKxLxCxH = _blocks(k_BxSxKxH.astype(dtype), size)
  v_BxKxLxCxH = _blocks(v_BxSxKxH.astype(dtype), size)
  b_ix = jnp.arange(batch)[:, None, None, None, None]
  k_ix = jnp.arange(kv_heads)[None, :, None, None, None]
  o_sparse = _sparse_branch(q_BxKxGxQxCxH, k_BxKxLxCxH[b_ix, k_ix, index_BxKxGxQxM],
                            v_BxKxLxCxH[b_ix, k_ix, index_BxKxGxQxM], index_BxKxGxQxM,
                            valid_BxKxGxQxM, scale=scale, causal=causal, seq_k=seq_k)
  o_linear = _linear_branch(q_BxKxGxQxCxH, k_BxKxLxCxH, v_BxKxLxCxH, marginal_BxKxGxQxL,
                            seq_k=seq_k)
  proj_KxGxHxH = _proj_KxGxHxH(proj, heads, kv_heads, head_dim, dtype)
  out = o_sparse + jnp.einsum("bkgqch,kghe->bkgqce", o_linear, proj_KxGxHxH, precision=_HI)

  out_BxTxNxH = jnp.transpose(out.reshape(batch, heads, num_q * size, head_dim), (0, 2, 1, 3))
  return out_BxTxNxH[:, :seq_q].astype(q_BxTxNxH.dtype)


def sla_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    proj: jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    ratio: float = 0.2,
    negligible: float = 0.0,
    block_size: int = 64,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`sla_attention` on dense T×S arrays:
  the classification of :func:`sla_block_selection` expanded to token masks, a masked softmax over
  the critical entries and a masked, normalised φ(q)·φ(k) kernel over the marginal entries.

  With ``return_weights`` returns ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` of the sparse
  branch: the scaled logits with -inf outside the kept visible entries, and its softmax weights.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_sla(q_BxTxNxH, k_BxSxKxH, proj=proj, causal=causal, ratio=ratio, negligible=negligible,
             block_size=block_size, window=window, segment_ids=segment_ids, bias=bias,
             sinks=sinks)
  dtype = jnp.promote_types(q_BxTxNxH.dtype, jnp.float32)
  batch, seq_q, heads, head_dim = q_BxTxNxH.shape
  seq_k, kv_heads = k_BxSxKxH.shape[1:3]
  num_k = -(-seq_k // block_size)
  scale = head_dim**-0.5 if scale is None else scale
  index, valid, marginal = sla_block_selection(
      q_BxTxNxH, k_BxSxKxH, causal=causal, ratio=ratio, block_size=block_size,
      negligible=negligible)
  onehot = jax.nn.one_hot(index, num_k, dtype=jnp.int32) * valid[..., None]
  kept_BxNxQxL = (jnp.sum(onehot, axis=-2) > 0).reshape(batch, heads, -1, num_k)
  marginal_BxNxQxL = marginal.reshape(batch, heads, -1, num_k)
  t_T, s_S = jnp.arange(seq_q), jnp.arange(seq_k)
  expand = lambda blocks: blocks[:, :, t_T // block_size][:, :, :, s_S // block_size]
  kept_BxNxTxS, marginal_BxNxTxS = expand(kept_BxNxQxL), expand(marginal_BxNxQxL)
  visible_TxS = s_S[None, :] <= t_T[:, None] if causal else jnp.ones((seq_q, seq_k), bool)

  q32 = q_BxTxNxH.astype(dtype)
  k32 = repeat_kv(k_BxSxKxH.astype(dtype), heads)
  v32 = repeat_kv(v_BxSxKxH.astype(dtype), heads)
  sparse_mask = kept_BxNxTxS & visible_TxS
  scores = jnp.where(sparse_mask, scale * jnp.einsum("btnh,bsnh->bnts", q32, k32, precision=_HI),
                     -jnp.inf)
  weights = jax.nn.softmax(scores, axis=-1)
  o_sparse = jnp.einsum("bnts,bsnh->btnh", weights, v32, precision=_HI)

  kernel = jnp.einsum("btnh,bsnh->bnts", jax.nn.softmax(q32, axis=-1),
                      jax.nn.softmax(k32, axis=-1), precision=_HI)
  kernel = jnp.where(marginal_BxNxTxS, kernel, 0.0)
  linear_weights = kernel / (jnp.sum(kernel, axis=-1, keepdims=True) + _EPS)
  o_linear = jnp.einsum("bnts,bsnh->btnh", linear_weights, v32, precision=_HI)
  proj_NxHxH = jnp.broadcast_to(jnp.asarray(proj, dtype), (heads, head_dim, head_dim))
  out = o_sparse + jnp.einsum("btnh,nhe->btne", o_linear, proj_NxHxH, precision=_HI)
  out = out.astype(q_BxTxNxH.dtype)
  if return_weights:
    return out, scores, weights
  return out


register_attention(
    "sla",
    AttentionVariant(
        sla_attention, sla_attention_reference,
        params=("proj", "ratio", "negligible", "block_size"),
        # SLA (arXiv 2509.24006) zero-initialises the linear branch's projection.
        learned={"proj": sla_proj_zero_init},
    ),
)
