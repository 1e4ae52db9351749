"""Benchmarks, each timing its candidates against a baseline measured in the same run
(``python -m momentum_jax.experiments.bench.<name>``): ``attention``, momentum attention and the
bare shear against ``jax.nn.dot_product_attention`` (with and without RoPE); ``flex_attention``,
block-sparse ``flex_attention`` (causal, sliding window) against dense causal attention, time and
compiled memory; ``kernels``, our Pallas flash kernel (with and without the shear) and Lightning-2
kernel against cuDNN and XLA attention in TFLOP/s (``--tiny`` on the CPU); ``linear_attention``,
``lightning_attention`` and ``linear_attention`` against dense causal attention, growth in T and
compiled memory; ``optimizers``, the update step of SPAM, Stable-SPAM, AM-AdamW and MKOR against
``optax.adamw``; ``train_step``, the NNX trainer's step and ``nnx.jit`` against the same
transformer written as pure pytrees; ``nanogpt_cpu``, this library's trainer against a plain
PyTorch GPT of nanoGPT's CPU configuration (tokens/s and peak memory, needs ``torch``);
``scan_layers``, compile time and compiled memory of scanned and rematerialised layers against
unrolled ones; ``streamed_tokens``, peak resident memory of token files by corpus size;
``gpu_acceptance``, the GPU acceptance run in one command: native kernel tests, dispatch routes,
attention against cuDNN and XLA timed from a profiler trace, the 125M preset's tokens/s and MFU,
decoding tokens/s (``--cpu-smoke`` on the CPU). ``timing`` holds what they share: interleaved
median timing and the attention forward + backward steps.
"""
