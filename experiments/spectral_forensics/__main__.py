"""Trains (or loads) the 1-layer softmax and momentum induction models of ``config.py`` and writes
their spectral forensics: JSON, attention patterns, Bode plot and band-energy charts.

    python -m momentum_jax.experiments.spectral_forensics [--quick] [--output-dir DIR]
        [--fresh] [--no-progress] [--config.PATH=VALUE ...]
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from momentum_jax.analysis import (
    band_energies, bode, fir_response, fit_causal_fir, momentum_pair_norms, plot_attention_patterns,
    plot_band_energies, plot_bode, rope_momentum_gain, rope_pair_band_energies, rope_pair_norms,
    shear_taps, time_power_spectrum,
)
from momentum_jax.attention import momentum_shear
from momentum_jax.core.rope import rope_frequencies
from momentum_jax.data import repeated_random_tokens
from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.spectral_forensics.config import ExperimentConfig, get_config
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import train

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
def _measure(state: nnx.State, induction_tokens: jax.Array, repeated_tokens: jax.Array, *,
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


def _figures(arrays: dict) -> dict:
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


def _write_plots(config: ExperimentConfig, arrays: dict[str, dict], momentum_name: str,
                 gamma: float, out_dir: pathlib.Path) -> list[pathlib.Path]:
  names = list(arrays)
  paths = [plot_attention_patterns(
      np.stack([arrays[n]["pattern"] for n in names]), out_dir / "patterns.png",
      title=f"attention on repeated random tokens (L = {config.repeat_len})", layer_labels=names)]
  analytic = bode(shear_taps(gamma))
  responses = {f"analytic shear γ = {gamma:g}": analytic.response_W}
  for n in names:
    for tensor in ("q", "k"):
      taps = arrays[n][f"fit_{tensor}"].taps_NxJ.mean(0)
      responses[f"{n}: FIR fit {tensor} → {tensor}̂"] = fir_response(taps, analytic.omega_W)
  paths.append(plot_bode(analytic.omega_W, responses, out_dir / "bode.png",
                         title="momentum shear: analytic vs fitted on the learned q/k"))
  labels, low, high = [], [], []
  for n in names:
    for tensor, energies in arrays[n]["bands"].items():
      labels.append(f"{n} {tensor}")
      high.append(float(energies.high_fraction.mean()))
      low.append(1.0 - high[-1])
  paths.append(plot_band_energies(labels, low, high, out_dir / "band_energies.png",
                                  title=f"q/k energy along time, cut-off ω = {config.cutoff:.3g}"))
  pairs = arrays[momentum_name]["pairs_k"]
  theta = np.asarray(rope_frequencies(pairs.low.shape[-1] * 2))
  paths.append(plot_band_energies(
      [f"θ={t:.2g}" for t in theta], np.asarray(pairs.low.mean(0)), np.asarray(pairs.high.mean(0)),
      out_dir / "rope_pair_bands.png",
      title=f"{momentum_name}: k after RoPE per RoPE pair, cut-off ω = {config.cutoff:.3g}"))
  return paths


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "spectral_forensics", get_config,
                         workdirs=lambda config: (name for name, _ in config.models))
  config, out_dir = run.config, run.out_dir
  probe_key, repeat_key = jax.random.split(jax.random.key(config.seed))
  induction_tokens = config.task.sample(probe_key, config.probe_batch).tokens
  repeated_tokens = repeated_random_tokens(repeat_key, config.probe_batch, config.repeat_len,
                                           config.task.vocab_size)
  results, arrays = {}, {}
  for name, model_config in config.models:
    result = train(model_config, config.train, config.task, out_dir / name,
                   progress=run.progress, experiment=run.experiment)
    graphdef, state = nnx.split(result.model)
    arrays[name] = _measure(state, induction_tokens, repeated_tokens, graphdef=graphdef,
                            model_config=model_config, config=config)
    results[name] = {"eval_accuracy": float(result.final_eval["accuracy"]),
                     **_figures(arrays[name]), "model": model_config.to_dict()}

  momentum_name, momentum_config = next(
      (n, c) for n, c in config.models if c.attention == "momentum")
  gamma = float(dict(momentum_config.attention_params)["gamma"])
  omega_F = arrays[momentum_name]["omega_F"]
  head_dim = momentum_config.head_dim
  summary = {
      "task": config.task.__dict__, "train": config.train.to_dict(), "quick": run.quick,
      "cutoff": config.cutoff, "repeat_len": config.repeat_len,
      "omega_F": np.asarray(omega_F).tolist(),
      "analytic_gain_db": np.asarray(10 * jnp.log10(
          jnp.abs(fir_response(shear_taps(gamma), omega_F)) ** 2)).tolist(),
      "rope_theta": np.asarray(rope_frequencies(head_dim)).tolist(),
      "rope_static_momentum_ratio": np.asarray(rope_momentum_gain(head_dim) ** 2).tolist(),
      "results": results, **run.record(),
  }
  (out_dir / "spectral_forensics.json").write_text(json.dumps(summary, indent=2))
  paths = _write_plots(config, arrays, momentum_name, gamma, out_dir)

  print(f"\n{'model':<20}{'acc':>7}{'stripe':>8}{'q hi':>7}{'k hi':>7}{'q̂ hi':>7}{'k̂ hi':>7}"
        f"  fitted taps of q (head mean)")
  for name, r in results.items():
    hi = {k: float(np.mean(v)) for k, v in r["high_band_fraction_per_head"].items()}
    taps = np.mean(r["fir_taps_q"], axis=0)
    print(f"{name:<20}{r['eval_accuracy']:>7.1%}{np.mean(r['stripe_score_per_head']):>8.3f}"
          f"{hi['q']:>7.3f}{hi['k']:>7.3f}{hi['q_hat']:>7.3f}{hi['k_hat']:>7.3f}  "
          + " ".join(f"{c:+.3f}" for c in taps))
  print(f"\nanalytic taps [{1 + gamma:+.3f} {-gamma:+.3f}]; gain at Nyquist "
        f"{20 * np.log10(1 + 2 * gamma):.2f} dB")
  print(f"wrote {out_dir / 'spectral_forensics.json'} and "
        + ", ".join(p.name for p in paths))
  return summary


if __name__ == "__main__":
  main()
