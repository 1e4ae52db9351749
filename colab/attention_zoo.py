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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/momentum-jax/momentum_jax/blob/main/colab/attention_zoo.ipynb)
#
# # The attention zoo
#
# `momentum_jax.attention` holds some twenty attention variants as pure functions in the layout
# of `jax.nn.dot_product_attention` (`[batch, time, heads, head_dim]`, grouped-query heads), each
# with a float32 reference of the same signature. This notebook visits
#
# 1. the registry that names them, and what a model reads from it;
# 2. FlexAttention: attention programmed by a `mask_mod` and a `score_mod`, with a block mask
#    that skips the tiles the mask hides;
# 3. the time and memory of linear attention against dense attention as the context grows;
# 4. the kernels, chosen by `implementation=`: cuDNN, the fused Pallas kernels, or plain XLA.
#
# It takes about 1.5 minutes on a 2-core CPU; on a GPU runtime section 4 runs the kernels natively.

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
import functools
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from momentum_jax.attention import (
    AttentionDims, available_attention, get_attention, momentum_attention,
    momentum_attention_reference, softmax_attention,
)
from momentum_jax.attention.dispatch import SoftmaxCall, softmax_route
from momentum_jax.attention.flex import flex_attention, flex_attention_reference
from momentum_jax.attention.flex_mods import (
    and_masks, causal_mask, segment_mask, sliding_window_mask, streaming_llm_mask,
)
from momentum_jax.attention.lightning import lightning_attention, lightning_attention_reference
from momentum_jax.attention.linear import linear_attention
from momentum_jax.core.alibi import alibi_slopes
from momentum_jax.core.block_mask import EMPTY, FULL, PARTIAL, create_block_mask
from momentum_jax.experiments.bench.timing import (
    attention_grad_step, attention_inputs, interleaved_medians)

MAP_LEN = 32  # tokens in the attention maps of section 1
FLEX_LEN, FLEX_BLOCK = (64, 16) if TINY else (512, 64)
SEQ_LENS = (64, 128) if TINY else (512, 1024, 2048, 4096, 8192, 16384)
DENSE_TIMED_UP_TO = 128 if TINY else 4096  # beyond it dense attention is compiled, not run
REPEATS = 1 if TINY else 3
KERNEL_LEN = 64 if TINY else 256

# %% [markdown]
# ## 1. The registry
#
# `available_attention()` lists the registered names; `get_attention(name)` returns an
# `AttentionVariant`: the fast function and its reference, the keyword parameters it takes, the
# ones a model learns (with their initialisers), the masking it supports, and its fast decoding
# form if it has one (a K/V cache or a recurrent state; other causal variants decode by
# recomputing the layer's attention over the tokens so far). A model config names a variant and
# fixes its parameters, e.g. `TransformerConfig(attention="momentum",
# attention_params={"gamma": 0.5})`; the model creates the learned ones itself.

# %%
print(f"{'variant':<26}{'parameters':<46}{'learned':<18}{'masking':<15}fast decoding")
for name in available_attention():
  v = get_attention(name)
  print(f"{name:<26}{', '.join(v.params) or '-':<46}{', '.join(v.learned) or '-':<18}"
        f"{v.masking:<15}{'yes' if v.decoding else '-'}")

# %% [markdown]
# Every variant takes the same call. Here five of them attend over the same random queries,
# keys and values; the reference returns its attention weights (`return_weights=True`), and the
# fast form agrees with it to float32 rounding. Learned parameters come from the variant's own
# initialisers, as in a freshly built model. Softmax rows sum to 1; sigmoid attention scores each
# key on its own; linear attention replaces exp(q·k) by a product of feature maps; Lightning
# attention is linear attention with an exponential decay over distance and no normalisation, so
# its weights are signed.

# %%
batch, heads, head_dim = 1, 2, 16
dims = AttentionDims(num_heads=heads, num_kv_heads=heads, head_dim=head_dim, context_len=MAP_LEN)
q, k, v = jax.random.normal(jax.random.key(0), (3, batch, MAP_LEN, heads, head_dim))
fixed = {"momentum": {"gamma": 0.5}}
shown = ("softmax", "momentum", "sigmoid", "linear", "lightning")
fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2))
for ax, name in zip(axes, shown):
  variant = get_attention(name)
  params = {**fixed.get(name, {}),
            **{p: init(dims, jax.random.key(1)) for p, init in variant.learned.items()}}
  out = variant.fn(q, k, v, **params)
  reference, _, weights = variant.reference(q, k, v, return_weights=True, **params)
  error = float(jnp.max(jnp.abs(out - reference)))
  ax.imshow(np.where(np.tri(MAP_LEN), weights[0, 0], np.nan), cmap="viridis")
  ax.set_title(f"{name}\n|fast − reference| ≤ {error:.0e}", fontsize=9)
  ax.set_xlabel("key")
axes[0].set_ylabel("query")
plt.show()

# %% [markdown]
# ## 2. FlexAttention: `mask_mod` and `score_mod`
#
# `flex_attention(q, k, v, mask_mod=..., score_mod=...)` is softmax attention programmed by two
# elementwise callables over index arrays (b batch, n head, t query, s key):
# `mask_mod(b, n, t, s) -> bool` says which keys a query sees, and
# `score_mod(score, b, n, t, s) -> score` edits the scaled logit. `create_block_mask` evaluates
# the mask once and classifies every `[block, block]` tile as empty, partial or full; the
# attention then never touches an empty tile and skips the mask on a full one. Ready-made mods
# sit beside hand-written ones: here a prefix-LM mask (the prompt sees itself both ways, the rest
# is causal), written as one line.

# %%
prefix = FLEX_LEN // 4
documents = jnp.repeat(jnp.arange(4), FLEX_LEN // 4)[None]  # four packed documents in one row
masks = {
    "causal": causal_mask,
    f"sliding window {FLEX_LEN // 8}": sliding_window_mask(FLEX_LEN // 8),
    "StreamingLLM, 4 sinks": streaming_llm_mask(4, FLEX_LEN // 8),
    f"prefix-LM, prefix {prefix}": lambda b, n, t, s: (s <= t) | (s < prefix),
    "documents ∧ causal": and_masks(segment_mask(documents), causal_mask),
}
t_idx, s_idx = jnp.arange(FLEX_LEN)[:, None], jnp.arange(FLEX_LEN)[None, :]
block_masks = {}
fig, axes = plt.subplots(2, len(masks), figsize=(3.2 * len(masks), 6.4))
for (name, mask_mod), (top, bottom) in zip(masks.items(), axes.T):
  block_masks[name] = create_block_mask(mask_mod, None, None, FLEX_LEN, FLEX_LEN, FLEX_BLOCK,
                                        FLEX_BLOCK)
  kinds = np.asarray(block_masks[name].kind_BxNxQxK[0, 0])
  top.imshow(np.asarray(mask_mod(0, 0, t_idx, s_idx)), cmap="Greys")
  top.set_title(name, fontsize=9)
  bottom.imshow(kinds, cmap="viridis", vmin=EMPTY, vmax=FULL)
  bottom.set_title(f"tiles computed: {np.mean(kinds != EMPTY):.0%}", fontsize=9)
axes[0, 0].set_ylabel("query (visible keys in black)")
axes[1, 0].set_ylabel(f"query block (empty {EMPTY}, partial {PARTIAL}, full {FULL})")
plt.show()

# %% [markdown]
# A `score_mod` sees the same indices. ALiBi subtracts a per-head slope times the distance; as a
# score_mod it is one line, and it must equal softmax attention with the same additive bias. The
# reference's weights show the recency the slopes impose, steeper in the first head.

# %%
heads = 4
q, k, v = jax.random.normal(jax.random.key(2), (3, 1, FLEX_LEN, heads, 32))
slopes = jnp.asarray(alibi_slopes(heads), jnp.float32)


def alibi(score, b, n, t, s):
  return score - slopes[n] * (t - s)


causal_blocks = block_masks["causal"]
out = flex_attention(q, k, v, score_mod=alibi, block_mask=causal_blocks)
bias = -slopes[:, None, None] * (t_idx - s_idx)  # [heads, T, S]
dense = softmax_attention(q, k, v, bias=bias[None])
print(f"flex with an ALiBi score_mod vs softmax with the ALiBi bias: max |Δ| = "
      f"{float(jnp.max(jnp.abs(out - dense))):.1e}")
_, _, weights = flex_attention_reference(q, k, v, score_mod=alibi, block_mask=causal_blocks,
                                         return_weights=True)
fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3.2))
for n, ax in enumerate(axes):
  ax.imshow(weights[0, n, :MAP_LEN, :MAP_LEN], cmap="viridis")
  ax.set_title(f"head {n}, slope {float(slopes[n]):.3g}", fontsize=9)
  ax.set_xlabel("key")
axes[0].set_ylabel("query")
plt.show()

# %% [markdown]
# ## 3. Linear against dense attention: time and memory
#
# Dense causal attention computes a T×T score matrix, forward and backward: time and memory
# grow as T². Linear attention (`linear_attention`, φ = elu + 1) and Lightning attention
# (`lightning_attention`, blocked with a decay) carry a `[head_dim, head_dim]` state through
# blocks of the sequence instead: time and memory grow as T. Each candidate below is one jitted
# forward + backward; the time is the median of a few interleaved calls (the candidates take
# turns, so background load falls on all alike, with the benchmark helpers of
# `momentum_jax.experiments.bench`), and the memory is XLA's compiled peak (arguments + outputs +
# temporaries). Dense attention is only compiled, not run, beyond `DENSE_TIMED_UP_TO` tokens.

# %%
candidates = {
    "dense (jax.nn.dot_product_attention)":
        lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
    "linear": functools.partial(linear_attention, block_size=64),
    "lightning": functools.partial(lightning_attention, block_size=64),
}
seconds = {name: {} for name in candidates}
peak_mib = {name: {} for name in candidates}
for seq_len in SEQ_LENS:
  args = attention_inputs(seq_len, 1, 8, 64, std=0.25)
  timed = {}
  for name, attend in candidates.items():
    compiled = attention_grad_step(attend).lower(*args).compile()
    stats = compiled.memory_analysis()
    peak_mib[name][seq_len] = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                               + stats.temp_size_in_bytes - stats.alias_size_in_bytes) / 2**20
    if not name.startswith("dense") or seq_len <= DENSE_TIMED_UP_TO:
      timed[name] = functools.partial(compiled, *args)
  for name, median in interleaved_medians(timed, REPEATS, warmup=1, settle=True).items():
    seconds[name][seq_len] = median
  print(f"T = {seq_len:>5}: " + ", ".join(
      f"{name.split()[0]} {1e3 * seconds[name][seq_len]:.1f} ms" for name in timed))

fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(12, 4))
for name in candidates:
  ax_time.plot(list(seconds[name]), [1e3 * s for s in seconds[name].values()], "o-", label=name)
  ax_memory.plot(list(peak_mib[name]), list(peak_mib[name].values()), "o-", label=name)
for ax, label in ((ax_time, "forward + backward (ms)"), (ax_memory, "compiled peak memory (MiB)")):
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("sequence length T")
  ax.set_ylabel(label)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
fig.suptitle(f"batch 1, 8 heads of 64, float32, backend {jax.default_backend()}")
plt.show()

# %% [markdown]
# Each doubling of T multiplies dense attention's time and memory by about four (quadratic) and
# those of linear and Lightning attention by about two; past a few thousand tokens the linear
# forms are tens of times faster and smaller.
# `python -m momentum_jax.experiments.bench.linear_attention` runs the same measurement to 65k
# tokens.

# %% [markdown]
# ## 4. Kernels: `implementation=`
#
# Every attention function with a kernel takes `implementation`: `None` (the fastest route the
# backend has for the call), `"xla"`, `"cudnn"`, `"pallas"` (our fused kernels: flash attention
# with the momentum shear inside, and blocked Lightning) or `"splash"` (JAX's TPU kernel). The
# choice for `None` is a pure function of the backend, the options, the shapes and the dtype,
# `softmax_route`, so it can be asked about any machine from this one:

# %%
calls = {
    "GPU, bfloat16, causal, head dim 128": SoftmaxCall("gpu", jnp.bfloat16, 128, 4096, 4096),
    "GPU, bfloat16, with attention sinks": SoftmaxCall("gpu", jnp.bfloat16, 128, 4096, 4096,
                                                       sinks=True),
    "GPU, float32": SoftmaxCall("gpu", jnp.float32, 128, 4096, 4096),
    "GPU, float32 with an additive bias": SoftmaxCall("gpu", jnp.float32, 128, 4096, 4096,
                                                      bias=True),
    "TPU, bfloat16, causal": SoftmaxCall("tpu", jnp.bfloat16, 128, 4096, 4096),
    "TPU, with attention sinks": SoftmaxCall("tpu", jnp.bfloat16, 128, 4096, 4096, sinks=True),
    "CPU": SoftmaxCall("cpu", jnp.float32, 64, 4096, 4096),
}
for label, call in calls.items():
  print(f"{label:<38} → {softmax_route(None, call)}")

# %% [markdown]
# Now on this runtime: momentum attention (γ = 0.5) and Lightning attention through each
# implementation, forward and gradient, against the float32 reference. Off the GPU, `"pallas"`
# runs the same kernels in Pallas interpret mode (slow, but the same program), and an
# implementation the backend lacks raises a `ValueError` that says why. On a Colab GPU runtime
# the same cell runs cuDNN and the kernels natively.

# %%
print("backend:", jax.default_backend())
q, k, v = jax.random.normal(jax.random.key(3), (3, 2, KERNEL_LEN, 4, 64), jnp.bfloat16)
references = {
    "momentum": momentum_attention_reference(q, k, v, gamma=0.5),
    "lightning": lightning_attention_reference(q, k, v, decay=0.1),
}
functions = {
    "momentum": functools.partial(momentum_attention, gamma=0.5),
    "lightning": functools.partial(lightning_attention, decay=0.1),
}
for name, attend in functions.items():
  for implementation in (None, "xla", "cudnn", "pallas"):
    run = jax.jit(jax.value_and_grad(
        lambda q, k, v: attend(q, k, v, implementation=implementation).astype(jnp.float32).sum()))
    label = f"{name}, implementation={implementation!r}"
    try:
      jax.block_until_ready(run(q, k, v))  # compile
    except ValueError as error:
      print(f"{label:<42} ValueError: {error}")
      continue
    start = time.perf_counter()
    jax.block_until_ready(run(q, k, v))
    elapsed = time.perf_counter() - start
    out = attend(q, k, v, implementation=implementation).astype(jnp.float32)
    reference = references[name].astype(jnp.float32)
    error = float(jnp.max(jnp.abs(out - reference)) / jnp.max(jnp.abs(reference)))
    print(f"{label:<42} forward + gradient {1e3 * elapsed:8.1f} ms, "
          f"max |out − reference| / max |reference| = {error:.1e}")

# %% [markdown]
# The outputs agree with the float32 reference to bfloat16 rounding (its unit roundoff is
# 2⁻⁸ ≈ 4e-3). The dispatch
# table and its footnotes are in `momentum_jax/attention/dispatch.py`;
# `python -m momentum_jax.experiments.bench.kernels` measures the kernels against cuDNN on a GPU,
# and `python -m momentum_jax.experiments.attention_zoo` trains every registered variant with one
# budget on associative recall and induction.
