"""Radial and GRAT masks through the flex API: the closed-form mask_mods against their NumPy
oracles, the rule itself on hand-derived cases, tile skipping, the registered variants against
their dense references (outputs and every gradient) and validation."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax.attention as attn
from momentum_jax.attention.grat import (
    grat_attention, grat_causal_mask, grat_mask, grat_mask_numpy, grat_to_grid, grat_to_groups,
)
from momentum_jax.attention.radial import (
    radial_attention, radial_block_mask, radial_mask, radial_mask_numpy,
)
from momentum_jax.core.block_mask import create_block_mask

B, N, K, H = 2, 4, 2, 6
TOL = 1e-5

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def make_qkv(seq, seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return normal(B, seq, N, H), normal(B, seq, K, H), normal(B, seq, K, H), normal(B, seq, N, H)


def full_grid(mask_mod, length):
  """mask_mod evaluated on every (t, s) of an L×L grid."""
  t, s = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
  return np.asarray(jnp.broadcast_to(mask_mod(0, 0, t, s), (length, length)))


def traced_scan_lengths(fn, seq):
  """Lengths of the scans in fn's jaxpr: the flex key-block scan runs over the listed blocks
  only when the block mask was built concretely (at trace time)."""
  q = jnp.zeros((1, seq, 2, 8))
  jaxpr = str(jax.make_jaxpr(lambda q: fn(q, q, q))(q))
  return {int(n) for n in re.findall(r"length=(\d+)", jaxpr)}


def compare(name, seq, **kwargs):
  """Registered fast form vs its reference: output and gradients w.r.t. q, k and v."""
  variant = attn.get_attention(name)
  q, k, v, cotangent = make_qkv(seq)

  def run(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, **kwargs) * cotangent)
    return jit(jax.value_and_grad(lambda *a: (loss(*a), fn(*a, **kwargs)), argnums=(0, 1, 2),
                                  has_aux=True))(q, k, v)

  (_, out), grads = run(variant.fn)
  (_, ref), grads_ref = run(variant.reference)
  assert np.isfinite(out).all() and rel_err(out, ref) <= TOL, rel_err(out, ref)
  for name_, g, g_ref in zip("qkv", grads, grads_ref):
    assert np.asarray(g_ref).any(), name_
    assert rel_err(g, g_ref) <= TOL, (name_, rel_err(g, g_ref))


# ---------------------------------------------------------------------------------------------
# radial


# (tokens per frame, frames, block, decay): frames aligned and misaligned with blocks, frames
# smaller than a block, windows that reach the block floor and pairs dropped by the keep rule.
RADIAL_SIZES = [(12, 9, 8, 1.0), (16, 8, 4, 1.0), (5, 11, 4, 0.5), (30, 17, 8, 1.0),
                (7, 13, 16, 1.0), (9, 24, 4, 2.0)]


@pytest.mark.parametrize("size", RADIAL_SIZES, ids=str)
def test_radial_mask_mod_matches_numpy_oracle(size):
  tpf, frames, block, decay = size
  oracle = radial_mask_numpy(tpf, frames, decay=decay, block=block)
  got = full_grid(radial_mask(tpf, frames, decay=decay, block=block), tpf * frames)
  np.testing.assert_array_equal(got, oracle)
  assert oracle.any() and not oracle.all()
  blocks = radial_block_mask(tpf, frames, decay=decay, block=block)
  assert blocks.shape == (-(-tpf * frames // block),) * 2


def test_radial_rule_without_shrink():
  """At block 1 the shrink keeps the token mask as it is: the rule by hand. P = 8: ℓ = 16/2^g,
  so W = 8, 4, 4, 4, 2, 2 for d = 0..5 (W(1) = P // 2), every distance kept, key frame 0 all."""
  tpf, frames = 8, 6
  width = {0: 8, 1: 4, 2: 4, 3: 4, 4: 2, 5: 2}
  t = np.arange(tpf * frames)
  i, r = t[:, None] // tpf, t[:, None] % tpf
  j, c = t[None, :] // tpf, t[None, :] % tpf
  expected = (j == 0) | (np.abs(r - c) <= np.vectorize(width.get)(np.abs(i - j)))
  np.testing.assert_array_equal(radial_mask_numpy(tpf, frames, block=1), expected)
  np.testing.assert_array_equal(full_grid(radial_mask(tpf, frames, block=1), 48), expected)


def test_radial_keep_rule_drops_frame_pairs():
  """P = 2, block 1: ℓ = 4/2^g is 0.5 for d = 4..7, so only every int(1/0.5) = 2nd distance is
  kept there; nearer pairs and key frame 0 are whole."""
  frames = 8
  frame_pairs = radial_mask_numpy(2, frames, block=1)[::2, ::2]
  d = np.abs(np.arange(frames)[:, None] - np.arange(frames)[None, :])
  expected = (np.arange(frames)[None, :] == 0) | (d <= 3) | (d == 4) | (d == 6)
  np.testing.assert_array_equal(frame_pairs, expected)
  np.testing.assert_array_equal(radial_mask_numpy(2, frames, block=1),
                                np.repeat(np.repeat(expected, 2, 0), 2, 1))


def test_radial_shrink_is_not_an_or():
  """P = 32, block 8, decay 0.625: frames 2 apart have ℓ = 64/4 = 16 (kept) and W = 10. The
  band |r − c| <= 10 fills the blocks one off the diagonal to 8 rows in every column (kept
  whole, beyond the band) and reaches two off only in 2 columns with 2 and 1 rows (dropped)."""
  tpf, frames, block = 32, 6, 8
  shrunk = radial_mask_numpy(tpf, frames, decay=0.625, block=block)
  t = np.arange(tpf * frames)
  pair = (np.abs(t[:, None] // tpf - t[None, :] // tpf) == 2) & (t[None, :] >= tpf)
  band = pair & (np.abs(t[:, None] % tpf - t[None, :] % tpf) <= 10)
  local = (t % tpf) // block  # block index inside the frame (frames are block-aligned)
  off_by_two = pair & (np.abs(local[:, None] - local[None, :]) == 2)
  assert not (shrunk & off_by_two).any() and (band & off_by_two).any()
  assert (shrunk & pair & ~band).any()
  near = np.abs(local[:, None] - local[None, :]) <= 1
  np.testing.assert_array_equal(shrunk & pair, pair & near)


def test_radial_block_mask_skips_tiles():
  tpf, frames, block = 8, 12, 4
  mask = create_block_mask(radial_mask(tpf, frames, block=block), None, None,
                                tpf * frames, tpf * frames, block, block)
  kinds = np.asarray(mask.kind_BxNxQxK)
  assert int(np.sum(mask.kv_count_BxNxQ)) < kinds.size
  assert not (kinds == 1).any()  # mask blocks and tiles agree: every tile full or empty
  fn = functools.partial(radial_attention, tokens_per_frame=tpf, block_size=block,
                         causal=False)
  assert min(traced_scan_lengths(fn, tpf * frames)) < tpf * frames // block  # also under jit


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [
    {"causal": False, "tokens_per_frame": 7, "block_size": 4},
    {"causal": True, "tokens_per_frame": 5, "block_size": 3, "decay": 0.5, "scale": 0.3},
    {},
], ids=["bidirectional", "causal_misaligned", "defaults"])
def test_radial_attention_matches_reference(kwargs):
  compare("radial", 35, **kwargs)


def test_radial_causal_by_gradient():
  q, k, v, _ = make_qkv(15)
  fn = functools.partial(radial_attention, tokens_per_frame=3, block_size=2)
  per_t = lambda q, k, v: jnp.sum(fn(q, k, v), axis=(0, 2, 3))
  for jac_TxBxSxKxH in jit(jax.jacrev(per_t, argnums=(0, 1, 2)))(q, k, v):
    jac = np.asarray(jac_TxBxSxKxH)
    assert jac.any()
    for t in range(15):
      assert not jac[t, :, t + 1:].any(), t


def test_radial_validation():
  q, k, v, _ = make_qkv(12)
  fn = functools.partial(radial_attention, tokens_per_frame=4, block_size=4)
  with pytest.raises(ValueError, match=r"window"):
    fn(q, k, v, window=3)
  with pytest.raises(ValueError, match=r"segment_ids\.shape"):
    fn(q, k, v, segment_ids=jnp.zeros((B, 12), jnp.int32))
  with pytest.raises(ValueError, match=r"bias\.shape"):
    fn(q, k, v, bias=jnp.zeros((1, N, 12, 12)))
  with pytest.raises(ValueError, match=r"tokens_per_frame=5.*q\.shape"):
    radial_attention(q, k, v, tokens_per_frame=5)
  with pytest.raises(ValueError, match=r"tokens_per_frame=0"):
    radial_attention(q, k, v, tokens_per_frame=0)
  with pytest.raises(ValueError, match=r"decay=-1"):
    fn(q, k, v, decay=-1.0)
  with pytest.raises(ValueError, match=r"block_size=0"):
    radial_attention(q, k, v, tokens_per_frame=4, block_size=0)
  with pytest.raises(ValueError, match=r"S == T.*k\.shape"):
    fn(q, k[:, :8], v[:, :8])
  with pytest.raises(ValueError, match=r"num_frames=0"):
    radial_mask(4, 0)


# ---------------------------------------------------------------------------------------------
# GRAT


def grouped_order(grid, group):
  """Raster indices in the grouped order, by sorting on (group coords, in-group coords)."""
  coords = np.stack(np.unravel_index(np.arange(np.prod(grid)), grid), axis=1)
  cell, inner = coords // np.asarray(group), coords % np.asarray(group)
  keys = np.concatenate([cell, inner], axis=1)
  return np.lexsort(keys.T[::-1])


# Coarse grids (2, 2, 4), (3, 2, 2) and (2, 3, 3): radius 1 does not reach every group.
GRIDS = [((4, 6, 8), (2, 3, 2)), ((3, 4, 10), (1, 2, 5)), ((2, 6, 6), (1, 2, 2))]


@pytest.mark.parametrize("grid, group", GRIDS, ids=str)
def test_grat_permutation(grid, group):
  length = int(np.prod(grid))
  x = jnp.arange(2 * length * 3).reshape(2, length, 3)
  grouped = grat_to_groups(x, grid, group)
  np.testing.assert_array_equal(grouped[0, :, 0] // 3, grouped_order(grid, group))
  np.testing.assert_array_equal(grat_to_grid(grouped, grid, group), x)
  order = grat_to_groups(jnp.arange(length)[None], grid, group)[0]
  np.testing.assert_array_equal(np.asarray(order), grouped_order(grid, group))


@pytest.mark.parametrize("pattern, radius", [("criss_cross", 1), ("block_local", 0),
                                             ("block_local", 1)])
@pytest.mark.parametrize("grid, group", GRIDS, ids=str)
def test_grat_mask_mods_match_numpy_oracle(grid, group, pattern, radius):
  perm = grouped_order(grid, group)
  oracle = grat_mask_numpy(grid, group, pattern, radius)[perm][:, perm]
  got = full_grid(grat_mask(grid, group, pattern, radius), len(perm))
  np.testing.assert_array_equal(got, oracle)
  assert oracle.any() and not oracle.all()
  causal = full_grid(grat_causal_mask(grid, group), len(perm))
  np.testing.assert_array_equal(causal, perm[None, :] <= perm[:, None])


def test_grat_oracle_by_hand():
  """A 1×4×4 grid in 2×2 groups: criss-cross sees the groups in its group row and column
  (all four here), block-local radius 0 only its own group."""
  oracle = grat_mask_numpy((1, 4, 4), (1, 2, 2), "criss_cross")
  assert oracle.all()
  own = grat_mask_numpy((1, 4, 4), (1, 2, 2), "block_local", 0)
  h, w = np.divmod(np.arange(16), 4)
  np.testing.assert_array_equal(own, ((h[:, None] // 2 == h[None] // 2)
                                      & (w[:, None] // 2 == w[None] // 2)))
  cross = grat_mask_numpy((2, 4, 4), (1, 2, 2), "criss_cross")
  index = lambda t, h, w: (t * 4 + h) * 4 + w
  assert not cross[index(0, 0, 0), index(1, 3, 3)]  # no group coordinate shared
  assert cross[index(0, 0, 0), index(1, 1, 3)]  # same h group
  assert cross[index(0, 0, 0), index(0, 3, 3)]  # same frame group
  assert cross[index(1, 2, 1), index(0, 0, 0)]  # same w group


@pytest.mark.parametrize("pattern", ["criss_cross", "block_local"])
def test_grat_block_mask_skips_tiles(pattern):
  grid, group = (2, 20, 8), (1, 4, 4)  # coarse (2, 5, 2): every query group misses some
  length, cell = 320, 16
  mask = create_block_mask(grat_mask(grid, group, pattern, 1), None, None, length,
                                length, cell, cell)
  kinds = np.asarray(mask.kind_BxNxQxK)
  assert 0 < int(np.sum(mask.kv_count_BxNxQ)) < kinds.size
  assert not (kinds == 1).any()  # aligned groups: every tile full or empty
  fn = functools.partial(grat_attention, grid=grid, group=group, pattern=pattern,
                         block_size=cell, causal=False)
  assert min(traced_scan_lengths(fn, length)) < length // cell  # also under jit


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [
    {"causal": False, "pattern": "criss_cross", "block_size": 8},
    {"causal": False, "pattern": "block_local", "radius": 0, "block_size": 4, "scale": 0.4},
    {"causal": True, "pattern": "block_local", "radius": 1, "block_size": 5},
], ids=["criss_cross", "block_local_r0", "block_local_causal"])
def test_grat_attention_matches_reference(kwargs):
  compare("grat", 48, grid=(2, 6, 4), group=(1, 2, 2), **kwargs)


def test_grat_defaults_match_reference():
  compare("grat", 13)


def test_grat_validation():
  q, k, v, _ = make_qkv(12)
  fn = functools.partial(grat_attention, grid=(1, 3, 4), group=(1, 3, 2), causal=False)
  with pytest.raises(ValueError, match=r"grid must hold T.*q\.shape"):
    grat_attention(q, k, v, grid=(2, 3, 4))
  with pytest.raises(ValueError, match=r"group must divide grid"):
    grat_attention(q, k, v, grid=(1, 3, 4), group=(1, 2, 2))
  with pytest.raises(ValueError, match=r"grid must be three positive ints"):
    grat_attention(q, k, v, grid=(12, 1))
  with pytest.raises(ValueError, match=r"pattern="):
    fn(q, k, v, pattern="diagonal")
  with pytest.raises(ValueError, match=r"radius=-1"):
    fn(q, k, v, pattern="block_local", radius=-1)
  with pytest.raises(ValueError, match=r"window"):
    fn(q, k, v, causal=True, window=2)
  with pytest.raises(ValueError, match=r"sinks\.shape"):
    fn(q, k, v, sinks=jnp.zeros(N))
  with pytest.raises(ValueError, match=r"S == T.*k\.shape"):
    fn(q, k[:, :6], v[:, :6])
  with pytest.raises(ValueError, match=r"x_BxLx\.shape=\(2, 10\)"):
    grat_to_groups(jnp.zeros((2, 10)), (1, 3, 4), (1, 3, 2))
