"""Spectral forensics of the momentum shear (Maitra, "Momentum Attention", arXiv 2602.04902).

The shear x̂_t = (1+γ) x_t − γ x_{t−1} is the causal FIR filter H(z) = 1 + γ(1 − z⁻¹) run along
the time axis of every q/k channel. Its frequency response H(e^{iω}) = 1 + γ(1 − e^{−iω}) has

    ``|H|² = 1 + 2γ(1+γ)(1 − cos ω)``      gain 1 at DC (ω = 0), 1 + 2γ at Nyquist (ω = π)
    φ(ω) = atan2(γ sin ω, 1 + γ − γ cos ω)

so it passes slowly varying (DC, "semantic") content and amplifies fast (AC, "mechanistic")
content. RoPE turns constant content c of pair i into a rotation at angle θ_i per step, so the
momentum p_t = x_t − x_{t−1} of that pair has norm ``2|sin(θ_i/2)|·|c|``: low-frequency RoPE pairs
carry almost no momentum from static content, high-frequency pairs carry most of it (DC/AC band
segregation).

This module computes the analytic response of the shear and of any causal FIR filter
(``c_j``, x̂_t = Σ_j c_j x_{t−j}), Bode data (magnitude in dB, unwrapped phase), a least-squares
FIR fit between two q/k tensors, time power spectra per head and per RoPE pair (pairs are
channels (i, i + H/2), the rotate-half convention of :mod:`momentum_jax.core.rope`) and
band energies below / above a cut-off. Inputs are arrays ``[B, T, N, H]``, not models.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from momentum_jax.core.checks import check_floating, check_rank4
from momentum_jax.core.rope import rope_frequencies

_HIGHEST = jax.lax.Precision.HIGHEST


class BodeResponse(NamedTuple):
  """Frequency response of a filter on ω ∈ [0, π].

  Attributes:
    omega_W: angular frequencies (radians per step).
    response_W: complex H(e^{iω}) (leading axes of the taps are kept: ``[..., W]``).
    magnitude_db_W: ``20·log10|H|``.
    phase_W: arg H, unwrapped along ω (radians).
  """

  omega_W: jax.Array
  response_W: jax.Array
  magnitude_db_W: jax.Array
  phase_W: jax.Array


class FirFit(NamedTuple):
  """Least-squares causal FIR filter per head.

  Attributes:
    taps_NxJ: c_j of x̂_t ≈ Σ_j c_j x_{t−j}, j = 0 … J−1, one row per head.
    relative_residual_N: ‖y − ŷ‖ / ‖y‖ per head (0 for an exact fit).
  """

  taps_NxJ: jax.Array
  relative_residual_N: jax.Array


class Spectrum(NamedTuple):
  """One-sided time power spectrum.

  Attributes:
    omega_F: bin frequencies 2πf/T, f = 0 … ⌊T/2⌋.
    power_xF: power per bin (leading axes as documented by the producer); the bins sum to the
      mean over batch (and channels) of Σ_t x_t² (Parseval).
  """

  omega_F: jax.Array
  power_xF: jax.Array


class BandEnergies(NamedTuple):
  """Energy of a spectrum at ω <= cut-off (``low``) and ω > cut-off (``high``)."""

  low: jax.Array
  high: jax.Array

  @property
  def high_fraction(self) -> jax.Array:
    """high / (low + high)."""
    return self.high / jnp.maximum(self.low + self.high, jnp.finfo(jnp.float32).tiny)


def shear_taps(gamma: float | jax.Array) -> jax.Array:
  """The taps ``[1 + γ, −γ]`` of the momentum shear (``[..., 2]`` for an array γ)."""
  gamma = jnp.asarray(gamma, jnp.float32)
  return jnp.stack([1.0 + gamma, -gamma], axis=-1)


def fir_response(taps_xJ: jax.Array, omega_W: jax.Array) -> jax.Array:
  """H(e^{iω}) = Σ_j c_j e^{−iωj} of the causal FIR filter with taps ``c``.

  Args:
    taps_xJ: taps ``[..., J]`` (c_0 multiplies the current step).
    omega_W: angular frequencies ``[W]``.

  Returns:
    complex64 ``[..., W]``.
  """
  taps_xJ = jnp.asarray(taps_xJ, jnp.float32)
  if taps_xJ.ndim < 1 or taps_xJ.shape[-1] < 1:
    raise ValueError(f"taps must have shape [..., J] with J >= 1, got taps.shape={taps_xJ.shape}")
  omega_W = jnp.asarray(omega_W, jnp.float32)
  lags_J = jnp.arange(taps_xJ.shape[-1], dtype=jnp.float32)
  phasor_JxW = jnp.exp(-1j * lags_J[:, None] * omega_W[None, :])
  return jnp.einsum("...j,jw->...w", taps_xJ.astype(jnp.complex64), phasor_JxW,
                    precision=_HIGHEST)


def momentum_response(gamma: float | jax.Array, omega_W: jax.Array) -> jax.Array:
  """H(e^{iω}) = 1 + γ(1 − e^{−iω}) of the shear (complex64 ``[..., W]``)."""
  return fir_response(shear_taps(gamma), omega_W)


def momentum_gain_squared(gamma: float | jax.Array, omega_W: jax.Array) -> jax.Array:
  """Closed form ``|H(e^{iω})|² = 1 + 2γ(1+γ)(1 − cos ω)``."""
  gamma = jnp.asarray(gamma, jnp.float32)[..., None]
  return 1.0 + 2.0 * gamma * (1.0 + gamma) * (1.0 - jnp.cos(jnp.asarray(omega_W, jnp.float32)))


def momentum_phase(gamma: float | jax.Array, omega_W: jax.Array) -> jax.Array:
  """Closed form φ(ω) = atan2(γ sin ω, 1 + γ − γ cos ω) (within (−π/2, π/2) for γ >= 0)."""
  gamma = jnp.asarray(gamma, jnp.float32)[..., None]
  omega_W = jnp.asarray(omega_W, jnp.float32)
  return jnp.arctan2(gamma * jnp.sin(omega_W), 1.0 + gamma - gamma * jnp.cos(omega_W))


def bode(taps_xJ: jax.Array, num_points: int = 256) -> BodeResponse:
  """Bode data of a causal FIR filter on ``num_points`` frequencies from 0 to π.

  Args:
    taps_xJ: taps ``[..., J]`` (e.g. :func:`shear_taps` or :attr:`FirFit.taps_NxJ`).
    num_points: number of frequencies, >= 2.
  """
  if num_points < 2:
    raise ValueError(f"num_points must be >= 2, got num_points={num_points}")
  omega_W = jnp.linspace(0.0, jnp.pi, num_points, dtype=jnp.float32)
  response = fir_response(taps_xJ, omega_W)
  magnitude = jnp.maximum(jnp.abs(response), jnp.finfo(jnp.float32).tiny)
  return BodeResponse(omega_W, response, 20.0 * jnp.log10(magnitude),
                      jnp.unwrap(jnp.angle(response), axis=-1))


def _check_qk(name: str, x: jax.Array) -> None:
  check_rank4(name, x)
  check_floating(name, x)


def lagged(x_BxTxNxH: jax.Array, num_taps: int) -> jax.Array:
  """``[B, T, N, H, J]`` with ``[..., j] = x_{t−j}`` (zero before the first step)."""
  _check_qk("x", x_BxTxNxH)
  seq = x_BxTxNxH.shape[1]
  if not 1 <= num_taps <= seq:
    raise ValueError(f"num_taps must be in [1, T={seq}], got num_taps={num_taps}")
  pad = jnp.pad(x_BxTxNxH, ((0, 0), (num_taps - 1, 0), (0, 0), (0, 0)))
  return jnp.stack([pad[:, num_taps - 1 - j: num_taps - 1 - j + seq] for j in range(num_taps)],
                   axis=-1)


def fit_causal_fir(x_BxTxNxH: jax.Array, y_BxTxNxH: jax.Array, num_taps: int) -> FirFit:
  """Per head, the taps c minimising Σ_{b,t,h} (y_t − Σ_j c_j x_{t−j})² (x_{t<0} = 0).

  Fitting pre-shear to post-shear q (or k) of a momentum model recovers [1 + γ, −γ, 0, …]; on
  any other pair of tensors it gives the best causal time filter between them.

  Args:
    x_BxTxNxH: filter input, e.g. q after RoPE.
    y_BxTxNxH: filter output, same shape, e.g. q after the shear.
    num_taps: J, 1 <= J <= T.
  """
  _check_qk("x", x_BxTxNxH)
  _check_qk("y", y_BxTxNxH)
  if x_BxTxNxH.shape != y_BxTxNxH.shape:
    raise ValueError(f"x and y must have the same shape, got x.shape={x_BxTxNxH.shape} and "
                     f"y.shape={y_BxTxNxH.shape}")
  design_NxRxJ = jnp.moveaxis(lagged(x_BxTxNxH.astype(jnp.float32), num_taps), 2, 0)
  heads = design_NxRxJ.shape[0]
  design_NxRxJ = design_NxRxJ.reshape(heads, -1, num_taps)
  target_NxR = jnp.moveaxis(y_BxTxNxH.astype(jnp.float32), 2, 0).reshape(heads, -1)
  taps_NxJ = jax.vmap(lambda a, b: jnp.linalg.lstsq(a, b)[0])(design_NxRxJ, target_NxR)
  fitted_NxR = jnp.einsum("nrj,nj->nr", design_NxRxJ, taps_NxJ, precision=_HIGHEST)
  residual_N = jnp.linalg.norm(target_NxR - fitted_NxR, axis=-1)
  scale_N = jnp.maximum(jnp.linalg.norm(target_NxR, axis=-1), jnp.finfo(jnp.float32).tiny)
  return FirFit(taps_NxJ, residual_N / scale_N)


def _one_sided_power(x_xT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Bins 2πf/T and one-sided power ``|X_f|²/T`` (doubled for 0 < f < T/2) along the last axis."""
  seq = x_xT.shape[-1]
  power_xF = jnp.abs(jnp.fft.rfft(x_xT.astype(jnp.float32), axis=-1)) ** 2 / seq
  bins_F = jnp.arange(power_xF.shape[-1])
  doubled_F = jnp.where((bins_F > 0) & (2 * bins_F < seq), 2.0, 1.0)
  return 2 * jnp.pi * bins_F / seq, power_xF * doubled_F


def time_power_spectrum(x_BxTxNxH: jax.Array) -> Spectrum:
  """Per head, the power spectrum along time, averaged over batch and head dimension.

  ``P_f = mean_{b,h} |X_f|²/T`` (doubled for 0 < f < T/2), X = FFT over t of x[b, :, n, h], so
  Σ_f P_f = mean_{b,h} Σ_t x_t². Returns ``Spectrum(omega_F, power_NxF)``.
  """
  _check_qk("x", x_BxTxNxH)
  omega_F, power_BxNxHxF = _one_sided_power(jnp.moveaxis(x_BxTxNxH, 1, -1))
  return Spectrum(omega_F, power_BxNxHxF.mean(axis=(0, 2)))


def rope_pair_spectrum(x_BxTxNxH: jax.Array) -> Spectrum:
  """Per head and RoPE pair (channels i, i + H/2), the power along time of both channels summed,
  averaged over batch. Returns ``Spectrum(omega_F, power_NxPxF)`` with P = H/2."""
  _check_qk("x", x_BxTxNxH)
  if x_BxTxNxH.shape[-1] % 2:
    raise ValueError(f"RoPE pairs need an even head dim, got x.shape={x_BxTxNxH.shape}")
  omega_F, power_BxNxHxF = _one_sided_power(jnp.moveaxis(x_BxTxNxH, 1, -1))
  first, second = jnp.split(power_BxNxHxF, 2, axis=2)
  return Spectrum(omega_F, (first + second).mean(axis=0))


def band_energies(spectrum: Spectrum, cutoff: float) -> BandEnergies:
  """Energy of the bins with ω <= ``cutoff`` (low; ``cutoff=0`` keeps DC only) and ω > cutoff
  (high), summed over the last axis of ``spectrum.power_xF``."""
  if not 0.0 <= cutoff <= jnp.pi:
    raise ValueError(f"cutoff must be in [0, π], got cutoff={cutoff}")
  low_F = spectrum.omega_F <= cutoff + 1e-6
  power = spectrum.power_xF
  return BandEnergies(jnp.where(low_F, power, 0.0).sum(-1), jnp.where(low_F, 0.0, power).sum(-1))


def rope_pair_band_energies(x_BxTxNxH: jax.Array, cutoff: float) -> BandEnergies:
  """DC/AC split per head and RoPE pair: :func:`band_energies` of :func:`rope_pair_spectrum`,
  ``low`` and ``high`` of shape ``[N, H/2]``. Constant content rotated by RoPE sits at ω = θ_i,
  so pairs with θ_i <= cutoff land in the low band."""
  return band_energies(rope_pair_spectrum(x_BxTxNxH), cutoff)


def rope_pair_norms(x_BxTxNxH: jax.Array) -> jax.Array:
  """``[B, T, N, H/2]`` norms sqrt(x_i² + x_{i+H/2}²) of the RoPE pairs."""
  _check_qk("x", x_BxTxNxH)
  if x_BxTxNxH.shape[-1] % 2:
    raise ValueError(f"RoPE pairs need an even head dim, got x.shape={x_BxTxNxH.shape}")
  first, second = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  return jnp.sqrt(first**2 + second**2)


def momentum_pair_norms(x_BxTxNxH: jax.Array) -> jax.Array:
  """``[B, T−1, N, H/2]`` norms of the momentum p_t = x_t − x_{t−1} per RoPE pair, t >= 1."""
  _check_qk("x", x_BxTxNxH)
  return rope_pair_norms(x_BxTxNxH[:, 1:] - x_BxTxNxH[:, :-1])


def rope_momentum_gain(head_dim: int, base: float = 10000.0) -> jax.Array:
  """``[H/2]`` gains ``2|sin(θ_i/2)|``: ``|p_t| / |c|`` for constant content c through RoPE
  pair i."""
  return 2.0 * jnp.abs(jnp.sin(rope_frequencies(head_dim, base) / 2.0))
