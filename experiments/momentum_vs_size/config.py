"""Is a momentum-attention model worth a larger softmax model? (Maitra, arXiv 2602.04902.)

Claim under test: momentum and size are fungible: a 125M momentum model tracks a 350M softmax
baseline within ~2.9 % validation loss.

Data: as ``text_lm``: the King James Bible (offline), one document per chapter, every 20th
chapter held out, UTF-8 bytes packed into rows of 256 with segment ids.

Models, one token budget (AdamW 3e-3, b2 0.95, weight decay 0.1, 50 warmup steps, gradient clip
1, batch 16 × 256 bytes, 300 steps ≈ 1.2M bytes), RoPE, GELU MLP 4·d, 4 heads:
  - momentum_S:    4 layers, d_model 128, momentum attention γ = 0.25 (the best γ of the
                   ``text_lm`` grid; chosen there, on the same held-out text): 0.82M parameters;
  - softmax_1x:    the same shape with softmax attention;
  - softmax_2x:    5 layers, d_model 160: 1.58M parameters (1.9×);
  - softmax_2.8x:  6 layers, d_model 176: 2.27M parameters (2.8×, the paper's 350M / 125M).
Reported: held-out loss (nats/byte) and bits per byte on 8 validation batches, and for each
baseline the gap (momentum − baseline) / baseline in percent: negative means momentum is better;
beside each model's loss, the in-context evaluation of ``text_lm`` (repeated-segment losses and
the ICL score of Olsson et al.), which the RESULT below predates (a rerun computes it from the
saved models without retraining). The paper's "exceeds expectations on induction-heavy tasks"
for its 125M model is tested by comparing momentum_S's numbers with the baselines'.

Command:   python -m momentum_jax.experiments.momentum_vs_size
           (--quick: a <1 minute smoke run into runs/momentum_vs_size/quick; --preset gpu_350m:
           the GPU / TPU configuration below; a rerun resumes or skips finished models,
           --fresh retrains)
Hardware:  CPU (2 cores), float32.
Runtime:   27.6 min wall (1658 s: 335, 347, 434 and 541 s per model) on a 2-core CPU shared
           with another job for its first half; --quick: 17 s wall on a quiet 2-core CPU, before the
           in-context evaluation (about 1 s more per model, mostly compiling).

RESULT (CPU, 2 cores, default config, seed 0, jax 0.10.2; held-out = the first 8 validation
batches, 32,768 bytes):
  model          parameters   loss    bits/byte   gap = momentum − baseline
  momentum_S        820,352   1.455     2.100
  softmax_1x        820,352   1.450     2.091     +0.006 nats (+0.39 %)
  softmax_2x      1,578,720   1.407     2.030     +0.048 nats (+3.42 %)
  softmax_2.8x    2,277,616   1.396     2.013     +0.060 nats (+4.28 %)
  Not reproduced at this scale: the momentum model does not even match the softmax model of its
  own size (+0.39 %), let alone one 2.8× larger (+4.28 % where the paper reports within
  2.9 %); size buys 3-4 % here and momentum buys nothing. The budget (1.2M bytes, 0.3 epoch,
  300 steps) is far from the paper's regime, and text_lm saw momentum's gap to softmax shrink
  with training (γ = 0.25: +0.039 bits/byte at 200 steps, +0.009 at 300), so the comparison
  that tests the claim is the GPU preset below. One seed; the 1× gap (0.006 nats) is within
  what another seed could move.

GPU / TPU configuration (``--preset gpu_350m``, not run here: no accelerator was available when
it was written): the ``text_lm`` ``gpu_125m`` data and budget (tensorflow-datasets ``lm1b``,
50,304-id byte-level BPE, context 1024, bfloat16 compute, AdamW 6e-4 with 500 warmup steps then
cosine decay to 6e-5, weight decay 0.1 on the matrices only, 4,000 steps of 512 × 1024 tokens
≈ 2.1B tokens) for a GPT-2-small-shaped momentum model (12 layers, d_model
768, 12 heads: 123.6M parameters, γ = 0.25) and softmax models of 123.6M (the same shape),
253M (16 layers, d_model 1024, 16 heads: 2.0×) and 353M (24 layers, d_model 1024, the GPT-2
medium shape: 2.9×) parameters. At 40 % MFU on one H200 (989 TFLOP/s dense bfloat16) the four
models take about 76, 76, 150 and 205 minutes. As in that preset, lm1b's sentences never reach
position 1023, so the ICL score is None and the repeated-segment losses carry the in-context
comparison.
"""

from __future__ import annotations

import dataclasses

from momentum_jax.data import TextDataConfig
from momentum_jax.experiments.text_lm.config import ExperimentConfig, gpu_125m_config
from momentum_jax.nn import TransformerConfig
from momentum_jax.train import TrainConfig

MOMENTUM = "momentum_S"
GAMMA = 0.25
# The paper's figure: its momentum model is within this relative loss gap of the 2.8× baseline.
PAPER_GAP = 0.029


def _models(small: TransformerConfig, larger: dict[str, tuple[int, int, int]]
            ) -> tuple[tuple[str, TransformerConfig], ...]:
  """The momentum model at ``small``'s shape, then softmax at that shape and at each
  ``{name: (layers, d_model, heads)}`` of ``larger``."""
  models = [(MOMENTUM, dataclasses.replace(small, attention="momentum",
                                           attention_params={"gamma": GAMMA})),
            ("softmax_1x", small)]
  models += [(name, dataclasses.replace(small, num_layers=layers, d_model=d_model,
                                        num_heads=heads, num_kv_heads=heads,
                                        head_dim=d_model // heads, mlp_dim=4 * d_model))
             for name, (layers, d_model, heads) in larger.items()]
  return tuple(models)


def get_config(quick: bool = False) -> ExperimentConfig:
  """The default (CPU, about half an hour) or the ``--quick`` smoke configuration."""
  seq_len, steps, batch_size = (32, 12, 8) if quick else (256, 300, 16)
  data = TextDataConfig(source="kjv", tokenizer="byte", seq_len=seq_len,
                        validation_fraction=0.05)
  if quick:
    small = TransformerConfig(vocab_size=256, context_len=seq_len, num_layers=1, d_model=32,
                              num_heads=2, mlp_dim=128)
    larger = {"softmax_2x": (2, 32, 2), "softmax_2.8x": (2, 40, 2)}
  else:
    small = TransformerConfig(vocab_size=256, context_len=seq_len, num_layers=4, d_model=128,
                              num_heads=4, mlp_dim=512)
    larger = {"softmax_2x": (5, 160, 4), "softmax_2.8x": (6, 176, 4)}
  train = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=3e-3, optimizer="adamw",
                      b2=0.95, weight_decay=0.1, warmup_steps=5 if quick else 50,
                      grad_clip_norm=1.0, eval_every=0 if quick else 100,
                      eval_batches=2 if quick else 8, checkpoint_every=0 if quick else 100,
                      log_every=2 if quick else 10, seed=0)
  return ExperimentConfig(data=data, train=train, models=_models(small, larger))


def gpu_350m_config() -> ExperimentConfig:
  """The 125M-momentum-vs-350M-softmax GPU / TPU configuration of the module docstring."""
  base = gpu_125m_config()
  small = dict(base.models)["softmax"]
  larger = {"softmax_2x": (16, 1024, 16), "softmax_2.8x": (24, 1024, 16)}
  return dataclasses.replace(base, models=_models(small, larger))


PRESETS = {"gpu_350m": gpu_350m_config}
