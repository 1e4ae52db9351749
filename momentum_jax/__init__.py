"""momentum_jax: momentum in attention and in optimisation, in JAX/Flax.

Subpackages:
  core         shared bottom layer of every attention form: checks, masks, repeat_kv, segment
               runs, the momentum shear, block masks, ALiBi slopes, RoPE
  kernels      fused Pallas kernels (flash attention with the shear, Lightning-2); ``kernels/``
  attention    pure attention functions (softmax, momentum, KV-shift, linear, flex, ...), registry
  nn           Flax NNX transformer whose attention variant is chosen by name, its layers, ``Dense``
  optim        momentum optimisers as optax transforms (SPAM, Stable-SPAM, AM-AdamW, MKOR, teachers)
  analysis     head scores, sinks, interventions, reasoning metrics, spectral forensics
  data         synthetic tasks (induction, associative recall, Markov-Zipf, repeated random tokens)
  train        jitted, mesh-aware training loop with orbax checkpoints
  experiments  runnable experiments, one per claim, and the benchmarks (``bench``); ``experiments/``

Import layering (A ← B: B may import A, never the reverse):
  core ← kernels ← attention ← nn ← train ← experiments
optim and data import no other subpackage (nn's EMA teacher uses optim, train uses both);
analysis reads attention weights and uses core. ``tests/test_layering.py`` enforces this.
"""

__version__ = "0.1.0"
