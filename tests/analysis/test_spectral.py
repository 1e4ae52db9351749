"""Spectral forensics: closed forms of the shear's response, FIR fits, spectra, RoPE interplay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from momentum_jax.analysis import spectral
from momentum_jax.attention import momentum_shear
from momentum_jax.core.rope import apply_rope, rope_frequencies

OMEGA = jnp.linspace(0.0, jnp.pi, 97)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 4.17])
def test_shear_response_matches_closed_forms(gamma):
  response = spectral.momentum_response(gamma, OMEGA)
  np.testing.assert_allclose(jnp.abs(response) ** 2, spectral.momentum_gain_squared(gamma, OMEGA),
                             rtol=1e-5)
  np.testing.assert_allclose(jnp.angle(response), spectral.momentum_phase(gamma, OMEGA),
                             atol=1e-6)
  np.testing.assert_allclose(jnp.abs(response[0]), 1.0, rtol=1e-6)
  np.testing.assert_allclose(jnp.abs(response[-1]), 1.0 + 2.0 * gamma, rtol=1e-5)


def test_bode_of_per_head_taps_and_unwrapped_phase():
  taps_2x2 = spectral.shear_taps(jnp.array([0.5, 2.0]))
  result = spectral.bode(taps_2x2, num_points=65)
  assert result.magnitude_db_W.shape == result.phase_W.shape == (2, 65)
  np.testing.assert_allclose(result.magnitude_db_W[:, -1], 20 * np.log10([2.0, 5.0]), rtol=1e-5)
  np.testing.assert_allclose(result.phase_W, spectral.momentum_phase(jnp.array([0.5, 2.0]),
                                                                      result.omega_W), atol=1e-5)
  # A pure delay of 3 steps has phase −3ω, which wraps three times before π unless unwrapped.
  delay = spectral.bode(jnp.array([0.0, 0.0, 0.0, 1.0]), num_points=257)
  np.testing.assert_allclose(delay.phase_W, -3 * delay.omega_W, atol=1e-4)
  np.testing.assert_allclose(delay.magnitude_db_W, 0.0, atol=1e-4)


def test_fir_response_of_moving_average():
  omega = jnp.array([0.0, jnp.pi / 2, jnp.pi])
  np.testing.assert_allclose(spectral.fir_response(jnp.array([0.5, 0.5]), omega),
                             [1.0, 0.5 - 0.5j, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="taps"):
    spectral.fir_response(jnp.zeros((3, 0)), omega)


def test_fit_recovers_per_head_shear_taps():
  x = jax.random.normal(jax.random.key(0), (2, 37, 4, 6))
  gamma_N = jnp.array([0.0, 0.25, 1.0, 3.0])
  fit = spectral.fit_causal_fir(x, momentum_shear(x, gamma_N), num_taps=3)
  expected = jnp.concatenate([spectral.shear_taps(gamma_N), jnp.zeros((4, 1))], axis=1)
  np.testing.assert_allclose(fit.taps_NxJ, expected, atol=1e-4)
  np.testing.assert_allclose(fit.relative_residual_N, 0.0, atol=1e-4)


def test_fit_residual_reports_what_no_causal_filter_explains():
  x = jax.random.normal(jax.random.key(1), (3, 29, 2, 4))
  y = x + jax.random.normal(jax.random.key(2), x.shape)
  fit = spectral.fit_causal_fir(x, y, num_taps=2)
  np.testing.assert_allclose(fit.taps_NxJ, [[1.0, 0.0]] * 2, atol=0.2)
  np.testing.assert_allclose(fit.relative_residual_N, 1 / np.sqrt(2), atol=0.1)


def test_bad_inputs_name_the_argument():
  x = jnp.zeros((1, 5, 2, 4))
  with pytest.raises(ValueError, match=r"y.shape=\(1, 5, 2, 6\)"):
    spectral.fit_causal_fir(x, jnp.zeros((1, 5, 2, 6)), num_taps=2)
  with pytest.raises(ValueError, match="num_taps=6"):
    spectral.fit_causal_fir(x, x, num_taps=6)
  with pytest.raises(ValueError, match="rank 4"):
    spectral.time_power_spectrum(jnp.zeros((5, 2, 4)))
  with pytest.raises(ValueError, match="even head dim"):
    spectral.rope_pair_spectrum(jnp.zeros((1, 5, 2, 3)))
  with pytest.raises(ValueError, match="cutoff"):
    spectral.band_energies(spectral.time_power_spectrum(x), cutoff=4.0)
  with pytest.raises(ValueError, match="num_points"):
    spectral.bode(jnp.ones(2), num_points=1)


@pytest.mark.parametrize("seq", [13, 16])
def test_time_spectrum_parseval_and_tone_location(seq):
  x = jax.random.normal(jax.random.key(3), (2, seq, 3, 6))
  spectrum = spectral.time_power_spectrum(x)
  assert spectrum.power_xF.shape == (3, seq // 2 + 1)
  np.testing.assert_allclose(spectrum.power_xF.sum(-1), (x**2).sum(1).mean(axis=(0, 2)),
                             rtol=1e-5)
  t = jnp.arange(seq, dtype=jnp.float32)
  tone = jnp.cos(2 * jnp.pi * 3 * t / seq)[None, :, None, None] * jnp.ones((1, 1, 1, 2))
  power = spectral.time_power_spectrum(tone).power_xF[0]
  assert int(jnp.argmax(power)) == 3
  energies = spectral.band_energies(spectral.time_power_spectrum(tone), cutoff=2 * np.pi * 2 / seq)
  np.testing.assert_allclose(energies.high_fraction, 1.0, atol=1e-5)


def test_shear_raises_ac_energy_by_the_analytic_gain():
  seq = 64
  x = jax.random.normal(jax.random.key(4), (8, seq, 2, 8))
  gamma = 1.0
  before = spectral.time_power_spectrum(x)
  after = spectral.time_power_spectrum(momentum_shear(x, gamma, boundary="replicate"))
  ratio = after.power_xF.sum(0) / before.power_xF.sum(0)
  gain = spectral.momentum_gain_squared(gamma, before.omega_F)
  # White noise: the periodogram ratio follows |H|² up to end effects and estimation noise.
  np.testing.assert_allclose(ratio[1:], gain[1:], rtol=0.35)
  assert float(ratio[-1]) > 5.0 * float(ratio[1])


def test_rope_interplay_constant_content_momentum_norm():
  """|p_t| = 2|sin(θ_i/2)|·|c_i| for constant content c through RoPE pair i."""
  head_dim, seq = 12, 37
  c = jax.random.normal(jax.random.key(5), (1, 1, 3, head_dim))
  x = apply_rope(jnp.broadcast_to(c, (1, seq, 3, head_dim)))
  norms = spectral.momentum_pair_norms(x)
  expected = spectral.rope_momentum_gain(head_dim) * spectral.rope_pair_norms(c)[0, 0]
  np.testing.assert_allclose(norms, jnp.broadcast_to(expected, norms.shape), rtol=1e-4, atol=1e-5)
  theta = rope_frequencies(head_dim)
  assert bool(jnp.all(jnp.diff(spectral.rope_momentum_gain(head_dim)) < 0))
  np.testing.assert_allclose(spectral.rope_momentum_gain(head_dim)[0], 2 * np.sin(theta[0] / 2),
                             rtol=1e-6)


def test_rope_pair_band_split_segregates_static_content_by_frequency():
  head_dim, seq = 16, 64
  c = jnp.ones((1, 1, 2, head_dim))
  x = apply_rope(jnp.broadcast_to(c, (4, seq, 2, head_dim)))
  cutoff = 0.05
  split = spectral.rope_pair_band_energies(x, cutoff)
  assert split.low.shape == split.high.shape == (2, head_dim // 2)
  theta = rope_frequencies(head_dim)
  fastest, slowest = 0, head_dim // 2 - 1
  assert float(theta[fastest]) > cutoff > float(theta[slowest])
  assert float(split.high_fraction[0, fastest]) > 0.95
  assert float(split.high_fraction[0, slowest]) < 0.05
  np.testing.assert_allclose(split.low + split.high,
                             (spectral.rope_pair_norms(x) ** 2).sum(1).mean(0), rtol=1e-5)
