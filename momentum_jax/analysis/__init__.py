"""Attention analysis: pure functions over attention maps and captured activations.

Head scores, attention sinks, interventions on attention weights, reasoning metrics and spectral
forensics of the momentum shear. Every function takes arrays (``weights_BxNxTxS``, hidden states,
q/k), not models, so it works on attention maps from any source.
"""

from momentum_jax.analysis.plots import (
    plot_attention_patterns, plot_band_energies, plot_bode, plot_head_scores, plot_sink_heatmap,
)
from momentum_jax.analysis.spectral import (
    BandEnergies, BodeResponse, FirFit, Spectrum, band_energies, bode, fir_response,
    fit_causal_fir, lagged, momentum_gain_squared, momentum_pair_norms, momentum_phase,
    momentum_response, rope_momentum_gain, rope_pair_band_energies, rope_pair_norms,
    rope_pair_spectrum, shear_taps, time_power_spectrum,
)
