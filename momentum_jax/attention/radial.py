"""Radial attention (Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy Decay
for Long Video Generation", arXiv 2506.19852): a static block-sparse mask for video tokens whose
attention window shrinks as the temporal distance between frames grows.

Tokens are frame-major: token t is row r = t mod P of frame i = t // P (P tokens per frame, F
frames, L = F·P). For a query frame i and key frame j at distance ``d = |i − j|``, with
g = bit_length(d) and ℓ = 2^bit_length(P) / 2^g, the frame pair's token mask is

    key frame 0 (the attention sink):  everything,
    otherwise:                         ``|r − c| ≤ W(d)``  and  keep(d),
    W(0) = P,   W(1) = ⌊P/2⌋,   W(d ≥ 2) = max(ℓ · decay, C),
    keep(d) = ℓ ≥ C  or  d mod ⌊C / ℓ⌋ = 0,

so the window halves with each doubling of d and, once it reaches the block size C, whole frame
pairs are dropped except every ⌊C/ℓ⌋-th distance. The sink and W(1) = ⌊P/2⌋ are the authors'
Wan setting (a later revision of their code widens W(1) to P; their HunyuanVideo setting has no
sink). Each frame pair's mask is then shrunk to C×C
blocks the way the authors' ``gen_log_mask_shrinked`` does it: the pair's mask is placed at its
offset inside its ⌈P/C⌉×⌈P/C⌉ block window (rows and columns past ⌈P/C⌉·C are cut), and a block is
kept when more than 60 % of its columns that hold any entry hold entries in more than a third of
the block's C rows. The kept blocks of all frame pairs are OR-ed into an ⌈L/C⌉×⌈L/C⌉ block mask,
and a token pair is visible iff its block is. The authors' code fixes the threshold of the keep
rule at 128 and takes the window floor from its block size; here both are the one ``block``, so
the rule scales down to small test sizes (at block = 128 it is the authors' rule).

:func:`radial_mask` computes the block mask in closed form (interval lengths per column) and
returns a ``mask_mod`` for :func:`~momentum_jax.attention.flex.flex_attention`;
:func:`radial_mask_numpy` follows the authors' construction step by step on explicit token
masks and is the oracle it is tested against. :func:`radial_attention` is softmax attention with
the mask through the block-sparse flex path; :func:`radial_attention_reference` is the explicit
T×S softmax with the oracle's mask.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.flex import flex_attention, flex_attention_reference
from momentum_jax.attention.flex_mods import and_masks, causal_mask
from momentum_jax.attention.registry import AttentionVariant, register_attention
from momentum_jax.core.block_mask import MaskMod, create_block_mask
from momentum_jax.core.checks import check_attention_inputs


def _check_positive_int(name: str, value: object) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def _check_radial(tokens_per_frame: int, num_frames: int, decay: float, block: int) -> None:
  _check_positive_int("tokens_per_frame", tokens_per_frame)
  _check_positive_int("num_frames", num_frames)
  _check_positive_int("block", block)
  if np.shape(decay) != () or not float(decay) > 0:
    raise ValueError(f"decay must be a positive scalar, got decay={decay!r}")


def _window(dist: int, tokens_per_frame: int, decay: float, block: int) -> float:
  """W(d): the largest |r − c| a frame pair at distance d keeps."""
  if dist == 0:
    return tokens_per_frame
  if dist == 1:
    return tokens_per_frame // 2
  decay_length = 2 ** int(tokens_per_frame).bit_length() / 2 ** dist.bit_length() * decay
  return max(decay_length, block)


def _keep(dist: int, tokens_per_frame: int, block: int) -> bool:
  """keep(d): whether a frame pair at distance d keeps anything at all."""
  decay_length = 2 ** int(tokens_per_frame).bit_length() / 2 ** dist.bit_length()
  return decay_length >= block or dist % int(block / decay_length) == 0


@functools.lru_cache(maxsize=32)
def _radial_blocks(tokens_per_frame: int, num_frames: int, decay: float, block: int) -> np.ndarray:
  """The ⌈L/C⌉×⌈L/C⌉ block mask in closed form, one query frame at a time.

  For query frame i, key frame j, the pair's local block (a, c) and column x of that block,
  the rows of frame i inside block a are an interval [lo, hi], the column is frame j's column
  c·C + x − (j·P mod C), and the rows within the pair's half-width w of it are the interval
  [max(lo, col − w), min(hi, col + w)]: its length is the column's count."""
  tpf, frames = int(tokens_per_frame), int(num_frames)
  per_frame = -(-tpf // block)
  num_blocks = -(-tpf * frames // block)
  frame_F = np.arange(frames)
  rem_F, start_F = (frame_F * tpf) % block, (frame_F * tpf) // block
  # Half-width per distance: tpf covers a whole frame, -1 drops the pair.
  width_D = np.array([np.floor(_window(d, tpf, decay, block)) if _keep(d, tpf, block) else -1
                      for d in range(frames)], np.int64)
  local_A = np.arange(per_frame)
  # Columns of key frame j in its local block c, column x (invalid ones are outside the frame).
  col_FxAxX = (local_A[None, :, None] * block + np.arange(block)[None, None, :]
               - rem_F[:, None, None])
  col_valid_FxAxX = (col_FxAxX >= 0) & (col_FxAxX < tpf)
  blocks = np.zeros((num_blocks, num_blocks), bool)
  for i in range(frames):
    row_lo_A = np.maximum(local_A * block - rem_F[i], 0)
    row_hi_A = np.minimum((local_A + 1) * block - rem_F[i] - 1, tpf - 1)
    width_F = np.where(frame_F == 0, tpf, width_D[np.abs(i - frame_F)])
    w_Fx1x1x1 = width_F[:, None, None, None]
    col_Fx1xAxX = col_FxAxX[:, None]
    lo_FxAxAxX = np.maximum(row_lo_A[None, :, None, None], col_Fx1xAxX - w_Fx1x1x1)
    hi_FxAxAxX = np.minimum(row_hi_A[None, :, None, None], col_Fx1xAxX + w_Fx1x1x1)
    count_FxAxAxX = np.where(col_valid_FxAxX[:, None] & (w_Fx1x1x1 >= 0),
                             np.maximum(hi_FxAxAxX - lo_FxAxAxX + 1, 0), 0)
    dense_cols_FxAxA = np.sum(3 * count_FxAxAxX > block, axis=-1)
    any_cols_FxAxA = np.sum(count_FxAxAxX > 0, axis=-1)
    kept_FxAxA = 5 * dense_cols_FxAxA > 3 * any_cols_FxAxA
    rows_A = start_F[i] + local_A
    cols_FxA = start_F[:, None] + local_A[None, :]
    f, a, c = np.nonzero(kept_FxAxA)
    blocks[rows_A[a], cols_FxA[f, c]] = True
  return blocks


def radial_block_mask(
    tokens_per_frame: int, num_frames: int, *, decay: float = 1.0, block: int = 128,
) -> np.ndarray:
  """The radial block mask (see the module docstring), computed in closed form.

  Args:
    tokens_per_frame: P, tokens per frame.
    num_frames: F, frames; the sequence has L = F·P frame-major tokens.
    decay: the factor on the window ℓ of frames at distance ≥ 2.
    block: C, the block size of the shrink (the authors use 128).

  Returns:
    Boolean ``[⌈L/C⌉, ⌈L/C⌉]``: True where query block and key block attend.
  """
  _check_radial(tokens_per_frame, num_frames, decay, block)
  return _radial_blocks(int(tokens_per_frame), int(num_frames), float(decay), int(block)).copy()


def radial_mask(
    tokens_per_frame: int, num_frames: int, *, decay: float = 1.0, block: int = 128,
) -> MaskMod:
  """The radial mask as a flex ``mask_mod``: visible iff
  ``radial_block_mask(...)[t // block, s // block]`` (positions past L read the last block)."""
  blocks = jnp.asarray(radial_block_mask(tokens_per_frame, num_frames, decay=decay, block=block))
  last = blocks.shape[0] - 1

  def mask_mod(b, n, t, s):
    del b, n
    return blocks[jnp.minimum(t // block, last), jnp.minimum(s // block, last)]

  return mask_mod


def _shrink(mask: np.ndarray, block: int) -> np.ndarray:
  """The authors' strict shrink of one frame pair's padded token mask to blocks (float32 density
  arithmetic as in their torch code; the square crop uses the row count)."""
  num = mask.shape[0] // block
  tiles = mask[:num * block, :num * block].reshape(num, block, num, block)
  density = tiles.sum(axis=1).astype(np.float32) / np.float32(block)
  dense_cols = (density > np.float32(1 / 3)).sum(axis=-1).astype(np.float32)
  any_cols = (density > 0).sum(axis=-1).astype(np.float32)
  return dense_cols / (any_cols + np.float32(1e-9)) > np.float32(0.6)


def radial_mask_numpy(
    tokens_per_frame: int, num_frames: int, *, decay: float = 1.0, block: int = 128,
) -> np.ndarray:
  """The radial token mask built literally, as the authors' ``gen_log_mask_shrinked`` does: an
  explicit P×P mask per frame pair, padded to its block offset, shrunk, OR-ed into the block
  mask, which is then expanded to tokens. Slow (F² explicit frame-pair masks): an oracle.

  Returns:
    Boolean ``[L, L]``, True where query t attends to key s.
  """
  _check_radial(tokens_per_frame, num_frames, decay, block)
  tpf, frames = int(tokens_per_frame), int(num_frames)
  length = tpf * frames
  num_blocks = -(-length // block)
  final = np.zeros((num_blocks, num_blocks), bool)
  rows, cols = np.arange(tpf)[:, None], np.arange(tpf)[None, :]
  padded_frame = ((tpf - 1) // block + 1) * block
  for i in range(frames):
    for j in range(frames):
      if j == 0:
        local = np.ones((tpf, tpf), bool)
      else:
        dist = abs(i - j)
        local = np.abs(cols - rows) <= _window(dist, tpf, decay, block)
        local &= _keep(dist, tpf, block)
      rem_row, rem_col = (i * tpf) % block, (j * tpf) % block
      padded = np.zeros((rem_row + padded_frame, rem_col + padded_frame), bool)
      padded[rem_row:rem_row + tpf, rem_col:rem_col + tpf] = local
      shrunk = _shrink(padded, block)
      row0, col0 = (i * tpf) // block, (j * tpf) // block
      final[row0:row0 + shrunk.shape[0], col0:col0 + shrunk.shape[1]] |= shrunk
  return np.repeat(np.repeat(final, block, axis=0), block, axis=1)[:length, :length]


def _radial_setup(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, window: int | None,
    segment_ids: jax.Array | None, bias: jax.Array | None, sinks: jax.Array | None,
    tokens_per_frame: int | None, decay: float, block_size: int | None,
) -> tuple[int, int, int]:
  """Validates the registry arguments; returns (tokens per frame, frames, block size)."""
  check_attention_inputs(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                         bias=bias, sinks=sinks)
  if window is not None:
    raise ValueError(f"window is not supported by radial attention (its mask sets the window), "
                     f"got window={window!r}")
  if segment_ids is not None:
    raise ValueError("segment_ids are not supported by radial attention (T holds the frames of "
                     f"one video), got segment_ids.shape={segment_ids.shape}")
  for name, value in (("bias", bias), ("sinks", sinks)):
    if value is not None:
      raise ValueError(f"{name} is not supported by radial attention, "
                       f"got {name}.shape={np.shape(value)}")
  seq_q, seq_k = q.shape[1], k.shape[1]
  if seq_q != seq_k:
    raise ValueError(f"radial attention needs S == T (self-attention over the video), "
                     f"got q.shape={q.shape} and k.shape={k.shape}")
  tpf = seq_q if tokens_per_frame is None else tokens_per_frame
  _check_positive_int("tokens_per_frame", tpf)
  if seq_q % tpf:
    raise ValueError(f"T must be a multiple of tokens_per_frame={tpf}, got q.shape={q.shape}")
  if block_size is not None:
    _check_positive_int("block_size", block_size)
  block = min(128, tpf) if block_size is None else block_size
  _check_radial(tpf, seq_q // tpf, decay, block)
  return tpf, seq_q // tpf, block


def radial_attention(
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
    tokens_per_frame: int | None = None,
    decay: float = 1.0,
    block_size: int | None = None,
) -> jax.Array:
  """Radial attention (``"radial"``): softmax attention under :func:`radial_mask`, through the
  block-sparse :func:`~momentum_jax.attention.flex.flex_attention` with ``block_size`` tiles (so
  every tile is full or empty and the empty ones are skipped).

  The paper's attention is bidirectional (``causal=False``); ``causal=True`` (the registry
  default, as in a decoder-only model) intersects the mask with s ≤ t in the frame-major order.

  Args:
    q_BxTxNxH: queries, T = F·P frame-major video tokens.
    k_BxSxKxH: keys, S == T; K divides N.
    v_BxSxKxH: values.
    causal: also mask keys s > t.
    window, segment_ids, bias, sinks: not supported; anything but None raises ``ValueError``.
    scale: logit scale, default ``1 / sqrt(H)``.
    tokens_per_frame: P; None means the whole sequence is one frame (dense attention).
    decay: the factor on the window of frames at distance ≥ 2.
    block_size: C, the block size of the mask's shrink and of the attention tiles; None means
      min(128, P). The shrink measures density over all C rows of a block, so with P < C/3 it
      drops every block: keep C no larger than a frame.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  tpf, frames, block = _radial_setup(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                              segment_ids=segment_ids, bias=bias, sinks=sinks,
                              tokens_per_frame=tokens_per_frame, decay=decay,
                              block_size=block_size)
  # The mask depends on shapes only: built eagerly even under jit, so empty tiles are skipped.
  with jax.ensure_compile_time_eval():
    mask_mod = radial_mask(tpf, frames, decay=decay, block=block)
    if causal:
      mask_mod = and_masks(mask_mod, causal_mask)
    block_mask = create_block_mask(mask_mod, None, None, tpf * frames, tpf * frames, block, block)
  return flex_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, block_mask=block_mask, scale=scale)


def radial_attention_reference(
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
    tokens_per_frame: int | None = None,
    decay: float = 1.0,
    block_size: int | None = None,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`radial_attention`: the explicit T×S softmax under the token mask
  of :func:`radial_mask_numpy` (and s ≤ t when ``causal``). With ``return_weights`` returns
  ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` as
  :func:`~momentum_jax.attention.flex.flex_attention_reference` does."""
  tpf, frames, block = _radial_setup(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                              segment_ids=segment_ids, bias=bias, sinks=sinks,
                              tokens_per_frame=tokens_per_frame, decay=decay,
                              block_size=block_size)
  visible_TxS = jnp.asarray(radial_mask_numpy(tpf, frames, decay=decay, block=block))
  if causal:
    visible_TxS &= jnp.tril(jnp.ones(visible_TxS.shape, bool))
  return flex_attention_reference(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
                                  mask_mod=lambda b, n, t, s: visible_TxS[t, s], scale=scale,
                                  return_weights=return_weights)


register_attention(
    "radial",
    AttentionVariant(radial_attention, radial_attention_reference,
                     params=("tokens_per_frame", "decay", "block_size")),
)
