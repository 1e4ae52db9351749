"""Attention analysis: pure functions over attention maps and captured activations.

Head scores, attention sinks, interventions on attention weights (ACT, VAR, VHR, MotionCLR's
editing, positional debiasing and BroadWay's temporal self-guidance and Fourier motion
enhancement, with ``broadway_hooks`` for ``run_with_hooks``), reasoning metrics, spectral
forensics of the momentum shear, and in-context learning from a model's token losses (Olsson et
al.'s repeated-segment losses and ICL score). Every function takes arrays (``weights_BxNxTxS``,
hidden states, q/k, logits), not models, so it works on attention maps from any source.
"""

from momentum_jax.analysis.head_scores import (
    HeadScore, chance_scores, detect_heads, duplicate_token_pattern, duplicate_token_score,
    induction_pattern, induction_score, pattern_score, prefix_matching_score,
    previous_token_pattern, previous_token_score, score_heads, uniform_weights,
)
from momentum_jax.analysis.in_context import (
    InContextScore, RepeatedSegmentLosses, in_context_score, next_token_losses,
    repeated_segment_losses, token_losses,
)
from momentum_jax.analysis.interventions import (
    act_calibrate, act_sink_columns, broadway, broadway_hooks, debias_scores, fit_recency_trend,
    fourier_motion_enhance, map_band_energies, map_energy, replace_token_columns, reweight_heads,
    scale_high_frequencies, scale_token_columns, suppress_tokens, temporal_self_guidance,
    var_redistribute, var_selection, vhr_head_scales,
)
from momentum_jax.analysis.plots import (
    plot_attention_patterns, plot_band_energies, plot_bode, plot_head_scores, plot_sink_heatmap,
)
from momentum_jax.analysis.reasoning import (
    fai, head_distance, head_divergence, mean_head_attention, split_local_global,
    top_k_head_score, waad,
)
from momentum_jax.analysis.sinks import (
    SinkLevels, TopActivations, dimension_sink_tokens, head_sink_scores, massive_activation_dims,
    secondary_sinks, select_bos, sink_alpha, sink_flags, sink_rate, sink_thresholds,
    top_activations,
)
from momentum_jax.analysis.spectral import (
    BandEnergies, BodeResponse, FirFit, Spectrum, band_energies, bode, fir_response,
    fit_causal_fir, lagged, momentum_gain_squared, momentum_pair_norms, momentum_phase,
    momentum_response, rope_momentum_gain, rope_pair_band_energies, rope_pair_norms,
    rope_pair_spectrum, shear_taps, time_power_spectrum,
)

__all__ = [
    "BandEnergies",
    "BodeResponse",
    "FirFit",
    "HeadScore",
    "InContextScore",
    "RepeatedSegmentLosses",
    "SinkLevels",
    "Spectrum",
    "TopActivations",
    "act_calibrate",
    "act_sink_columns",
    "band_energies",
    "bode",
    "broadway",
    "broadway_hooks",
    "chance_scores",
    "debias_scores",
    "detect_heads",
    "dimension_sink_tokens",
    "duplicate_token_pattern",
    "duplicate_token_score",
    "fai",
    "fir_response",
    "fit_causal_fir",
    "fit_recency_trend",
    "fourier_motion_enhance",
    "head_distance",
    "head_divergence",
    "head_sink_scores",
    "in_context_score",
    "induction_pattern",
    "induction_score",
    "lagged",
    "map_band_energies",
    "map_energy",
    "massive_activation_dims",
    "mean_head_attention",
    "momentum_gain_squared",
    "momentum_pair_norms",
    "momentum_phase",
    "momentum_response",
    "next_token_losses",
    "pattern_score",
    "plot_attention_patterns",
    "plot_band_energies",
    "plot_bode",
    "plot_head_scores",
    "plot_sink_heatmap",
    "prefix_matching_score",
    "previous_token_pattern",
    "previous_token_score",
    "repeated_segment_losses",
    "replace_token_columns",
    "reweight_heads",
    "rope_momentum_gain",
    "rope_pair_band_energies",
    "rope_pair_norms",
    "rope_pair_spectrum",
    "scale_high_frequencies",
    "scale_token_columns",
    "score_heads",
    "secondary_sinks",
    "select_bos",
    "shear_taps",
    "sink_alpha",
    "sink_flags",
    "sink_rate",
    "sink_thresholds",
    "split_local_global",
    "suppress_tokens",
    "temporal_self_guidance",
    "time_power_spectrum",
    "token_losses",
    "top_activations",
    "top_k_head_score",
    "uniform_weights",
    "var_redistribute",
    "var_selection",
    "vhr_head_scales",
    "waad",
]
