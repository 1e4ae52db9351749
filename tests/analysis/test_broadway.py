"""BroadWay's interventions on attention maps (arXiv 2410.06241): temporal self-guidance and
Fourier-based motion enhancement, as properties (disparity, band energy, row sums) against numpy
DFT oracles, and end to end through ``run_with_hooks``."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from flax import nnx

from momentum_jax.analysis import interventions as iv
from momentum_jax.nn import Transformer, TransformerConfig

PROPERTY = settings(max_examples=15, deadline=None)
# One compiled function per property test: examples vary the values, not the shapes.
guide_jit = jax.jit(iv.temporal_self_guidance)
scale_jit = jax.jit(iv.scale_high_frequencies, static_argnames="cutoff")
enhance_jit = jax.jit(iv.fourier_motion_enhance, static_argnames="cutoff")
broadway_jit = jax.jit(iv.broadway, static_argnames="cutoff")
energies_jit = jax.jit(iv.map_band_energies, static_argnames="cutoff")
energy_jit = jax.jit(iv.map_energy)


def random_maps(rng, *shape, temperature=1.0, causal=False):
  """Row-stochastic softmax maps ``[..., T, S]``; ``causal`` zeroes the keys after the query."""
  logits = temperature * rng.standard_normal(shape)
  if causal:
    logits = np.where(np.tri(shape[-2], shape[-1], dtype=bool), logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def high_band_oracle(seq, cutoff):
  return np.array([min(k, seq - k) > cutoff for k in range(seq)])


def energies_oracle(weights, cutoff):
  """(low, high) of every map from numpy's DFT: mean over rows of Σ_band |Â_k|² / S."""
  power = np.abs(np.fft.fft(weights.astype(np.float64), axis=-1)) ** 2 / weights.shape[-1]
  high = high_band_oracle(weights.shape[-1], cutoff)
  return power[..., ~high].sum(-1).mean(-1), power[..., high].sum(-1).mean(-1)


def disparities(maps_L):
  """‖A_i − A_j‖ for every pair of blocks i < j."""
  return np.array([np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
                   for a, b in itertools.combinations(maps_L, 2)])


@PROPERTY
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 1.0))
def test_self_guidance_shrinks_every_disparity_by_one_minus_alpha(seed, alpha):
  rng = np.random.default_rng(seed)
  blocks = random_maps(rng, 4, 2, 3, 8, 8)   # four blocks' maps, block 0 the reference
  guided = [np.asarray(guide_jit(jnp.asarray(a), jnp.asarray(blocks[0]), alpha)) for a in blocks]
  np.testing.assert_allclose(disparities(guided), (1 - alpha) * disparities(blocks),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.stack(guided).sum(-1), 1.0, atol=1e-5)
  assert (np.stack(guided) >= 0).all()


def test_self_guidance_ends():
  rng = np.random.default_rng(0)
  weights, reference = (jnp.asarray(random_maps(rng, 1, 2, 5, 5)) for _ in range(2))
  np.testing.assert_array_equal(iv.temporal_self_guidance(weights, reference, 0.0), weights)
  np.testing.assert_allclose(iv.temporal_self_guidance(weights, reference, 1.0), reference,
                             atol=1e-7)


@pytest.mark.parametrize("seq", [8, 7])
def test_band_energies_split_the_energy(seq):
  rng = np.random.default_rng(1)
  weights = random_maps(rng, 2, 3, 4, seq)
  for cutoff in range(seq // 2):
    low, high = energies_jit(jnp.asarray(weights), cutoff=cutoff)
    np.testing.assert_allclose(low + high, iv.map_energy(jnp.asarray(weights)), rtol=1e-5)
    for ours, oracle in zip((low, high), energies_oracle(weights, cutoff)):
      np.testing.assert_allclose(ours, oracle, rtol=1e-4, atol=1e-7)
  # A row on one key has a flat spectrum: energy 1, a share (bins above c) / S of it high.
  delta = np.zeros((1, 1, 1, seq), np.float32)
  delta[..., 2] = 1.0
  low, high = energies_jit(jnp.asarray(delta), cutoff=1)
  np.testing.assert_allclose([float(low[0, 0]), float(high[0, 0])], [3 / seq, (seq - 3) / seq],
                             rtol=1e-5)


def test_cutoff_is_the_papers_band_around_nyquist():
  # The authors scale the 2τ + 1 bins k with |k − S/2| <= τ; for even S that is f_k > S/2 − τ − 1.
  seq = 16
  delta = jnp.zeros((1, 1, 1, seq)).at[..., 0].set(1.0)   # flat spectrum: the output is the gain
  for tau in range(seq // 2):
    scaled = iv.scale_high_frequencies(delta, 2.0, seq // 2 - tau - 1)
    gain = np.real(np.fft.fft(np.asarray(scaled, np.float64)[0, 0, 0]))
    papers_band = np.abs(np.arange(seq) - seq // 2) <= tau
    np.testing.assert_allclose(gain, np.where(papers_band, 2.0, 1.0), atol=1e-5)
  # At c = 0 every component but the row mean is scaled: A' = βA − (β − 1)/S.
  weights = jnp.asarray(random_maps(np.random.default_rng(2), 1, 2, 3, seq))
  np.testing.assert_allclose(iv.scale_high_frequencies(weights, 2.5, 0),
                             2.5 * weights - 1.5 / seq, atol=1e-6)


@PROPERTY
@given(seed=st.integers(0, 10_000), beta=st.floats(0.0, 6.0), cutoff=st.integers(0, 3),
       seq=st.sampled_from([8, 9]))
def test_high_band_energy_scales_by_beta_squared_and_rows_keep_their_sums(seed, beta, cutoff,
                                                                         seq):
  rng = np.random.default_rng(seed)
  weights = random_maps(rng, 2, 2, 5, seq)
  scaled = np.asarray(scale_jit(jnp.asarray(weights), beta, cutoff=cutoff), np.float64)
  low, high = energies_oracle(weights, cutoff)
  low_out, high_out = energies_oracle(scaled, cutoff)
  np.testing.assert_allclose(high_out, beta**2 * high, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(low_out, low, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(scaled.sum(-1), 1.0, atol=1e-5)
  spectrum = np.fft.fft(weights.astype(np.float64), axis=-1)
  gain = np.where(high_band_oracle(seq, cutoff), beta, 1.0)
  np.testing.assert_allclose(scaled, np.real(np.fft.ifft(spectrum * gain, axis=-1)), atol=1e-6)


@PROPERTY
@given(seed=st.integers(0, 10_000), beta=st.floats(0.0, 8.0), cutoff=st.integers(0, 3),
       causal=st.booleans())
def test_motion_enhancement_keeps_rows_on_the_simplex_and_the_mask(seed, beta, cutoff, causal):
  rng = np.random.default_rng(seed)
  weights = random_maps(rng, 2, 2, 9, 9, temperature=3.0, causal=causal)
  out = np.asarray(enhance_jit(jnp.asarray(weights), beta, cutoff=cutoff))
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
  assert (out >= 0).all()
  assert (out[weights == 0] == 0).all()   # no weight reaches a masked (future) key
  # Where nothing was clipped or masked it is the spectral step renormalised (a no-op).
  scaled = np.asarray(scale_jit(jnp.asarray(weights), beta, cutoff=cutoff))
  rows = (scaled >= 0).all(-1) & (weights > 0).all(-1)
  np.testing.assert_allclose(out[rows], scaled[rows], atol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5, 2.5])
def test_motion_enhancement_scales_the_energy_above_the_cutoff(beta):
  # Near-uniform maps stay positive, so nothing is clipped: the high band's energy is × β².
  weights = jnp.asarray(random_maps(np.random.default_rng(3), 2, 3, 12, 12, temperature=0.1))
  out = enhance_jit(weights, beta, cutoff=2)
  low, high = energies_jit(weights, cutoff=2)
  low_out, high_out = energies_jit(out, cutoff=2)
  np.testing.assert_allclose(high_out, beta**2 * high, rtol=1e-3)
  np.testing.assert_allclose(low_out, low, rtol=1e-5)
  if beta == 1.0:
    np.testing.assert_allclose(out, weights, atol=1e-7)


def test_broadway_restores_the_energy_guidance_takes():
  rng = np.random.default_rng(4)
  weights, reference = (jnp.asarray(random_maps(rng, 2, 3, 10, 10, temperature=0.3))
                        for _ in range(2))
  energy = energy_jit(weights)
  assert (energy_jit(guide_jit(weights, reference, 0.6)) < energy).all()
  # β = 1 lets eq. 7 pick β_c: exactly the energy before guidance (nothing clipped here).
  restored = broadway_jit(weights, reference, alpha=0.6, beta=1.0)
  np.testing.assert_allclose(energy_jit(restored), energy, rtol=1e-4)
  # A larger β wins over β_c and adds energy; α = 0, β = 1 is the identity.
  assert (energy_jit(broadway_jit(weights, reference, alpha=0.6, beta=3.0)) > energy).all()
  np.testing.assert_allclose(broadway_jit(weights, reference, alpha=0.0, beta=1.0), weights,
                             atol=1e-6)


def test_bad_arguments_raise_naming_them():
  weights = jnp.asarray(random_maps(np.random.default_rng(5), 1, 2, 6, 6))
  with pytest.raises(ValueError, match="alpha"):
    iv.temporal_self_guidance(weights, weights, 1.5)
  with pytest.raises(ValueError, match="alpha"):
    iv.broadway(weights, weights, alpha=-0.1)
  with pytest.raises(ValueError, match=r"reference.*\(1, 2, 6, 5\)"):
    iv.temporal_self_guidance(weights, weights[..., :5], 0.5)
  with pytest.raises(ValueError, match="weights"):
    iv.fourier_motion_enhance(weights[0], 2.0)
  with pytest.raises(ValueError, match="beta"):
    iv.fourier_motion_enhance(weights, -1.0)
  for cutoff in (-1, 3, 1.5):
    with pytest.raises(ValueError, match=r"cutoff.*\[0, 3\)"):
      iv.scale_high_frequencies(weights, 2.0, cutoff)
  with pytest.raises(ValueError, match="cutoff"):
    iv.map_band_energies(weights, 3)
  with pytest.raises(ValueError, match="layers"):
    iv.broadway_hooks([], reference_layer=0)
  with pytest.raises(ValueError, match="reference_layer"):
    iv.broadway_hooks([0, 1], reference_layer=1)
  with pytest.raises(ValueError, match="beta"):
    iv.broadway_hooks([1], reference_layer=0, beta=-2.0)


def run_observed(model, tokens_BxT, names, edit_hooks):
  """Under jit: the logits and, for each of ``names``, the map its hook receives (``"in"``) and
  the map it passes on after ``edit_hooks`` (``"out"``)."""
  def observer(store, key):
    def observe(pattern, name):
      store[f"{key} {name}"] = pattern
    return observe

  def run(tokens_BxT):
    seen = {}
    hooks = ([(name, observer(seen, "in")) for name in names] + edit_hooks()
             + [(name, observer(seen, "out")) for name in names])
    return model.run_with_hooks(tokens_BxT, fwd_hooks=hooks), seen
  return jax.jit(run)(tokens_BxT)


def test_broadway_hooks_edit_a_model_in_one_pass_and_guidance_works_in_two():
  model = Transformer(TransformerConfig(vocab_size=16, context_len=10, num_layers=2, d_model=16,
                                        num_heads=2, causal=False), rngs=nnx.Rngs(0))
  tokens_BxT = jax.random.randint(jax.random.key(1), (2, 10), 0, 16)
  names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(2)]
  plain, cache = jax.jit(lambda t: model.run_with_cache(t, names_filter=names[0]))(tokens_BxT)
  captured = cache[names[0]]

  # One pass: the reference layer's map, kept by its hook, guides the later layers.
  logits, seen = run_observed(model, tokens_BxT, names, lambda: iv.broadway_hooks(
      [0, 1], reference_layer=0, alpha=0.6, beta=2.0, cutoff=0))
  np.testing.assert_allclose(seen[f"in {names[0]}"], captured, atol=1e-6)
  for name in names:   # each layer's map is BroadWay's edit of the map that reached it
    edited = seen[f"out {name}"]
    np.testing.assert_allclose(edited, broadway_jit(seen[f"in {name}"], captured, alpha=0.6,
                                                    beta=2.0), atol=1e-5)
    np.testing.assert_allclose(jnp.sum(edited, -1), 1.0, atol=1e-5)
    assert float(jnp.min(edited)) >= 0
  assert not np.allclose(logits, plain, atol=1e-3)

  # Two passes: guidance toward the map run_with_cache captured pulls the later map by 1 − α.
  guide = lambda pattern, name: iv.temporal_self_guidance(pattern, captured, 0.25)
  _, seen = run_observed(model, tokens_BxT, names[1:], lambda: [(n, guide) for n in names[1:]])
  for name in names[1:]:
    np.testing.assert_allclose(seen[f"out {name}"] - captured,
                               0.75 * (seen[f"in {name}"] - captured), atol=1e-6)


def test_broadway_hooks_keep_a_causal_model_causal():
  model = Transformer(TransformerConfig(vocab_size=16, context_len=9, num_layers=2, d_model=16,
                                        num_heads=2), rngs=nnx.Rngs(2))
  tokens = jax.random.randint(jax.random.key(3), (9,), 0, 16)
  tokens_BxT = jnp.stack([tokens, tokens.at[-1].set((tokens[-1] + 1) % 16)])  # differ at the end
  names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(2)]
  logits, seen = run_observed(model, tokens_BxT, names, lambda: iv.broadway_hooks(
      [0, 1], reference_layer=0, alpha=0.5, beta=3.0, cutoff=1))
  np.testing.assert_allclose(logits[0, :-1], logits[1, :-1], atol=1e-5)
  for name in names:
    edited = np.asarray(seen[f"out {name}"])
    assert not np.allclose(edited, seen[f"in {name}"], atol=1e-3)
    np.testing.assert_array_equal(np.triu(edited, 1), 0.0)
