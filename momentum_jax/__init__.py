"""momentum_jax: momentum in attention and in optimisation, in JAX/Flax.

Subpackages:
  core         shared bottom layer of every attention form: checks, masks, repeat_kv, segment
               runs, the momentum shear, block masks, ALiBi slopes, RoPE
  kernels      fused Pallas kernels (flash attention with the shear, Lightning-2); ``kernels/``
  attention    pure attention functions (softmax, momentum, KV-shift, linear, flex, ...), registry
  nn           Flax NNX transformer whose attention variant is chosen by name, its layers, ``Dense``
  optim        momentum optimisers as optax transforms (SPAM, Stable-SPAM, AM-AdamW, MKOR, teachers)
  analysis     head scores, sinks, interventions, reasoning metrics, spectral forensics
  data         synthetic tasks (induction, associative recall, Markov-Zipf, repeated random tokens);
               text sources, tokenisers and packing (the ``text`` extra)
  train        jitted, mesh-aware training loop with orbax checkpoints of one ``TrainState``;
               ``load_run`` reads a trained run back
  experiments  runnable experiments, one per claim, and the benchmarks (``bench``); ``experiments/``

``python -m momentum_jax.generate`` is the sampling command; in code, sample with the function
``momentum_jax.nn.generate`` from a model that ``momentum_jax.train.load_run`` reads. The core
install covers everything but the text pipeline (``pip install 'momentum_jax[text]'``) and
TensorBoard event files (``momentum_jax[tensorboard]``), which are imported where they are used.

Import layering (A ← B: B may import A, never the reverse):
  core ← kernels ← attention ← nn ← train ← experiments, generate
optim and data import no other subpackage (nn's EMA teacher uses optim, train uses both);
analysis reads attention weights and uses core. ``tests/test_layering.py`` enforces this.
"""

__version__ = "0.1.0"
