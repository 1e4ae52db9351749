"""The attention relaxations of Xue, Moosavi and Aletras, "Deconstructing Attention: Investigating
Design Principles for Effective Language Modeling" (arXiv 2510.11602), as attention functions.

Standard attention A = softmax(QKᵀ/√d) mixes positions, adapts to each sequence, has a specific
form (dot product + softmax) and ties Q, K to the current hidden state. Each variant relaxes one
of these; all are causal (``causal=False`` raises, except for the token-wise one):

- ``deconstructed_mlp`` (§3.2, "MLP", no token mixing): the paper replaces attention by a gated
  MLP FC_Dn(SiLU(FC_Gt(h)) · FC_Up(h)). With the layer's projections as FC_Gt = W_Q, FC_Up = W_V
  and the output projection as FC_Dn this is, per head, o_t = SiLU(q_t) ⊙ v_t: every token only
  sees itself (k is unused). The fast form is the reference (one elementwise product); it is
  registered as both.
- ``deconstructed_taylor`` (§3.3, "Approximate", after Arora et al., arXiv 2402.18668): softmax
  replaced by its second-order Taylor expansion, A_ts ∝ 1 + x + x²/2 with x = scale · q_t·k_s
  (always ≥ 1/2, so rows normalise safely), one normaliser per row as in Eq. 6. (The paper's
  Appendix I writes the recurrence as three separately normalised terms; we follow Eq. 6 and the
  Based form it cites.) Fast form: chunked linear attention with the feature map
  φ(x) = [1, x̃, x̃ ⊗ x̃ / √2], x̃ = √scale · x, whose per-block states Σ v, Σ k̃ ⊗ v,
  Σ k̃ ⊗ k̃ ⊗ v are never expanded to 1 + H + H² features per token; O(T·H³) time, O((T/C)·H³)
  memory per kv head. Reference: the explicit T×T matrix.
- ``deconstructed_self_gated`` (§3.3, "Non-approximate"): no pairwise similarity; each key's
  weight is its own self-gate s_j = scale · SiLU(q_j)·k_j, normalised causally over time:
  o_t = Σ_{j≤t} e^{s_j} v_j / Σ_{j≤t} e^{s_j} (Eqs. 7, 8, 18). Fast form: an O(T) associative
  scan of the online-softmax triple (running max, Σ e^{s−m} v, Σ e^{s−m}); reference: the T×T
  matrix. SiLU acts on q as the variant receives it, i.e. after the model's RoPE, if any (the
  dot product of a rotated q_j and k_j at the same position is RoPE-invariant without the SiLU).
- ``deconstructed_fixed_qk`` (§3.4, "RndEmbQK" / "FixedSeqQK", sequence independence): queries
  and keys that do not depend on the input, so the attention map is the same for every
  sequence. The paper obtains them by running a fixed random (RndEmbQK) or fixed text
  (FixedSeqQK) sequence through the lower layers and projecting it; at the level of an attention
  function both become learned position-indexed queries ``fixed_q [L, N, H]`` and keys
  ``fixed_k [L, K, H]`` for L = the context length, initialised N(0, 1) (the random-embedding
  variant), with the incoming q and k ignored. Fast form: :func:`softmax_attention` on them;
  reference: :func:`softmax_attention_reference`. Given the tables, the map is indexed by absolute
  position; a model passes the tables' rows at each token's position within its segment
  (:func:`table_rows_at_positions`), so a left-padded prompt continues as it would alone.

StaticEmbQK (§3.5: Q, K from the static token embeddings instead of the hidden state) changes where
a layer takes q and k from, not the attention function, so it has no entry here.

GQA: query head n reads kv head n // (N // K). Computation is in float32 (float64 for float64
inputs), the output in q's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, LearnedLayout, register_attention)
from momentum_jax.attention.softmax import softmax_attention, softmax_attention_reference
from momentum_jax.core.checks import check_attention_inputs, check_block_size, check_unsupported
from momentum_jax.core.heads import compute_dtype, repeat_kv

_HI = jax.lax.Precision.HIGHEST


def _check_kernel_form(name: str, q: jax.Array, k: jax.Array, *, causal: bool,
                       window: int | None, segment_ids: jax.Array | None,
                       bias: jax.Array | None, sinks: jax.Array | None) -> None:
  check_unsupported(name, window=window, bias=bias, sinks=sinks)
  if segment_ids is not None:
    raise ValueError(f"segment_ids are not supported by {name} attention, "
                     f"got segment_ids.shape={np.shape(segment_ids)}")
  if not causal:
    raise ValueError(f"{name} attention is causal only, got causal=False")
  if q.shape[1] != k.shape[1]:
    raise ValueError(f"{name} attention needs S == T, got q.shape={q.shape} and k.shape={k.shape}")


def _causal_weights_output(weights_BxNxTxS: jax.Array, v_BxSxKxH: jax.Array,
                           heads: int) -> jax.Array:
  v_BxSxNxH = repeat_kv(v_BxSxKxH.astype(weights_BxNxTxS.dtype), heads)
  return jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=_HI)


# ---------------------------------------------------------------------------------------------
# §3.2 no token mixing


def deconstructed_mlp_attention(
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
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """No token mixing: o_t = SiLU(q_t) ⊙ v_t per head, the gated MLP of the paper's "MLP" variant
  built from the layer's own projections. Fast form and reference at once.

  Args:
    q_BxTxNxH: the gate (after any RoPE; configure the model with ``rope=False`` for the paper's
      position-free MLP).
    k_BxSxKxH: unused beyond validation.
    v_BxSxKxH: the up-projection; S == T.
    causal, segment_ids: validated and otherwise ignored (a token-wise map is causal and stays
      inside its segment either way).
    window, bias, sinks, scale: not supported; anything but None raises ``ValueError``.
    return_weights: also return the mixing matrix, the identity (scores 0 on the diagonal, -inf
      elsewhere).

  Returns:
    ``[B, T, N, H]`` in q's dtype, or ``(out, scores_BxNxTxS, weights_BxNxTxS)``.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  check_unsupported("deconstructed_mlp", window=window, bias=bias, sinks=sinks)
  if scale is not None:
    raise ValueError(f"scale is not supported by deconstructed_mlp attention, got scale={scale!r}")
  if q_BxTxNxH.shape[1] != k_BxSxKxH.shape[1]:
    raise ValueError(f"deconstructed_mlp attention needs S == T, "
                     f"got q.shape={q_BxTxNxH.shape} and k.shape={k_BxSxKxH.shape}")
  batch, seq, heads, _ = q_BxTxNxH.shape
  dtype = compute_dtype(q_BxTxNxH)
  out = jax.nn.silu(q_BxTxNxH.astype(dtype)) * repeat_kv(v_BxSxKxH.astype(dtype), heads)
  out = out.astype(q_BxTxNxH.dtype)
  if not return_weights:
    return out
  eye_TxT = jnp.eye(seq, dtype=dtype)
  weights = jnp.broadcast_to(eye_TxT, (batch, heads, seq, seq))
  scores = jnp.where(weights > 0, 0.0, -jnp.inf).astype(dtype)
  return out, scores, weights


# ---------------------------------------------------------------------------------------------
# §3.3 Approximate: second-order Taylor softmax


def _taylor(x: jax.Array) -> jax.Array:
  return 1.0 + x + 0.5 * x * x


def deconstructed_taylor_attention(
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
    block_size: int = 64,
) -> jax.Array:
  """Causal second-order Taylor attention, chunked linear form.

      out_t = Σ_{s≤t} τ(x_ts) v_s / Σ_{s≤t} τ(x_ts),  τ(x) = 1 + x + x²/2,  x_ts = scale · q_t·k_s

  Within a block of C = ``block_size`` positions τ is evaluated on the masked C×C logits; the past
  enters through exclusive prefix sums of the per-block states (Σ 1, Σ k̃, Σ k̃⊗k̃ and the same
  times v), contracted with q̃ once and twice.

  Args:
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH: as in :func:`softmax_attention`, with S == T.
    causal: must be True.
    window, segment_ids, bias, sinks: not supported; anything but None raises ``ValueError``.
    scale: logit scale, default ``1 / sqrt(H)``.
    block_size: chunk length C (T is padded internally).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_kernel_form("deconstructed_taylor", q_BxTxNxH, k_BxSxKxH, causal=causal, window=window,
                     segment_ids=segment_ids, bias=bias, sinks=sinks)
  check_block_size(block_size)
  dtype = compute_dtype(q_BxTxNxH)
  batch, seq, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxSxKxH.shape[2]
  groups, size = heads // kv_heads, block_size
  num = -(-seq // size)
  root = np.sqrt(head_dim**-0.5 if scale is None else scale)
  pad = ((0, 0), (0, num * size - seq), (0, 0), (0, 0))

  def blocks(x, heads_):  # [B, T, heads, H] -> [B, heads, L, C, H]
    x = jnp.pad(x.astype(dtype), pad).reshape(batch, num, size, heads_, head_dim)
    return jnp.transpose(x, (0, 3, 1, 2, 4))

  q_BxKxGxLxCxH = (root * blocks(q_BxTxNxH, heads)).reshape(
      batch, kv_heads, groups, num, size, head_dim)
  k_BxKxLxCxH = root * blocks(k_BxSxKxH, kv_heads)
  v_BxKxLxCxH = blocks(v_BxSxKxH, kv_heads)

  logits = jnp.einsum("bkglch,bkleh->bkglce", q_BxKxGxLxCxH, k_BxKxLxCxH, precision=_HI)
  causal_CxC = jnp.tril(jnp.ones((size, size), bool))
  tau = jnp.where(causal_CxC, _taylor(logits), 0.0)
  numer = jnp.einsum("bkglce,bkleh->bkglch", tau, v_BxKxLxCxH, precision=_HI)
  denom = jnp.sum(tau, axis=-1)

  def past(state):  # exclusive prefix sum over blocks (axis 2)
    return jnp.cumsum(state, axis=2) - state

  v0 = past(jnp.sum(v_BxKxLxCxH, axis=3))
  v1 = past(jnp.einsum("bklci,bklch->bklih", k_BxKxLxCxH, v_BxKxLxCxH, precision=_HI))
  v2 = past(jnp.einsum("bklci,bklcj,bklch->bklijh", k_BxKxLxCxH, k_BxKxLxCxH, v_BxKxLxCxH,
                       precision=_HI))
  z1 = past(jnp.sum(k_BxKxLxCxH, axis=3))
  z2 = past(jnp.einsum("bklci,bklcj->bklij", k_BxKxLxCxH, k_BxKxLxCxH, precision=_HI))
  z0 = (jnp.arange(num) * size).astype(dtype)  # earlier blocks are never padded
  q = q_BxKxGxLxCxH
  qq = jnp.einsum("bkglci,bkglcj->bkglcij", q, q, precision=_HI)
  numer += (v0[:, :, None, :, None]
            + jnp.einsum("bkglci,bklih->bkglch", q, v1, precision=_HI)
            + 0.5 * jnp.einsum("bkglcij,bklijh->bkglch", qq, v2, precision=_HI))
  denom += (z0[:, None]
            + jnp.einsum("bkglci,bkli->bkglc", q, z1, precision=_HI)
            + 0.5 * jnp.einsum("bkglcij,bklij->bkglc", qq, z2, precision=_HI))
  out = (numer / denom[..., None]).reshape(batch, heads, num * size, head_dim)
  return jnp.transpose(out, (0, 2, 1, 3))[:, :seq].astype(q_BxTxNxH.dtype)


def deconstructed_taylor_attention_reference(
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
    block_size: int = 64,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`deconstructed_taylor_attention`
  with the explicit T×T matrix τ(x_ts) / Σ_s τ(x_ts) (``block_size`` validated, unused). With
  ``return_weights``: scores are x_ts with -inf where s > t, weights the normalised matrix."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_kernel_form("deconstructed_taylor", q_BxTxNxH, k_BxSxKxH, causal=causal, window=window,
                     segment_ids=segment_ids, bias=bias, sinks=sinks)
  check_block_size(block_size)
  dtype = compute_dtype(q_BxTxNxH)
  seq, heads, head_dim = q_BxTxNxH.shape[1:]
  scale = head_dim**-0.5 if scale is None else scale
  k_BxSxNxH = repeat_kv(k_BxSxKxH.astype(dtype), heads)
  x = scale * jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH.astype(dtype), k_BxSxNxH, precision=_HI)
  visible_TxS = jnp.tril(jnp.ones((seq, seq), bool))
  tau = jnp.where(visible_TxS, _taylor(x), 0.0)
  weights = tau / jnp.sum(tau, axis=-1, keepdims=True)
  out = _causal_weights_output(weights, v_BxSxKxH, heads).astype(q_BxTxNxH.dtype)
  if return_weights:
    return out, jnp.where(visible_TxS, x, -jnp.inf), weights
  return out


# ---------------------------------------------------------------------------------------------
# §3.3 Non-approximate: self-gated keys, softmax over time


def _self_gates(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, scale: float | None) -> jax.Array:
  """s ``[B, T, N]`` = scale · SiLU(q_t)·k_t."""
  dtype = compute_dtype(q_BxTxNxH)
  heads, head_dim = q_BxTxNxH.shape[2:]
  scale = head_dim**-0.5 if scale is None else scale
  k_BxTxNxH = repeat_kv(k_BxSxKxH.astype(dtype), heads)
  return scale * jnp.sum(jax.nn.silu(q_BxTxNxH.astype(dtype)) * k_BxTxNxH, axis=-1)


def deconstructed_self_gated_attention(
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
) -> jax.Array:
  """Causal self-gated ("Non-approximate") attention by an O(T) associative scan.

      out_t = Σ_{j≤t} e^{s_j} v_j / Σ_{j≤t} e^{s_j},   s_j = scale · SiLU(q_j)·k_j

  The scan combines (m, Σ e^{s−m} v, Σ e^{s−m}) triples with the running max m held out of the
  gradient, so no prefix under- or overflows.

  Args:
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH: as in :func:`softmax_attention`, with S == T.
    causal: must be True.
    window, segment_ids, bias, sinks: not supported; anything but None raises ``ValueError``.
    scale: gate scale, default ``1 / sqrt(H)``.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_kernel_form("deconstructed_self_gated", q_BxTxNxH, k_BxSxKxH, causal=causal,
                     window=window, segment_ids=segment_ids, bias=bias, sinks=sinks)
  heads = q_BxTxNxH.shape[2]
  s_BxTxN = _self_gates(q_BxTxNxH, k_BxSxKxH, scale)
  m_BxTxN = jax.lax.stop_gradient(s_BxTxN)
  e_BxTxN = jnp.exp(s_BxTxN - m_BxTxN)  # 1, carrying the gradient of s
  v_BxTxNxH = repeat_kv(v_BxSxKxH.astype(s_BxTxN.dtype), heads)

  def combine(earlier, later):
    m1, n1, d1 = earlier
    m2, n2, d2 = later
    m = jax.lax.stop_gradient(jnp.maximum(m1, m2))
    a1, a2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
    return m, a1[..., None] * n1 + a2[..., None] * n2, a1 * d1 + a2 * d2

  _, numer, denom = jax.lax.associative_scan(
      combine, (m_BxTxN, e_BxTxN[..., None] * v_BxTxNxH, e_BxTxN), axis=1)
  return (numer / denom[..., None]).astype(q_BxTxNxH.dtype)


def deconstructed_self_gated_attention_reference(
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
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`deconstructed_self_gated_attention`
  with the explicit T×T matrix softmax_{j≤t}(s_j). With ``return_weights``: scores are s_j on
  every row t ≥ j (-inf where j > t), weights the row softmax."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_kernel_form("deconstructed_self_gated", q_BxTxNxH, k_BxSxKxH, causal=causal,
                     window=window, segment_ids=segment_ids, bias=bias, sinks=sinks)
  seq, heads = q_BxTxNxH.shape[1:3]
  s_BxTxN = _self_gates(q_BxTxNxH, k_BxSxKxH, scale)
  visible_TxS = jnp.tril(jnp.ones((seq, seq), bool))
  scores = jnp.where(visible_TxS, jnp.transpose(s_BxTxN, (0, 2, 1))[:, :, None, :], -jnp.inf)
  weights = jax.nn.softmax(scores, axis=-1)
  out = _causal_weights_output(weights, v_BxSxKxH, heads).astype(q_BxTxNxH.dtype)
  if return_weights:
    return out, scores, weights
  return out


# ---------------------------------------------------------------------------------------------
# §3.4 sequence-independent queries and keys


def fixed_q_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """Position-indexed queries ``[context_len, N, H]`` ~ N(0, 1) (the random-embedding variant)."""
  return jax.random.normal(key, (dims.context_len, dims.num_heads, dims.head_dim), jnp.float32)


def fixed_k_init(dims: AttentionDims, key: jax.Array) -> jax.Array:
  """Position-indexed keys ``[context_len, K, H]`` ~ N(0, 1)."""
  return jax.random.normal(key, (dims.context_len, dims.num_kv_heads, dims.head_dim),
                           jnp.float32)


def _fixed_qk(q: jax.Array, k: jax.Array, fixed_q: jax.Array,
              fixed_k: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The fixed queries and keys at q's and k's shapes: a ``[L, ·, H]`` table's first rows, or a
  per-token ``[B, T, ·, H]`` gather used as it is."""
  batch, seq_q, heads, head_dim = q.shape
  seq_k, kv_heads = k.shape[1:3]
  fixed = []
  for name, x, seq, h, target in (("fixed_q", fixed_q, seq_q, heads, q),
                                  ("fixed_k", fixed_k, seq_k, kv_heads, k)):
    shape = np.shape(x)
    per_token = shape == (batch, seq, h, head_dim)
    if not per_token and (len(shape) != 3 or shape[0] < seq or shape[1:] != (h, head_dim)):
      raise ValueError(
          f"{name} must have shape [L, {h}, {head_dim}] with L >= {seq} (the sequence length) or "
          f"[{batch}, {seq}, {h}, {head_dim}] (one row per token), got {name}.shape={shape}, "
          f"q.shape={q.shape} and k.shape={k.shape}")
    rows = jnp.asarray(x) if per_token else jnp.asarray(x)[None, :seq]
    fixed.append(jnp.broadcast_to(rows.astype(target.dtype), target.shape))
  return fixed[0], fixed[1]


def table_rows_at_positions(table_LxAxH: jax.Array, positions_BxT: jax.Array) -> jax.Array:
  """``[L, A, H]`` table → ``[B, T, A, H]``: the row of each token's position. A model passes the
  fixed queries and keys so, with positions restarting in each segment, so a left-padded or
  packed sequence sees the map it would see alone."""
  return table_LxAxH[positions_BxT]


def deconstructed_fixed_qk_attention(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    fixed_q: jax.Array,
    fixed_k: jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
) -> jax.Array:
  """Sequence-independent attention: :func:`softmax_attention` with learned position-indexed
  queries and keys, the same map for every input; only v comes from the sequence.

      out_t = Σ_s softmax_s(scale · q̄_t·k̄_s) v_s

  Args:
    q_BxTxNxH, k_BxSxKxH: ignored beyond validation and their shapes.
    v_BxSxKxH: values.
    fixed_q: ``[L, N, H]`` learned queries, L >= T, of which rows 0 … T−1 are used; or
      ``[B, T, N, H]``, one row per query (:func:`table_rows_at_positions`). Differentiable.
    fixed_k: ``[L, K, H]`` learned keys, L >= S; or ``[B, S, K, H]``. Differentiable.
    causal, window, segment_ids, bias, sinks, scale: as in :func:`softmax_attention`.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  fq, fk = _fixed_qk(q_BxTxNxH, k_BxSxKxH, fixed_q, fixed_k)
  return softmax_attention(fq, fk, v_BxSxKxH, causal=causal, window=window,
                           segment_ids=segment_ids, bias=bias, sinks=sinks, scale=scale)


def deconstructed_fixed_qk_attention_reference(
    q_BxTxNxH: jax.Array,
    k_BxSxKxH: jax.Array,
    v_BxSxKxH: jax.Array,
    *,
    fixed_q: jax.Array,
    fixed_k: jax.Array,
    causal: bool = True,
    window: int | None = None,
    segment_ids: jax.Array | None = None,
    bias: jax.Array | None = None,
    sinks: jax.Array | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`deconstructed_fixed_qk_attention`: the fixed queries and keys
  through :func:`softmax_attention_reference` (same ``return_weights`` convention)."""
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  fq, fk = _fixed_qk(q_BxTxNxH, k_BxSxKxH, fixed_q, fixed_k)
  return softmax_attention_reference(fq, fk, v_BxSxKxH, causal=causal, window=window,
                                     segment_ids=segment_ids, bias=bias, sinks=sinks, scale=scale,
                                     return_weights=return_weights)


# The token-wise MLP variant's fast form is its reference (one elementwise product), so it is
# registered as both.
register_attention(
    "deconstructed_mlp",
    AttentionVariant(deconstructed_mlp_attention, deconstructed_mlp_attention),
)
register_attention(
    "deconstructed_taylor",
    AttentionVariant(deconstructed_taylor_attention, deconstructed_taylor_attention_reference,
                     params=("block_size",), masking="causal"),
)
register_attention(
    "deconstructed_self_gated",
    AttentionVariant(deconstructed_self_gated_attention,
                     deconstructed_self_gated_attention_reference, masking="causal"),
)
register_attention(
    "deconstructed_fixed_qk",
    AttentionVariant(
        deconstructed_fixed_qk_attention, deconstructed_fixed_qk_attention_reference,
        params=("fixed_q", "fixed_k"),
        # Learned position-indexed queries / keys ~ N(0, 1), [context_len, N or K, H].
        learned={"fixed_q": fixed_q_init, "fixed_k": fixed_k_init},
        layouts={"fixed_q": LearnedLayout(at_positions=table_rows_at_positions),
                 "fixed_k": LearnedLayout(at_positions=table_rows_at_positions)},
    ),
)
