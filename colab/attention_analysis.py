# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/momentum-jax/momentum_jax/blob/main/colab/attention_analysis.ipynb)
#
# # Attention analysis: heads, sinks, interventions and the shear's spectrum
#
# `momentum_jax.analysis` works on arrays (attention maps, captured activations), so it applies
# to any model that can hand them over. Here they come from two small language models trained
# side by side, one with softmax attention and one with momentum attention (γ = 0.5), through
# the TransformerLens-style hooks of `momentum_jax.nn.Transformer`:
#
# 1. **head detection**: previous-token and induction heads, scored against a uniform head;
# 2. **attention sinks**: how much attention the first token collects, per layer and head;
# 3. **interventions** with `run_with_hooks`: removing the sink, ACT calibration of hidden sinks,
#    VAR redistribution of sink attention and BroadWay's edits of the maps across layers;
# 4. **spectral forensics**: a Bode plot of the momentum shear, analytic and fitted on the
#    model's own queries, and where the query and key energy sits in frequency.
#
# It takes about 3 minutes on a 2-core CPU, most of it training the two models.

# %%
# On Colab, install momentum_jax from its repository (with CUDA jax when a GPU is attached).
import shutil
import subprocess
import sys

if "google.colab" in sys.modules:
  extra = "[gpu]" if shutil.which("nvidia-smi") else ""
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  f"momentum_jax{extra} @ git+https://github.com/momentum-jax/momentum_jax"],
                 check=True)
else:
  print("Not on Colab: using the momentum_jax installed in this environment.")

# %% tags=["parameters"]
TINY = False  # True: a smoke-test size that runs in seconds (the notebook tests use it)

# %%
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import Image, display

from momentum_jax.analysis import (
    act_calibrate, act_sink_columns, band_energies, bode, detect_heads, fir_response,
    fit_causal_fir, pattern_score, plot_attention_patterns, plot_band_energies, plot_bode,
    plot_head_scores, plot_sink_heatmap, score_heads, shear_taps, sink_alpha, sink_rate,
    suppress_tokens, time_power_spectrum, uniform_weights, var_redistribute,
)
from momentum_jax.data import Batch, MarkovZipfLanguage, repeated_random_tokens
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, masked_cross_entropy, train

STEPS = 5 if TINY else 1000
BATCH = 4 if TINY else 32
D_MODEL = 16 if TINY else 64
PROBE_BATCH = 4 if TINY else 64
GAMMA = 0.5
figures = pathlib.Path(tempfile.mkdtemp())  # the analysis plots are PNG files; shown below

# %% [markdown]
# ## The models
#
# The language (`MarkovZipfLanguage`) is a Markov chain over 128 tokens whose rows are Zipf laws;
# every sequence of 64 tokens opens with a BOS token, and one span of 16 tokens in its second half
# repeats an earlier span. Most next tokens need only the current token; the repeat needs an
# induction head. So attention has work on some queries and none on others, the setting in which
# heads learn to park their attention on a sink (Gu et al., arXiv 2410.10781). Both models have 2
# layers of 4 heads and train with the same data, initialisation seed and budget through
# `momentum_jax.train.train`.

# %%
language = MarkovZipfLanguage(vocab_size=129, seq_len=64, zipf_exponent=1.2, copy_len=16,
                              bos=True)
BOS = language.vocab_size - 1
train_config = TrainConfig(steps=STEPS, batch_size=BATCH, learning_rate=3e-3, eval_every=0,
                           log_every=50, tensorboard=False)
models = {}
for name, attention, params in (("softmax", "softmax", {}),
                                ("momentum", "momentum", {"gamma": GAMMA})):
  config = TransformerConfig(vocab_size=language.vocab_size, context_len=language.seq_len,
                             num_layers=2, d_model=D_MODEL, num_heads=4, mlp_dim=4 * D_MODEL,
                             attention=attention, attention_params=params)
  with tempfile.TemporaryDirectory() as workdir:
    result = train(config, train_config, language, workdir, progress=not TINY)
  models[name] = result.model
  print(f"{name:>8}: held-out loss {result.final_eval['loss']:.3f} nats "
        f"(the chain's entropy rate, the best loss without the repeat: "
        f"{language.entropy_rate():.3f})")
PATTERNS = [f"blocks.{layer}.attn.hook_pattern" for layer in range(2)]

# %% [markdown]
# ## 1. Which heads are previous-token and induction heads?
#
# The probe is the standard one: BOS, then 24 random tokens repeated twice. On the second copy an
# induction head attends to the token *after* the earlier occurrence of the current token, and a
# prefix-matching head to that earlier occurrence. `score_heads` measures the share of each
# head's attention that falls on such a pattern (previous-token, duplicate-token, induction,
# prefix matching); `detect_heads` lists the heads whose score is at least 0.05 and at least 3
# times what a head attending uniformly to its past scores on the same tokens.

# %%
repeat_len = 24
probe = jnp.concatenate(
    [jnp.full((PROBE_BATCH, 1), BOS, jnp.int32),
     repeated_random_tokens(jax.random.key(1), PROBE_BATCH, repeat_len, language.chain_size)],
    axis=1)
for name, model in models.items():
  _, cache = model.run_with_cache(probe, names_filter=PATTERNS)
  found = detect_heads(cache, probe, 0.05, min_lift=3.0, repeat_len=repeat_len, offset=1)
  print(f"{name:>8}:", ", ".join(f"L{h.layer}H{h.head} {h.kind} {h.score:.2f} ({h.lift:.0f}×)"
                                 for h in found) or "no head above the thresholds")
  induction_LxN = np.stack([np.asarray(score_heads(cache[p], probe)["induction"].mean(0))
                            for p in PATTERNS])
  display(Image(plot_head_scores(induction_LxN, figures / f"induction_{name}.png",
                                 title=f"{name}: induction score", label="induction score")))

# %% [markdown]
# Induction takes far longer than this budget to form on this language; what the scores show is
# how far each model got. Any pattern can be scored the same way: `pattern_score` takes a `[T, S]`
# mask of the keys a head of some kind would attend to. The identity marks the current token, and
# on held-out sequences most of the first layer's attention sits there, far above a uniform
# head's share.

# %%
held_out = language.sample(jax.random.key(2), PROBE_BATCH)
current_token = jnp.eye(language.seq_len)
chance = float(pattern_score(uniform_weights(PROBE_BATCH, language.seq_len), current_token).mean())
for name, model in models.items():
  _, cache = model.run_with_cache(held_out.tokens, names_filter=PATTERNS)
  scores = pattern_score(cache[PATTERNS[0]], current_token).mean(0)
  print(f"{name:>8}: layer 0 attention on the current token, per head",
        np.round(np.asarray(scores), 2), f"(uniform head: {chance:.2f})")

# %% [markdown]
# ## 2. Attention sinks
#
# The sink score α₁ of a head is the mean attention its queries put on the first token; Sink₁ is
# the percentage of (sequence, layer, head) with α₁ > 0.3. On held-out sequences of the language:

# %%
for name, model in models.items():
  _, cache = model.run_with_cache(held_out.tokens, names_filter=PATTERNS)
  alpha_LxBxNxT = jnp.stack([sink_alpha(cache[p]) for p in PATTERNS])
  print(f"{name:>8}: Sink₁ = {float(sink_rate(alpha_LxBxNxT, 0.3)[0]):.0f} %")
  display(Image(plot_sink_heatmap(alpha_LxBxNxT[..., 0].mean(1), figures / f"sink_{name}.png",
                                  title=f"{name}: attention on the first token")))
_, cache = models["softmax"].run_with_cache(held_out.tokens, names_filter=PATTERNS)
display(Image(plot_attention_patterns(
    np.stack([cache[p][0] for p in PATTERNS]), figures / "patterns_softmax.png",
    title="softmax model, one held-out sequence")))

# %% [markdown]
# In both models the first layer attends mostly to the current token (the diagonal). The second
# layer's heads park nearly all the attention of the first half's queries on the BOS token (the
# column at key 0): the repeat starts in the second half, so there they have nothing to look
# for. In the second half they look back over earlier tokens instead.

# %% [markdown]
# ## 3. Interventions through `run_with_hooks`
#
# `model.run_with_hooks(tokens, fwd_hooks=[(name, fn)])` replaces the activation `name` by
# `fn(activation, name)` during the forward pass; editing `hook_pattern` changes what each head
# reads. The functions of `momentum_jax.analysis` edit attention maps:
#
# * **sink removal** (`suppress_tokens`): zero the BOS column and renormalise the rows, to see
#   what the sink does;
# * **ACT** (Yu et al., arXiv 2406.15765, `act_calibrate`): scale *hidden* sinks — columns other
#   than the first that collect more than 0.1 of the attention on average — by β = 0.4 and give
#   the freed attention to the other keys;
# * **VAR** (Kang et al., arXiv 2503.03321, `var_redistribute`): in the rows that attend enough to
#   a target set, take 40 % of the sink's attention and hand it to the targets. On the
#   repeated-token probe the targets are the first copy and the edited rows the second copy, so
#   the BOS sink's attention goes where an induction head should look.
#
# Each edit is applied in both layers; the loss is measured on held-out sequences of the language
# (sink removal, ACT) and on the second copy of the probe (VAR).

# %%
bos_column = jnp.arange(language.seq_len) == 0
positions = jnp.arange(probe.shape[1])
first_copy = (positions >= 1) & (positions <= repeat_len)
second_copy = positions > repeat_len
interventions = {
    "none": None,
    "sink removal": lambda pattern, name: suppress_tokens(pattern, bos_column),
    "ACT": lambda pattern, name: act_calibrate(pattern),
}


def loss_with(model, batch, edit):
  hooks = [] if edit is None else [(p, edit) for p in PATTERNS]
  return float(masked_cross_entropy(model.run_with_hooks(batch.tokens, fwd_hooks=hooks), batch))


# On the probe, the loss counts the predictions the first copy determines.
predicted = second_copy & (positions < probe.shape[1] - 1)
probe_batch = Batch(probe, jnp.roll(probe, -1, axis=1),
                    jnp.broadcast_to(predicted, probe.shape).astype(jnp.float32))
var_edit = lambda pattern, name: var_redistribute(pattern, positions == 0, first_copy,
                                                  query_mask=second_copy)
print(f"{'intervention':<14}" + "".join(f"{name:>12}" for name in models) + "   (loss, nats)")
for label, edit in interventions.items():
  print(f"{label:<14}" + "".join(f"{loss_with(m, held_out, edit):>12.3f}"
                                 for m in models.values()))
for label, edit in (("probe, none", None), ("probe, VAR", var_edit)):
  print(f"{label:<14}" + "".join(f"{loss_with(m, probe_batch, edit):>12.3f}"
                                 for m in models.values()))
for name, model in models.items():
  _, cache = model.run_with_cache(held_out.tokens, names_filter=PATTERNS)
  hidden = [int(act_sink_columns(cache[p]).any(axis=(0, 1)).sum()) for p in PATTERNS]
  print(f"{name}: keys ACT flags as hidden sinks, per layer: {hidden}")

# %% [markdown]
# Removing the sink costs loss: the heads that parked on BOS now spread that attention over
# tokens they were ignoring, so the sink is how they do nothing. ACT's edit is mild by design
# (it keeps the first-token sink and scales the others by 0.4); whether it helps is a property of
# the model, and these small models do not gain from it. VAR moves some of the sink's attention
# onto the first copy; the change of the loss on the second copy measures how much the heads it
# edits could use that attention.

# %% [markdown]
# **BroadWay** (Bu et al., arXiv 2410.06241) edits the temporal attention maps of a video model's
# blocks in two ways. *Temporal self-guidance* pulls each block's map toward a reference block's,
# A' = A + α (R − A), so the disparity between blocks shrinks by 1 − α. *Fourier-based motion
# enhancement* multiplies the components of each row above a cut-off frequency along the key
# axis by β, which raises their energy β²-fold, and keeps rows on the simplex. Here the key axis
# of a language model's map plays time (keys the causal mask hides receive nothing).
# `broadway_hooks` applies both in one pass of `run_with_hooks`, layer 0 guiding layer 1, with the
# authors' AnimateDiff setting α = 0.6, β = 1.5 and every non-constant component amplified.

# %%
from momentum_jax.analysis.interventions import (
    broadway_hooks, fourier_motion_enhance, map_band_energies, temporal_self_guidance,
)

broadway_edit = broadway_hooks([0, 1], reference_layer=0, alpha=0.6, beta=1.5, cutoff=0)
for name, model in models.items():
  _, cache = model.run_with_cache(held_out.tokens, names_filter=PATTERNS)
  layer0, layer1 = (cache[p] for p in PATTERNS)
  disparity = float(jnp.linalg.norm(layer1 - layer0))
  guided = float(jnp.linalg.norm(temporal_self_guidance(layer1, layer0, 0.6) - layer0))
  high = float(map_band_energies(layer1, 0).high.mean())
  enhanced = float(map_band_energies(fourier_motion_enhance(layer1, 1.5, 0), 0).high.mean())
  logits = model.run_with_hooks(held_out.tokens, fwd_hooks=broadway_edit)
  print(f"{name:>8}: ‖A₁ − A₀‖ {disparity:.2f} → {guided:.2f} guided; layer 1's energy above "
        f"DC {high:.4f} → {enhanced:.4f} enhanced; loss "
        f"{loss_with(model, held_out, None):.3f} → "
        f"{float(masked_cross_entropy(logits, held_out)):.3f} nats with both")

# %% [markdown]
# Guidance divides the distance between the two layers' maps by 1 − α = 0.4 exactly.
# Enhancement adds far less than β² = 2.25 times the energy above DC: with the cut-off at 0 it is
# A ↦ βA − (β − 1)/S on each row, a sharpening whose weights below (β − 1)/(βS) turn negative and
# are clipped, and a row on a single key, like the sink rows of layer 1, is left as it is. Both
# edits together cost loss: these models' layers do different jobs (the current token, then the
# sink) and nothing asks them to agree, whereas the blocks of a video model should agree about
# the motion, where the authors find that guidance removes flicker.

# %% [markdown]
# ## 4. The shear in the frequency domain
#
# Momentum attention shears queries and keys after RoPE, `q̂_t = (1 + γ) q_t − γ q_{t−1}`: a
# causal filter with taps `[1 + γ, −γ]` and frequency response `H(ω) = 1 + γ(1 − e^{−iω})`.
# `bode` gives its magnitude and phase; `fit_causal_fir` fits a 4-tap causal filter from the
# model's captured queries before the shear (`hook_rot_q`) to those after it (`hook_q_shear`), so
# it reads the filter the model applies off its activations. With `normalize_gain=True` the shear
# is divided by its RMS gain √(1 + 2γ(1 + γ)).

# %%
hooks = ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_q_shear",
         "blocks.0.attn.hook_rot_k", "blocks.0.attn.hook_k_shear"]
_, cache = models["momentum"].run_with_cache(held_out.tokens, names_filter=hooks)
rot_q, q_hat, rot_k, k_hat = (cache[h] for h in hooks)
fit = fit_causal_fir(rot_q, q_hat, 4)
print("fitted taps per head:\n", np.round(np.asarray(fit.taps_NxJ), 3))
analytic = bode(shear_taps(GAMMA))
responses = {
    f"shear γ = {GAMMA}": analytic.response_W,
    "fitted on the model's q → q̂ (head mean)": fir_response(fit.taps_NxJ.mean(0),
                                                           analytic.omega_W),
    f"gain-normalised shear γ = {GAMMA}": analytic.response_W
                                          / np.sqrt(1 + 2 * GAMMA * (1 + GAMMA)),
    "shear γ = 1": bode(shear_taps(1.0)).response_W,
}
display(Image(plot_bode(analytic.omega_W, responses, figures / "bode.png",
                        title="momentum shear: Bode plot")))

# %% [markdown]
# The fit recovers `[1 + γ, −γ, 0, 0]` in every head: the model applies exactly this high-pass
# filter, 0 dB at DC and 20·log10(1 + 2γ) at the Nyquist frequency (6 dB for γ = 0.5, 9.5 dB for
# γ = 1); gain normalisation shifts the curve down by its RMS gain. What the filter acts on is
# the learned queries and keys: below, the share of their energy along time above ω = π/4, per
# model, before the shear and, for the momentum model, after it.

# %%
cutoff = np.pi / 4
labels, low, high = [], [], []
for name, model in models.items():
  names = ["blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k"]
  if name == "momentum":
    names += ["blocks.0.attn.hook_q_shear", "blocks.0.attn.hook_k_shear"]
  _, cache = model.run_with_cache(held_out.tokens, names_filter=names)
  for hook in names:
    energies = band_energies(time_power_spectrum(cache[hook]), cutoff)
    labels.append(f"{name} {hook.split('hook_')[1]}")
    low.append(float(energies.low.sum()))
    high.append(float(energies.high.sum()))
display(Image(plot_band_energies(labels, np.array(low), np.array(high), figures / "bands.png",
                                 title="layer 0 queries and keys: energy below / above ω = π/4")))

# %% [markdown]
# The `spectral_forensics`, `head_detection` and `sink_emergence` experiments
# (`python -m momentum_jax.experiments.<name>`) run these analyses at full length on the
# single-layer induction models and on softmax against sigmoid attention.
