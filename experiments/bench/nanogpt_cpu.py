"""Training speed on the CPU: this library's trainer against a plain PyTorch GPT of nanoGPT's shape.

    python -m momentum_jax.experiments.bench.nanogpt_cpu [--steps 300] [--rounds 3] [--text FILE]
        [--quick]

Needs PyTorch, a dependency of this benchmark only (``pip install torch``; the CPU build is
enough). Both trainers run nanoGPT's documented CPU configuration (``shakespeare_char`` on a
laptop): 4 layers, 4 heads, d_model 128, context 64, batch 12, AdamW 1e-3 with β (0.9, 0.99),
weight decay 0.1 on the weight matrices, 100 warmup steps then cosine decay to 1e-4, gradient
clipping at 1.0, no dropout, on the UTF-8 bytes of one text file split 90/10 by position (default:
the King James Bible of the ``text`` extra, written out as one file).

- ``momentum_jax``: ``momentum_jax.train.train`` as a user calls it (softmax attention, RoPE,
  RMSNorm, GELU MLP 512, tied embeddings; packed rows of the token file, metrics every 50 steps).
- ``torch``: a GPT written here in plain PyTorch the way nanoGPT writes it (learned positions,
  LayerNorm, ``scaled_dot_product_attention``, GELU MLP 512, tied embeddings, no biases), trained
  by nanoGPT's loop: a random window per row from the memory-mapped train bytes, AdamW with the
  decay on parameters of two or more dimensions, the same schedule and clipping.

Method: each round trains each side for ``--steps`` steps in a fresh process, the two one after
the other, so that background load falls on both alike; tokens/s counts the steps after the first
(compilation, warm-up) by wall clock; peak resident memory is the process's ``VmHWM``. Prints each
round, the medians and the ratios momentum_jax ÷ torch.

XLA's CPU flags reach the workers through the environment: with YNNPACK off,
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` (Eigen runs the matrix products), this
configuration trained about 6 % faster here. The library sets no XLA flag itself (they are
process-wide).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

LAYERS, HEADS, D_MODEL, CONTEXT, BATCH = 4, 4, 128, 64, 12
MLP_DIM = 4 * D_MODEL
PEAK_LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0
VOCAB = 256  # UTF-8 bytes
SIDES = ("momentum_jax", "torch")


def peak_rss_mib() -> float:
  """This process's peak resident memory so far, in MiB (``VmHWM`` of ``/proc/self/status``)."""
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


def cosine_lr(step: int, total: int) -> float:
  """nanoGPT's ``get_lr``: linear warmup to the peak, then cosine decay to ``MIN_LR`` at
  ``total``."""
  if step < WARMUP:
    return PEAK_LR * (step + 1) / (WARMUP + 1)
  progress = min(1.0, (step - WARMUP) / max(1, total - WARMUP))
  return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * progress)) * (PEAK_LR - MIN_LR)


def run_momentum_jax(text: pathlib.Path, steps: int) -> dict[str, Any]:
  """Trains with ``momentum_jax.train.train``; tokens/s from the run's own throughput records,
  which start after the first (compiling) step."""
  import jax

  from momentum_jax.data import TextDataConfig, load_text_dataset
  from momentum_jax.nn import TransformerConfig
  from momentum_jax.train import TrainConfig, train

  with tempfile.TemporaryDirectory() as scratch:
    data = load_text_dataset(
        TextDataConfig(source=str(text), tokenizer="byte", seq_len=CONTEXT,
                       validation_fraction=0.1, split_by="position"),
        token_dir=pathlib.Path(scratch) / "tokens")
    model = TransformerConfig(vocab_size=data.vocab_size, context_len=CONTEXT,
                              num_layers=LAYERS, d_model=D_MODEL, num_heads=HEADS,
                              mlp_dim=MLP_DIM)
    log_every = min(50, steps)
    cfg = TrainConfig(steps=steps, batch_size=BATCH, learning_rate=PEAK_LR, optimizer="adamw",
                      b1=BETAS[0], b2=BETAS[1], weight_decay=WEIGHT_DECAY,
                      weight_decay_mask="matrices", warmup_steps=min(WARMUP, steps - 1),
                      lr_decay="cosine", min_lr_ratio=MIN_LR / PEAK_LR, grad_clip_norm=CLIP,
                      eval_every=0, eval_batches=1, checkpoint_every=0, log_every=log_every,
                      tensorboard=False)
    start = time.perf_counter()
    result = train(model, cfg, data, pathlib.Path(scratch) / "run", progress=False)
    wall = time.perf_counter() - start
  records = [r for r in result.history if "tokens_per_second" in r]
  # Tokens / seconds over the run after step 1: the first record's clock starts after step 1,
  # so it covers one step fewer than the others (log_every = 1: no record at step 1).
  steps_covered = [max(log_every - 1, 1)] + [log_every] * (len(records) - 1)
  tokens = BATCH * CONTEXT * sum(steps_covered)
  seconds = sum(n * BATCH * CONTEXT / r["tokens_per_second"]
                for n, r in zip(steps_covered, records))
  first = next(r for r in result.history if "compile_seconds" in r)
  return {"tokens_per_second": tokens / seconds, "peak_rss_mib": peak_rss_mib(),
          "final_train_loss": [r for r in result.history if "train_loss" in r][-1]["train_loss"],
          "parameters": int(sum(x.size for x in jax.tree.leaves(result.params))),
          "compile_seconds": first["compile_seconds"], "wall_seconds": wall}


def run_torch(text: pathlib.Path, steps: int) -> dict[str, Any]:
  """Trains the PyTorch GPT with nanoGPT's loop; tokens/s over the steps after the first."""
  import numpy as np
  import torch
  from torch import nn
  from torch.nn import functional as F

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln_1, self.ln_2 = nn.LayerNorm(D_MODEL, bias=False), nn.LayerNorm(D_MODEL, bias=False)
      self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL, bias=False)
      self.proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
      self.up = nn.Linear(D_MODEL, MLP_DIM, bias=False)
      self.down = nn.Linear(MLP_DIM, D_MODEL, bias=False)

    def forward(self, x_BxTxD):
      b, t, d = x_BxTxD.shape
      q, k, v = self.qkv(self.ln_1(x_BxTxD)).split(d, dim=2)
      heads = lambda x: x.view(b, t, HEADS, d // HEADS).transpose(1, 2)
      z = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
      x_BxTxD = x_BxTxD + self.proj(z.transpose(1, 2).reshape(b, t, d))
      return x_BxTxD + self.down(F.gelu(self.up(self.ln_2(x_BxTxD))))

  class GPT(nn.Module):
    def __init__(self):
      super().__init__()
      self.wte, self.wpe = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(CONTEXT, D_MODEL)
      self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
      self.ln_f = nn.LayerNorm(D_MODEL, bias=False)
      for module in self.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
          nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens_BxT, targets_BxT):
      x = self.wte(tokens_BxT) + self.wpe(torch.arange(tokens_BxT.shape[1]))
      for block in self.blocks:
        x = block(x)
      logits = self.ln_f(x) @ self.wte.weight.T  # tied embeddings
      return F.cross_entropy(logits.view(-1, VOCAB), targets_BxT.reshape(-1))

  torch.manual_seed(0)
  raw = np.frombuffer(text.read_bytes(), np.uint8)
  train_bytes = raw[: int(0.9 * len(raw))]
  rng = np.random.default_rng(0)

  def batch():
    starts = rng.integers(0, len(train_bytes) - CONTEXT - 1, BATCH)
    rows = np.stack([train_bytes[s:s + CONTEXT + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])

  model = GPT()
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=PEAK_LR, betas=BETAS)
  start, loss = None, None
  for step in range(steps):
    for group in optimizer.param_groups:
      group["lr"] = cosine_lr(step, steps)
    tokens, targets = batch()
    loss = model(tokens, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    optimizer.step()
    if step == 0:
      start = time.perf_counter()
  seconds = time.perf_counter() - start
  return {"tokens_per_second": (steps - 1) * BATCH * CONTEXT / seconds,
          "peak_rss_mib": peak_rss_mib(), "final_train_loss": float(loss),
          "parameters": sum(p.numel() for p in params), "threads": torch.get_num_threads()}


def _worker(side: str, text: pathlib.Path, steps: int) -> None:
  figures = (run_momentum_jax if side == "momentum_jax" else run_torch)(text, steps)
  print(json.dumps(figures))


def _in_a_process(side: str, text: pathlib.Path, steps: int) -> dict[str, Any]:
  command = [sys.executable, "-m", "momentum_jax.experiments.bench.nanogpt_cpu", "--worker", side,
             "--text", str(text), "--steps", str(steps)]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"the {side} worker failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _default_text(folder: pathlib.Path) -> pathlib.Path:
  """The King James Bible (the ``text`` extra's offline corpus) as one UTF-8 file."""
  from momentum_jax.data.text_sources import KJV_GROUP_BY, OFFLINE_CORPUS, read_documents
  path = folder / "kjv.txt"
  chapters = read_documents(OFFLINE_CORPUS, group_by=KJV_GROUP_BY)
  path.write_text("\n\n".join(chapters), encoding="utf-8")
  return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=300, help="steps per side per round")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
  parser.add_argument("--text", type=pathlib.Path, default=None,
                      help="a UTF-8 text file (default: the King James Bible)")
  parser.add_argument("--quick", action="store_true", help="a smoke run: 12 steps, 1 round")
  parser.add_argument("--sides", default=",".join(SIDES),
                      help="comma-separated, of momentum_jax and torch (default both)")
  parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  steps, rounds = (12, 1) if args.quick else (args.steps, args.rounds)
  if args.worker:
    _worker(args.worker, args.text, steps)
    return {}
  sides = [s for s in args.sides.split(",") if s]
  unknown = sorted(set(sides) - set(SIDES))
  if unknown or not sides:
    parser.error(f"--sides must name some of {list(SIDES)}, got {args.sides!r}")
  with tempfile.TemporaryDirectory() as scratch:
    text = args.text or _default_text(pathlib.Path(scratch))
    runs = {side: [] for side in sides}
    for round_index in range(rounds):
      for side in sides:
        figures = _in_a_process(side, text, steps)
        runs[side].append(figures)
        print(f"round {round_index + 1} {side:>12}: {figures['tokens_per_second']:8.0f} tokens/s"
              f", peak {figures['peak_rss_mib']:6.0f} MiB, loss {figures['final_train_loss']:.3f}"
              f", {figures['parameters']:,} parameters", flush=True)
  summary = {side: {"tokens_per_second": statistics.median(r["tokens_per_second"] for r in rs),
                    "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rs)}
             for side, rs in runs.items()}
  if len(sides) == 2:
    ours, theirs = summary["momentum_jax"], summary["torch"]
    summary["ratio"] = {
        "tokens_per_second": ours["tokens_per_second"] / theirs["tokens_per_second"],
        "peak_rss": ours["peak_rss_mib"] / theirs["peak_rss_mib"]}
    print(f"median over {rounds} round(s) of {steps} steps: momentum_jax "
          f"{ours['tokens_per_second']:.0f} tokens/s, torch {theirs['tokens_per_second']:.0f}: "
          f"{summary['ratio']['tokens_per_second']:.2f}x; peak memory "
          f"{ours['peak_rss_mib']:.0f} vs {theirs['peak_rss_mib']:.0f} MiB: "
          f"{summary['ratio']['peak_rss']:.2f}x")
  return {"steps": steps, "rounds": runs, "summary": summary}


if __name__ == "__main__":
  main()
