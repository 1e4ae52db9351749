"""Linear attention (Katharopoulos et al., "Transformers are RNNs", arXiv 2006.16236):

    out_t = φ(q_t) · Σ_{s≤t} φ(k_s)ᵀ v_s / (φ(q_t) · Σ_{s≤t} φ(k_s) + eps)

with the sums over the whole sequence when ``causal=False``. φ is a positive feature map applied
per head over the head dimension: ``"elu+1"`` (the paper's default), ``"relu"`` or ``"softmax"``.

The fast form is chunked: the sequence is cut into blocks of ``block_size`` positions and a
``lax.scan`` over the blocks carries the state S = Σ φ(k_s)ᵀ v_s ([H, H] per kv head) and the
normaliser z = Σ φ(k_s) ([H]). Within a block the causal part is the masked C×C product, the past
enters through φ(q_t) S, so time is O(T·C·H + T·H²) and memory O(T·H + (T/C)·H²); no T×T array
is built. Autodiff through the scan keeps one state per block for the backward pass, (T/C)·H²
floats per kv head (T·H at C = H). Computation is in float32 (float64 for float64 inputs), the
output in q's dtype.

Segments: a segment is a maximal run of equal ``segment_ids``; the state restarts at each run's
first position, so a query sees exactly the keys s ≤ t of its own run (an id that recurs after a
different id starts a new segment, unlike the softmax mask, which joins equal ids anywhere).

Decoding (:func:`linear_decode`) is the RNN form: the state S and normaliser z of each sequence
(:class:`LinearState`, O(H²) per kv head whatever the context), updated row by row by a
``lax.scan`` and restarted at every segment start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.decoding import DecodeContext, row_starts
from momentum_jax.attention.registry import (
    AttentionDims, AttentionVariant, Decoding, register_attention,
)
from momentum_jax.core.checks import (
    check_attention_inputs, check_block_size, check_unsupported, is_concrete,
)
from momentum_jax.core.chunks import from_blocks, to_blocks
from momentum_jax.core.heads import compute_dtype, repeat_kv
from momentum_jax.core.masks import segment_runs, visibility_mask

_HI = jax.lax.Precision.HIGHEST

FEATURE_MAPS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu+1": lambda x: jax.nn.elu(x) + 1.0,
    "relu": jax.nn.relu,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}


def _check_linear(
    q: jax.Array, k: jax.Array, *, causal: bool, feature_map: str, eps: float, block_size: int,
    window: int | None, bias: jax.Array | None, sinks: jax.Array | None,
) -> None:
  check_unsupported("linear", window=window, bias=bias, sinks=sinks)
  if feature_map not in FEATURE_MAPS:
    raise ValueError(
        f"feature_map must be one of {sorted(FEATURE_MAPS)}, got feature_map={feature_map!r}"
    )
  if np.shape(eps) != () or (is_concrete(eps) and not float(eps) > 0):
    raise ValueError(f"eps must be a positive scalar, got eps={eps!r}")
  check_block_size(block_size)
  if causal and q.shape[1] != k.shape[1]:
    raise ValueError(
        f"causal linear attention needs S == T, got q.shape={q.shape} and k.shape={k.shape}"
    )


def causal_sums(
    fq_BxTxKxGxH: jax.Array,
    fk_BxTxKxH: jax.Array,
    v_BxTxKxH: jax.Array,
    run_BxT: jax.Array,
    block_size: int,
) -> tuple[jax.Array, jax.Array]:
  """Chunked numerator φ(q_t)·Σ φ(k_s)ᵀv_s and denominator φ(q_t)·Σ φ(k_s) over s ≤ t in t's run.

  Padded positions come after every real one, so they never reach a real query.
  """
  batch, seq, kv_heads, head_dim = fk_BxTxKxH.shape
  dtype = fk_BxTxKxH.dtype
  run_BxT = jnp.broadcast_to(run_BxT, (batch, seq))
  xs = tuple(to_blocks(x, block_size) for x in (fq_BxTxKxGxH, fk_BxTxKxH, v_BxTxKxH, run_BxT))
  causal_CxC = jnp.tril(jnp.ones((block_size, block_size), bool))
  hi = jax.lax.Precision.HIGHEST

  def step(carry, block):
    state_BxKxHxH, z_BxKxH, carry_run_B = carry
    fq_BxCxKxGxH, fk_BxCxKxH, v_BxCxKxH, run_BxC = block
    same_BxCxC = (run_BxC[:, :, None] == run_BxC[:, None, :]) & causal_CxC
    scores_BxKxGxCxC = jnp.einsum("bikgh,bjkh->bkgij", fq_BxCxKxGxH, fk_BxCxKxH, precision=hi)
    scores_BxKxGxCxC = jnp.where(same_BxCxC[:, None, None], scores_BxKxGxCxC, 0.0)
    num_BxCxKxGxH = jnp.einsum("bkgij,bjkh->bikgh", scores_BxKxGxCxC, v_BxCxKxH, precision=hi)
    den_BxCxKxG = jnp.einsum("bkgij->bikg", scores_BxKxGxCxC)
    # The carried state belongs to the run of the previous block's last position.
    past_BxC = (run_BxC == carry_run_B[:, None]).astype(dtype)
    num_BxCxKxGxH += past_BxC[:, :, None, None, None] * jnp.einsum(
        "bikgh,bkhe->bikge", fq_BxCxKxGxH, state_BxKxHxH, precision=hi)
    den_BxCxKxG += past_BxC[:, :, None, None] * jnp.einsum(
        "bikgh,bkh->bikg", fq_BxCxKxGxH, z_BxKxH, precision=hi)
    last_B = run_BxC[:, -1]
    keep_BxC = (run_BxC == last_B[:, None]).astype(dtype)
    carry_Bx1x1 = (last_B == carry_run_B).astype(dtype)[:, None, None]
    fk_kept_BxCxKxH = fk_BxCxKxH * keep_BxC[:, :, None, None]
    state_BxKxHxH = carry_Bx1x1[..., None] * state_BxKxHxH + jnp.einsum(
        "bjkh,bjke->bkhe", fk_kept_BxCxKxH, v_BxCxKxH, precision=hi)
    z_BxKxH = carry_Bx1x1 * z_BxKxH + jnp.sum(fk_kept_BxCxKxH, axis=1)
    return (state_BxKxHxH, z_BxKxH, last_B), (num_BxCxKxGxH, den_BxCxKxG)

  init = (
      jnp.zeros((batch, kv_heads, head_dim, head_dim), dtype),
      jnp.zeros((batch, kv_heads, head_dim), dtype),
      run_BxT[:, 0],
  )
  _, (num_LxBxCxKxGxH, den_LxBxCxKxG) = jax.lax.scan(step, init, xs)
  return from_blocks(num_LxBxCxKxGxH, seq), from_blocks(den_LxBxCxKxG, seq)


def _features(
    q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, feature_map: str, scale: float | None
) -> tuple[jax.Array, jax.Array]:
  """φ(scale·q) and φ(k) in the compute dtype."""
  phi = FEATURE_MAPS[feature_map]
  dtype = compute_dtype(q_BxTxNxH)
  q_BxTxNxH = q_BxTxNxH.astype(dtype)
  if scale is not None:
    q_BxTxNxH = q_BxTxNxH * scale
  return phi(q_BxTxNxH), phi(k_BxSxKxH.astype(dtype))


def linear_attention(
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
    feature_map: str = "elu+1",
    eps: float = 1e-6,
    block_size: int = 64,
) -> jax.Array:
  """Chunked O(T) linear attention, layout ``[B, T, N, H]``.

      out_t = φ(q_t) · Σ_s φ(k_s)ᵀ v_s / (φ(q_t) · Σ_s φ(k_s) + eps)

  over s ≤ t of t's segment (``causal``) or all s of t's segment. GQA: query head n reads kv head
  n // (N // K); the state is kept once per kv head.

  Args:
    q_BxTxNxH: queries (after any RoPE).
    k_BxSxKxH: keys; K divides N; S == T when ``causal`` or with ``segment_ids``.
    v_BxSxKxH: values.
    causal: prefix sums (True) or whole-sequence sums (False).
    window, bias, sinks: not supported; anything but None raises ``ValueError``.
    segment_ids: ``[B, T]`` ints; the sums restart at every change of id.
    scale: multiplies q before the feature map; None leaves q as it is.
    feature_map: φ, one of ``"elu+1"``, ``"relu"``, ``"softmax"`` (over the head dim).
    eps: added to the denominator.
    block_size: chunk length C of the scan; any positive int (T is padded internally).

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_linear(q_BxTxNxH, k_BxSxKxH, causal=causal, feature_map=feature_map, eps=eps,
                block_size=block_size, window=window, bias=bias, sinks=sinks)
  batch, seq, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxSxKxH.shape[2]
  fq_BxTxNxH, fk_BxSxKxH = _features(q_BxTxNxH, k_BxSxKxH, feature_map, scale)
  fq_BxTxKxGxH = fq_BxTxNxH.reshape(batch, seq, kv_heads, heads // kv_heads, head_dim)
  v_BxSxKxH = v_BxSxKxH.astype(fq_BxTxNxH.dtype)
  hi = jax.lax.Precision.HIGHEST

  if not causal and segment_ids is None:
    state_BxKxHxH = jnp.einsum("bskh,bske->bkhe", fk_BxSxKxH, v_BxSxKxH, precision=hi)
    num_BxTxKxGxH = jnp.einsum("btkgh,bkhe->btkge", fq_BxTxKxGxH, state_BxKxHxH, precision=hi)
    den_BxTxKxG = jnp.einsum("btkgh,bkh->btkg", fq_BxTxKxGxH, jnp.sum(fk_BxSxKxH, axis=1),
                             precision=hi)
  else:
    run_BxT = segment_runs(seq, segment_ids)
    num_BxTxKxGxH, den_BxTxKxG = causal_sums(
        fq_BxTxKxGxH, fk_BxSxKxH, v_BxSxKxH, run_BxT, block_size)
    if not causal:
      # Whole-segment sums: prefix sums forwards plus backwards, minus the diagonal counted twice.
      flip = lambda x: jnp.flip(x, axis=1)
      back_num, back_den = causal_sums(
          flip(fq_BxTxKxGxH), flip(fk_BxSxKxH), flip(v_BxSxKxH), flip(run_BxT), block_size)
      diag_BxTxKxG = jnp.einsum("btkgh,btkh->btkg", fq_BxTxKxGxH, fk_BxSxKxH, precision=hi)
      num_BxTxKxGxH += flip(back_num) - diag_BxTxKxG[..., None] * v_BxSxKxH[:, :, :, None]
      den_BxTxKxG += flip(back_den) - diag_BxTxKxG
  out_BxTxKxGxH = num_BxTxKxGxH / (den_BxTxKxG[..., None] + eps)
  return out_BxTxKxGxH.reshape(q_BxTxNxH.shape).astype(q_BxTxNxH.dtype)


def linear_attention_reference(
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
    feature_map: str = "elu+1",
    eps: float = 1e-6,
    block_size: int = 64,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 (float64 for float64 inputs) reference of :func:`linear_attention` with the explicit
  masked T×S kernel matrix.

  ``block_size`` is validated and otherwise unused (same signature as the fast form). With
  ``return_weights`` returns ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in the compute dtype:
  scores are φ(q_t)·φ(k_s) with invisible entries -inf; weights are the mixing matrix with
  out = weights · v, W[t, s] = φ(q_t)·φ(k_s) / (Σ_visible φ(q_t)·φ(k_s') + eps), zeros where
  invisible (rows sum to slightly less than 1 because of eps).
  """
  check_attention_inputs(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
      causal=causal, window=window, segment_ids=segment_ids, bias=bias, sinks=sinks,
  )
  _check_linear(q_BxTxNxH, k_BxSxKxH, causal=causal, feature_map=feature_map, eps=eps,
                block_size=block_size, window=window, bias=bias, sinks=sinks)
  seq_q, heads = q_BxTxNxH.shape[1:3]
  seq_k = k_BxSxKxH.shape[1]
  hi = jax.lax.Precision.HIGHEST
  fq_BxTxNxH, fk_BxSxKxH = _features(q_BxTxNxH, k_BxSxKxH, feature_map, scale)
  fk_BxSxNxH = repeat_kv(fk_BxSxKxH, heads)
  v_BxSxNxH = repeat_kv(v_BxSxKxH.astype(fq_BxTxNxH.dtype), heads)
  kernel_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", fq_BxTxNxH, fk_BxSxNxH, precision=hi)
  runs = None if segment_ids is None else segment_runs(seq_q, segment_ids)
  visible = visibility_mask(seq_q, seq_k, causal=causal, window=None, segment_ids=runs)
  if visible is None:
    visible = jnp.ones((1, 1, seq_q, seq_k), bool)
  masked_BxNxTxS = jnp.where(visible, kernel_BxNxTxS, 0.0)
  den_BxNxTx1 = jnp.sum(masked_BxNxTxS, axis=-1, keepdims=True) + eps
  weights_BxNxTxS = masked_BxNxTxS / den_BxNxTx1
  out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", weights_BxNxTxS, v_BxSxNxH, precision=hi)
  out_BxTxNxH = out_BxTxNxH.astype(q_BxTxNxH.dtype)
  if return_weights:
    scores_BxNxTxS = jnp.where(visible, kernel_BxNxTxS, -jnp.inf)
    return out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS
  return out_BxTxNxH


class LinearState(NamedTuple):
  """The recurrent state of causal linear attention.

  Attributes:
    kv: float32 ``[B, K, H, H]``, S = Σ φ(k_s)ᵀ v_s over the current segment.
    normalizer: float32 ``[B, K, H]``, z = Σ φ(k_s).
  """

  kv: jax.Array
  normalizer: jax.Array


def init_linear_state(batch: int, capacity: int, dims: AttentionDims,
                      dtype: jnp.dtype = jnp.float32) -> LinearState:
  """A zero :class:`LinearState` (float32 whatever ``dtype``; ``capacity`` does not apply)."""
  del capacity, dtype
  k, h = dims.num_kv_heads, dims.head_dim
  return LinearState(kv=jnp.zeros((batch, k, h, h), jnp.float32),
                     normalizer=jnp.zeros((batch, k, h), jnp.float32))


def linear_decode(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array,
                  state: LinearState, context: DecodeContext, *, feature_map: str = "elu+1",
                  eps: float = 1e-6, block_size: int = 64, window: int | None = None,
                  sinks: jax.Array | None = None, scale: float | None = None
                  ) -> tuple[jax.Array, LinearState]:
  """T new rows of causal linear attention from the state of the rows before them.

  Equal, row for row, to ``linear_attention(q, k, v, causal=True, ...)`` over the whole
  sequence. ``block_size`` (the chunk length of the full form) does not apply to a step;
  ``window`` and ``sinks`` are not supported, as in the full form.

  Returns:
    ``(out [B, T, N, H] in q's dtype, the state after the new rows)``.
  """
  check_unsupported("linear", window=window, bias=None, sinks=sinks)
  if feature_map not in FEATURE_MAPS:
    raise ValueError(
        f"feature_map must be one of {sorted(FEATURE_MAPS)}, got feature_map={feature_map!r}")
  del block_size
  batch, t, heads, head_dim = q_BxTxNxH.shape
  kv_heads = k_BxTxKxH.shape[2]
  phi = FEATURE_MAPS[feature_map]
  q32 = q_BxTxNxH.astype(jnp.float32)
  fq_BxTxKxGxH = phi(q32 if scale is None else q32 * scale).reshape(
      batch, t, kv_heads, heads // kv_heads, head_dim)
  fk_BxTxKxH = phi(k_BxTxKxH.astype(jnp.float32))
  starts_BxT = jnp.broadcast_to(row_starts(context, t), (batch, t))

  def step(carry, row):
    kv_BxKxHxH, z_BxKxH = carry
    start_B, fq_BxKxGxH, fk_BxKxH, v_BxKxH = row
    keep_B = (~start_B).astype(jnp.float32)
    kv_BxKxHxH = keep_B[:, None, None, None] * kv_BxKxHxH + jnp.einsum(
        "bkh,bke->bkhe", fk_BxKxH, v_BxKxH, precision=_HI)
    z_BxKxH = keep_B[:, None, None] * z_BxKxH + fk_BxKxH
    num_BxKxGxH = jnp.einsum("bkgh,bkhe->bkge", fq_BxKxGxH, kv_BxKxHxH, precision=_HI)
    den_BxKxG = jnp.einsum("bkgh,bkh->bkg", fq_BxKxGxH, z_BxKxH, precision=_HI)
    return (kv_BxKxHxH, z_BxKxH), num_BxKxGxH / (den_BxKxG[..., None] + eps)

  rows = tuple(jnp.moveaxis(x, 1, 0) for x in (
      starts_BxT, fq_BxTxKxGxH, fk_BxTxKxH, v_BxTxKxH.astype(jnp.float32)))
  (kv, z), out_TxBxKxGxH = jax.lax.scan(step, (state.kv, state.normalizer), rows)
  out_BxTxNxH = jnp.moveaxis(out_TxBxKxGxH, 0, 1).reshape(q_BxTxNxH.shape)
  return out_BxTxNxH.astype(q_BxTxNxH.dtype), LinearState(kv=kv, normalizer=z)


register_attention(
    "linear",
    AttentionVariant(linear_attention, linear_attention_reference,
                     params=("feature_map", "eps", "block_size"),
                     decoding=Decoding(init_linear_state, linear_decode)),
)
