"""Benchmarks, each timing its candidates against a baseline measured in the same run
(``python -m momentum_jax.experiments.bench.<name>``): ``attention``, momentum attention and the
bare shear against ``jax.nn.dot_product_attention`` (with and without RoPE); ``flex_attention``,
block-sparse ``flex_attention`` (causal, sliding window) against dense causal attention, time and
compiled memory; ``kernels``, our Pallas flash kernel (with and without the shear) and Lightning-2
kernel against cuDNN and XLA attention in TFLOP/s (``--tiny`` on the CPU); ``linear_attention``,
``lightning_attention`` and ``linear_attention`` against dense causal attention, growth in T and
compiled memory; ``optimizers``, the update step of SPAM, Stable-SPAM, AM-AdamW and MKOR against
``optax.adamw``; ``train_step``, the NNX trainer's step and ``nnx.jit`` against the same
transformer written as pure pytrees. ``timing`` holds what they share: interleaved median timing
and the attention forward + backward steps.
"""
