"""momentum_jax: momentum in attention and in optimisation, in JAX/Flax.

Subpackages:
  attention   pure attention functions (softmax, momentum, KV-shift, EMA-of-values) and a registry
  nn          Flax NNX transformer whose attention variant is chosen by name
  data        synthetic tasks (induction, associative recall, repeated random tokens)
  train       jitted, mesh-aware training loop with orbax checkpoints
"""

__version__ = "0.1.0"
