"""What the spectral-forensics experiment measures on one trained model: its attention on the
repeated-token probe, the causal FIR filters fitted from its q/k before to after the shear, the
measured gain and the energies in low and high temporal bands (per head and per RoPE pair)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from momentum_jax.analysis import (
    band_energies, fit_causal_fir, momentum_pair_norms, rope_pair_band_energies, rope_pair_norms,
    time_power_spectrum,
)
from momentum_jax.attention import momentum_shear
from momentum_jax.experiments.spectral_forensics.config import ExperimentConfig
from momentum_jax.nn import TransformerConfig

HOOKS = ("blocks.0.attn.hook_pattern", "blocks.0.attn.hook_k", "blocks.0.attn.hook_rot_q",
         "blocks.0.attn.hook_rot_k")


def _shear(model_config: TransformerConfig, x_BxTxNxH: jax.Array) -> jax.Array:
  """The q/k the attention uses: sheared for the momentum variant, unchanged otherwise."""
  params = dict(model_config.attention_params)
  if model_config.attention != "momentum":
    return x_BxTxNxH
  return momentum_shear(x_BxTxNxH, params["gamma"], boundary=params.get("boundary", "zero"))


def _stripe_score(pattern_BxNxTxS: jax.Array, repeat_len: int) -> jax.Array:
  """Per head, mean over the second copy of A[t, t − L + 1] (the induction stripe)."""
  t = jnp.arange(repeat_len, 2 * repeat_len)
  return pattern_BxNxTxS[:, :, t, t - repeat_len + 1].mean(axis=(0, 2))


@functools.partial(jax.jit, static_argnames=("graphdef", "model_config", "config"))
def measure(state: nnx.State, induction_tokens: jax.Array, repeated_tokens: jax.Array, *,
             graphdef: nnx.GraphDef, model_config: TransformerConfig,
             config: ExperimentConfig) -> dict:
  """Captures one model's activations on both probes and measures them, in one compiled call."""
  model = nnx.merge(graphdef, state)
  _, repeat_cache = model.run_with_cache(repeated_tokens, HOOKS)
  _, cache = model.run_with_cache(induction_tokens, HOOKS)
  rot_q, rot_k = cache["blocks.0.attn.hook_rot_q"], cache["blocks.0.attn.hook_rot_k"]
  q_hat, k_hat = _shear(model_config, rot_q), _shear(model_config, rot_k)
  before, after = time_power_spectrum(rot_q), time_power_spectrum(q_hat)
  pattern_BxNxTxS = repeat_cache["blocks.0.attn.hook_pattern"]
  return {
      "pattern": pattern_BxNxTxS.mean(0),
      "stripe_score": _stripe_score(pattern_BxNxTxS, config.repeat_len),
      "fit_q": fit_causal_fir(rot_q, q_hat, config.fir_taps),
      "fit_k": fit_causal_fir(rot_k, k_hat, config.fir_taps),
      "omega_F": before.omega_F,
      "measured_gain_db": 10 * jnp.log10(after.power_xF.sum(0) / before.power_xF.sum(0)),
      "bands": {label: band_energies(time_power_spectrum(x), config.cutoff)
                for label, x in (("q", rot_q), ("k", rot_k), ("q_hat", q_hat), ("k_hat", k_hat))},
      "pairs_k": rope_pair_band_energies(rot_k, config.cutoff),
      "pairs_content": rope_pair_band_energies(cache["blocks.0.attn.hook_k"], config.cutoff),
      "momentum_ratio_P": ((momentum_pair_norms(rot_k) ** 2).mean(axis=(0, 1, 2))
                           / (rope_pair_norms(rot_k) ** 2).mean(axis=(0, 1, 2))),
  }


def json_record(arrays: dict) -> dict:
  """The JSON-ready measurements of one model."""
  listed = lambda x: np.asarray(x).tolist()
  return {
      "stripe_score_per_head": listed(arrays["stripe_score"]),
      "fir_taps_q": listed(arrays["fit_q"].taps_NxJ),
      "fir_taps_k": listed(arrays["fit_k"].taps_NxJ),
      "fir_relative_residual_q": listed(arrays["fit_q"].relative_residual_N),
      "fir_relative_residual_k": listed(arrays["fit_k"].relative_residual_N),
      "measured_gain_db": listed(arrays["measured_gain_db"]),
      "high_band_fraction_per_head": {k: listed(v.high_fraction)
                                      for k, v in arrays["bands"].items()},
      "rope_pair_high_fraction_k": listed(arrays["pairs_k"].high_fraction.mean(0)),
      "rope_pair_high_fraction_k_content": listed(arrays["pairs_content"].high_fraction.mean(0)),
      "rope_pair_momentum_ratio_k": listed(arrays["momentum_ratio_P"]),
  }
