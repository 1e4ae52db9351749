"""GRAT group attention (Ren et al., "Grouping First, Attending Smartly: Training-Free
Acceleration for Diffusion Transformers", arXiv 2505.14687).

The L = F·Hg·Wg tokens of a video arrive in raster order of a (frames, height, width) grid,
position (t, h, w) at index (t·Hg + h)·Wg + w. GRAT cuts the grid into groups of
(group_t, group_h, group_w) tokens and permutes the sequence so that each group is contiguous:
groups in raster order of the coarse (F/group_t, Hg/group_h, Wg/group_w) grid, the tokens of a group
in raster order inside it. All queries of a group share one set of key groups:

    criss-cross:   key group (u_t, u_h, u_w) is visible to query group (y_t, y_h, y_w) iff
                   u_t = y_t or u_h = y_h or u_w = y_w (the authors' mask);
    block-local:   ``max(|u_t − y_t|, |u_h − y_h|, |u_w − y_w|) ≤ radius`` (neighbouring
                   groups within Chebyshev radius r; our choice, the paper names surrounding blocks
                   without fixing their extent).

With group size a multiple of the attention tile, every tile is full or empty, and flex attention
skips the empty ones. :func:`criss_cross_mask` and :func:`block_local_mask` are flex ``mask_mod``
functions on positions of the grouped order; :func:`grat_mask_numpy` builds the same relation on
the grid order from each token's coordinates and is the oracle they are tested against.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.attention.flex import flex_attention, flex_attention_reference
from momentum_jax.attention.flex_mods import and_masks
from momentum_jax.attention.registry import AttentionVariant, register_attention
from momentum_jax.core.block_mask import MaskMod, create_block_mask
from momentum_jax.core.checks import check_attention_inputs

PATTERNS = ("criss_cross", "block_local")

Dims = tuple[int, int, int]


def _check_dims(name: str, value: object) -> Dims:
  ok = isinstance(value, Sequence) and len(value) == 3 and all(
      isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 1 for x in value)
  if not ok:
    raise ValueError(f"{name} must be three positive ints (frames, height, width), "
                     f"got {name}={value!r}")
  return tuple(int(x) for x in value)


def _check_grid(grid: object, group: object) -> tuple[Dims, Dims]:
  grid, group = _check_dims("grid", grid), _check_dims("group", group)
  if any(g % p for g, p in zip(grid, group)):
    raise ValueError(f"group must divide grid along every axis, got grid={grid} and "
                     f"group={group}")
  return grid, group


def _check_length(x_BxLx: jax.Array, grid: Dims) -> None:
  length = grid[0] * grid[1] * grid[2]
  if x_BxLx.ndim < 2 or x_BxLx.shape[1] != length:
    raise ValueError(f"x_BxLx must have L = frames·height·width = {length} on axis 1 for "
                     f"grid={grid}, got x_BxLx.shape={x_BxLx.shape}")


def _coarse(grid: Dims, group: Dims) -> Dims:
  return tuple(g // p for g, p in zip(grid, group))


def grat_to_groups(x_BxLx: jax.Array, grid: Sequence[int], group: Sequence[int]) -> jax.Array:
  """Permutes axis 1 from the grid's raster order to the grouped order.

  Args:
    x_BxLx: ``[B, L, ...]`` with L = frames·height·width in raster order.
    grid: (frames, height, width).
    group: (group_t, group_h, group_w), dividing ``grid``.

  Returns:
    ``[B, L, ...]``, each group's group_t·group_h·group_w tokens contiguous.
  """
  grid, group = _check_grid(grid, group)
  _check_length(x_BxLx, grid)
  (nt, nh, nw), (pt, ph, pw) = _coarse(grid, group), group
  batch, rest = x_BxLx.shape[0], x_BxLx.shape[2:]
  x = x_BxLx.reshape(batch, nt, pt, nh, ph, nw, pw, -1)
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
  return x.reshape(batch, -1, *rest)


def grat_to_grid(x_BxLx: jax.Array, grid: Sequence[int], group: Sequence[int]) -> jax.Array:
  """Inverse of :func:`grat_to_groups`: axis 1 from grouped order back to raster order."""
  grid, group = _check_grid(grid, group)
  _check_length(x_BxLx, grid)
  (nt, nh, nw), (pt, ph, pw) = _coarse(grid, group), group
  batch, rest = x_BxLx.shape[0], x_BxLx.shape[2:]
  x = x_BxLx.reshape(batch, nt, nh, nw, pt, ph, pw, -1)
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3, 6, 7))
  return x.reshape(batch, -1, *rest)


def _group_coords(p: jax.Array, grid: Dims, group: Dims) -> tuple[jax.Array, ...]:
  """Group coordinates (y_t, y_h, y_w) of grouped-order position p."""
  _, nh, nw = _coarse(grid, group)
  y = p // (group[0] * group[1] * group[2])
  return y // (nh * nw), (y // nw) % nh, y % nw


def _grid_index(p: jax.Array, grid: Dims, group: Dims) -> jax.Array:
  """Raster index of the token at grouped-order position p."""
  pt, ph, pw = group
  y_t, y_h, y_w = _group_coords(p, grid, group)
  e = p % (pt * ph * pw)
  t = y_t * pt + e // (ph * pw)
  h = y_h * ph + (e // pw) % ph
  w = y_w * pw + e % pw
  return (t * grid[1] + h) * grid[2] + w


def criss_cross_mask(grid: Sequence[int], group: Sequence[int]) -> MaskMod:
  """GRAT criss-cross ``mask_mod`` on grouped-order positions: the key group shares the query
  group's t, h or w group coordinate."""
  grid, group = _check_grid(grid, group)

  def mask_mod(b, n, t, s):
    del b, n
    q_t, q_h, q_w = _group_coords(t, grid, group)
    k_t, k_h, k_w = _group_coords(s, grid, group)
    return (q_t == k_t) | (q_h == k_h) | (q_w == k_w)

  return mask_mod


def block_local_mask(grid: Sequence[int], group: Sequence[int], radius: int = 1) -> MaskMod:
  """Block-local ``mask_mod`` on grouped-order positions: the key group lies within Chebyshev
  distance ``radius`` of the query group (our choice of the paper's "surrounding blocks")."""
  grid, group = _check_grid(grid, group)
  _check_radius(radius)

  def mask_mod(b, n, t, s):
    del b, n
    far = [jnp.abs(a - c) for a, c in zip(_group_coords(t, grid, group),
                                          _group_coords(s, grid, group))]
    return jnp.maximum(jnp.maximum(far[0], far[1]), far[2]) <= radius

  return mask_mod


def grat_causal_mask(grid: Sequence[int], group: Sequence[int]) -> MaskMod:
  """Causality of the raster order on grouped-order positions: key s precedes query t in the
  grid's raster order."""
  grid, group = _check_grid(grid, group)

  def mask_mod(b, n, t, s):
    del b, n
    return _grid_index(s, grid, group) <= _grid_index(t, grid, group)

  return mask_mod


def _check_radius(radius: object) -> None:
  if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f"radius must be a non-negative int, got radius={radius!r}")


def _check_pattern(pattern: object) -> None:
  if pattern not in PATTERNS:
    raise ValueError(f"pattern must be one of {PATTERNS}, got pattern={pattern!r}")


def grat_mask(grid: Sequence[int], group: Sequence[int], pattern: str = "criss_cross",
              radius: int = 1) -> MaskMod:
  """:func:`criss_cross_mask` or :func:`block_local_mask` by name."""
  _check_pattern(pattern)
  if pattern == "criss_cross":
    return criss_cross_mask(grid, group)
  return block_local_mask(grid, group, radius)


def grat_mask_numpy(grid: Sequence[int], group: Sequence[int], pattern: str = "criss_cross",
                    radius: int = 1) -> np.ndarray:
  """The GRAT relation on the grid's raster order, from every token's (t, h, w) coordinates:
  the oracle of the grouped-order mask_mods. Boolean ``[L, L]``, True where query attends key."""
  grid, group = _check_grid(grid, group)
  _check_pattern(pattern)
  _check_radius(radius)
  coords_Lx3 = np.stack(np.unravel_index(np.arange(np.prod(grid)), grid), axis=1)
  cell_Lx3 = coords_Lx3 // np.asarray(group)
  diff_LxLx3 = np.abs(cell_Lx3[:, None, :] - cell_Lx3[None, :, :])
  if pattern == "criss_cross":
    return np.any(diff_LxLx3 == 0, axis=-1)
  return np.max(diff_LxLx3, axis=-1) <= radius


def _grat_setup(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool, window: int | None,
    segment_ids: jax.Array | None, bias: jax.Array | None, sinks: jax.Array | None,
    grid: Sequence[int] | None, group: Sequence[int] | None, pattern: str, radius: int,
    block_size: int,
) -> tuple[Dims, Dims]:
  """Validates the registry arguments; returns (grid, group)."""
  check_attention_inputs(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                         bias=bias, sinks=sinks)
  if window is not None:
    raise ValueError(f"window is not supported by GRAT attention, got window={window!r}")
  if segment_ids is not None:
    raise ValueError("segment_ids are not supported by GRAT attention (T holds one grid), "
                     f"got segment_ids.shape={segment_ids.shape}")
  for name, value in (("bias", bias), ("sinks", sinks)):
    if value is not None:
      raise ValueError(f"{name} is not supported by GRAT attention, "
                       f"got {name}.shape={np.shape(value)}")
  seq_q = q.shape[1]
  if k.shape[1] != seq_q:
    raise ValueError(f"GRAT attention needs S == T (self-attention over the grid), "
                     f"got q.shape={q.shape} and k.shape={k.shape}")
  grid, group = _check_grid((seq_q, 1, 1) if grid is None else grid,
                            (1, 1, 1) if group is None else group)
  if int(np.prod(grid)) != seq_q:
    raise ValueError(f"grid must hold T tokens, got grid={grid} and q.shape={q.shape}")
  _check_pattern(pattern)
  _check_radius(radius)
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or (
      block_size < 1):
    raise ValueError(f"block_size must be a positive int, got block_size={block_size!r}")
  return grid, group


def grat_attention(
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
    grid: Sequence[int] | None = None,
    group: Sequence[int] | None = None,
    pattern: str = "criss_cross",
    radius: int = 1,
    block_size: int = 128,
) -> jax.Array:
  """GRAT attention (``"grat"``): q, k, v in the grid's raster order are permuted to the grouped
  order, attend by softmax under :func:`criss_cross_mask` or :func:`block_local_mask` through the
  block-sparse :func:`~momentum_jax.attention.flex.flex_attention` with ``block_size`` tiles, and
  the output is permuted back.

  GRAT is bidirectional (``causal=False``); ``causal=True`` (the registry default) also masks
  keys after the query in the raster order.

  Args:
    q_BxTxNxH: queries, T = frames·height·width tokens in raster order.
    k_BxSxKxH: keys, S == T; K divides N.
    v_BxSxKxH: values.
    causal: also mask keys after the query in raster order.
    window, segment_ids, bias, sinks: not supported; anything but None raises ``ValueError``.
    scale: logit scale, default ``1 / sqrt(H)``.
    grid: (frames, height, width); None means (T, 1, 1).
    group: (group_t, group_h, group_w) dividing ``grid``; None means (1, 1, 1).
    pattern: ``"criss_cross"`` or ``"block_local"``.
    radius: the block-local Chebyshev radius in groups.
    block_size: attention tile; a divisor or multiple of the group size lets tiles be skipped.

  Returns:
    ``[B, T, N, H]`` in q's dtype.
  """
  grid, group = _grat_setup(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                            segment_ids=segment_ids, bias=bias, sinks=sinks, grid=grid,
                            group=group, pattern=pattern, radius=radius, block_size=block_size)
  # The mask depends on shapes only: built eagerly even under jit, so empty tiles are skipped.
  with jax.ensure_compile_time_eval():
    mask_mod = grat_mask(grid, group, pattern, radius)
    if causal:
      mask_mod = and_masks(mask_mod, grat_causal_mask(grid, group))
    seq = q_BxTxNxH.shape[1]
    block_mask = create_block_mask(mask_mod, None, None, seq, seq, block_size, block_size)
  grouped = [grat_to_groups(x, grid, group) for x in (q_BxTxNxH, k_BxSxKxH, v_BxSxKxH)]
  out_BxTxNxH = flex_attention(*grouped, block_mask=block_mask, scale=scale)
  return grat_to_grid(out_BxTxNxH, grid, group)


def grat_attention_reference(
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
    grid: Sequence[int] | None = None,
    group: Sequence[int] | None = None,
    pattern: str = "criss_cross",
    radius: int = 1,
    block_size: int = 128,
    return_weights: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array]:
  """Float32 reference of :func:`grat_attention`: the explicit T×S softmax in raster order (no
  permutation) under :func:`grat_mask_numpy` (and s ≤ t when ``causal``). ``block_size`` is
  validated and otherwise unused. With ``return_weights`` returns
  ``(out_BxTxNxH, scores_BxNxTxS, weights_BxNxTxS)`` in raster order."""
  grid, group = _grat_setup(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, causal=causal, window=window,
                            segment_ids=segment_ids, bias=bias, sinks=sinks, grid=grid,
                            group=group, pattern=pattern, radius=radius, block_size=block_size)
  visible_TxS = jnp.asarray(grat_mask_numpy(grid, group, pattern, radius))
  if causal:
    visible_TxS &= jnp.tril(jnp.ones(visible_TxS.shape, bool))
  return flex_attention_reference(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH,
                                  mask_mod=lambda b, n, t, s: visible_TxS[t, s], scale=scale,
                                  return_weights=return_weights)


register_attention(
    "grat",
    AttentionVariant(grat_attention, grat_attention_reference,
                     params=("grid", "group", "pattern", "radius", "block_size")),
)
