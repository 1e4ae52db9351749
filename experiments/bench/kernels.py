"""Fused attention kernels against cuDNN and XLA attention: TFLOP/s, forward and forward + backward.

    python -m momentum_jax.experiments.bench.kernels [--seq-lens 1024 2048 4096 8192 16384]
        [--tokens 16384] [--heads 16] [--head-dim 128] [--gamma 0.5] [--repeats 10] [--tiny]

Candidates, all bfloat16, causal, layout [B, T, N, H]:
  dispatch   momentum attention as a user calls it, ``momentum_attention(gamma=--gamma)`` with
             ``implementation=None``: on a GPU the shear as one XLA pass, then cuDNN
             (``momentum_jax.attention.dispatch``)
  momentum   our fused kernel with the momentum shear, ``flash_attention(gamma=--gamma)``
  plain      the same kernel without the shear, ``flash_attention(gamma=None)``
  cudnn      ``jax.nn.dot_product_attention(is_causal=True, implementation="cudnn")``
  xla        ``jax.nn.dot_product_attention(is_causal=True, implementation="xla")``
  lightning  our Lightning-2 kernel, ``lightning_attention_kernel`` (ALiBi decay, blocks of 64)
The batch is B = max(1, --tokens // T), so every T processes about the same number of tokens
(defaults: B = 16 at T = 1024 down to B = 1 at T = 16384; N = 16 heads of H = 128).

Method: each candidate is jitted, compiled and called once first; a candidate that fails to
compile on this backend (cuDNN without a GPU, a kernel without a lowering) or to run (out of
memory) is skipped from then on with its error printed. Then two warm-up calls each, and the
median of --repeats calls, each blocked until ready, the candidates interleaved call by call so
that background load falls on all alike (``experiments/bench/timing.py``). Forward + backward is
one jitted gradient of Σ out ⊙ cotangent w.r.t. q, k and v.

FLOP count (as in the FlashAttention benchmarks): causal softmax attention does two T×T×H
matmuls over half the score matrix, forward 4·B·N·T²·H / 2 FLOPs; the backward pass does 2.5×
that (five matmuls, the scores recomputed), so forward + backward counts 3.5× the forward.
TFLOP/s = FLOPs / median seconds; the shear costs O(T·H) and is not counted. Lightning does a
different computation (O(T) in T); it is compared by time: ``cudnn/lightning`` is cuDNN's median
time over lightning's (above 1: lightning is faster). ``momentum/cudnn`` is the ratio of TFLOP/s.

Hardware and runtime: the defaults are for one recent NVIDIA GPU (cuDNN flash attention needs
sm80+) and take a few minutes, most of it compilation and xla at T = 16384 (its T×T scores take
about 8 GiB per forward at B = 1). ``--tiny`` runs T = 64, B = 1, N = 2, H = 16 in seconds on the
CPU, where the kernels run in Pallas interpret mode and cuDNN is skipped: it checks that the
script works, its times mean nothing.

RESULT (one NVIDIA H200, jax 0.11.2, ``--seq-lens 1024 4096 8192``; TFLOP/s, lightning in ms):
      mode      T   B  momentum  plain  cudnn    xla  lightning ms  momentum/cudnn  cudnn/lightning
       fwd   1024  16     49.6   51.9  127.1   33.2         0.486           0.390            1.111
   fwd+bwd   1024  16     33.0   32.9  159.0   47.7         1.168           0.208            1.295
       fwd   4096   4     68.1   74.0  281.0   44.0         0.636           0.242            1.538
   fwd+bwd   4096   4     38.4   38.0  341.4   60.2         1.669           0.113            1.688
       fwd   8192   2     75.9   81.3  390.6   46.4         1.026           0.194            1.372
   fwd+bwd   8192   2     40.2   39.8  441.5   69.4         2.542           0.091            1.714
  The shear costs 0-8 % (momentum vs plain). The flash kernel is 2.6-5× slower than cuDNN forward
  and 5-11× forward + backward, and slower than XLA forward + backward, so implementation=None
  picks cuDNN (after the shear) wherever cuDNN supports the call (``attention/dispatch.py``; the
  ``dispatch`` column, added after this run, measures that route). Lightning is 1.1-1.7× faster than cuDNN at these
  lengths. At T = 16384 XLA's attention ran out of GPU memory (40 GiB asked for its T×T scores).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from momentum_jax.experiments.bench.timing import (
    attention_grad_step, attention_inputs, interleaved_medians,
)
from momentum_jax.attention import momentum_attention
from momentum_jax.kernels.lightning import lightning_attention_kernel

SOFTMAX = ("dispatch", "momentum", "plain", "cudnn", "xla")
CANDIDATES = (*SOFTMAX, "lightning")
MODES = ("fwd", "fwd+bwd")
BACKWARD_FLOPS = 2.5


def causal_attention_flops(batch: int, heads: int, seq_len: int, head_dim: int,
                           mode: str) -> float:
  """FLOPs of causal softmax attention: 4·B·N·T²·H / 2 forward, 3.5× that forward + backward."""
  forward = 4.0 * batch * heads * seq_len**2 * head_dim / 2
  return forward * (1.0 + BACKWARD_FLOPS if mode == "fwd+bwd" else 1.0)


def _candidate(name: str, gamma: float) -> Callable[..., jax.Array]:
  if name in ("cudnn", "xla"):
    return functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation=name)
  if name == "lightning":
    return lightning_attention_kernel
  if name == "dispatch":
    return functools.partial(momentum_attention, gamma=gamma, rope=False, causal=True)
  from momentum_jax.kernels.flash_attention import flash_attention
  return functools.partial(flash_attention, causal=True,
                           gamma=gamma if name == "momentum" else None)


def compile_step(name: str, mode: str, gamma: float, args: tuple[jax.Array, ...]):
  """The compiled forward (``fwd``) or gradient (``fwd+bwd``) of candidate ``name`` on ``args``
  = (q, k, v, cotangent)."""
  attend = _candidate(name, gamma)
  if mode == "fwd":
    return functools.partial(jax.jit(attend).lower(*args[:3]).compile(), *args[:3])
  return functools.partial(attention_grad_step(attend).lower(*args).compile(), *args)


def compiled_candidates(mode: str, gamma: float, args: tuple[jax.Array, ...],
                        skipped: dict[str, str]) -> dict[str, Callable[[], jax.Array]]:
  """The compiled call of every candidate not in ``skipped`` that compiles and runs once on
  ``args``; the others are added to ``skipped`` with their error (for every later T too)."""
  calls = {}
  for name in CANDIDATES:
    if name in skipped:
      continue
    try:
      call = compile_step(name, mode, gamma, args)
      jax.block_until_ready(call())  # a failure at run time (out of memory) shows here
      calls[name] = call
    except Exception as error:  # no implementation on this backend, or too big: report, go on
      skipped[name] = f"{type(error).__name__}: {(str(error) or '-').splitlines()[0]}"
      print(f"skipped {name}: {skipped[name]}", flush=True)
  return calls


def bench(seq_len: int, batch: int, heads: int, head_dim: int, gamma: float, repeats: int,
          skipped: dict[str, str]) -> dict[str, dict]:
  """Median seconds, TFLOP/s and the ratios of every candidate not in ``skipped`` at one T, per
  mode; candidates that fail to compile or to run are added to ``skipped`` (for this and every
  later T) with their error."""
  args = tuple(x.astype(jnp.bfloat16)
               for x in attention_inputs(seq_len, batch, heads, head_dim, std=0.25))
  result = {}
  for mode in MODES:
    calls = compiled_candidates(mode, gamma, args, skipped)
    seconds = interleaved_medians(calls, repeats, warmup=2)
    result[mode] = summarize(seconds, causal_attention_flops(batch, heads, seq_len, head_dim, mode))
  return result


def summarize(seconds: dict[str, float], flops: float) -> dict:
  """A result row from median seconds per candidate: TFLOP/s of the softmax candidates,
  ``dispatch/cudnn`` and ``momentum/cudnn`` (ratios of TFLOP/s) and ``cudnn/lightning`` (ratio of
  times) where both candidates of a ratio were measured."""
  row = {"seconds": seconds,
         "tflops": {name: flops / seconds[name] / 1e12 for name in seconds if name in SOFTMAX}}
  for name in ("dispatch", "momentum"):
    if "cudnn" in seconds and name in seconds:
      row[f"{name}/cudnn"] = row["tflops"][name] / row["tflops"]["cudnn"]
  if "cudnn" in seconds and "lightning" in seconds:
    row["cudnn/lightning"] = seconds["cudnn"] / seconds["lightning"]
  return row


def _cell(value: float | None, width: int, fmt: str) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"


def format_row(seq_len: int, batch: int, mode: str, row: dict) -> str:
  """One printed line: mode, T, B, TFLOP/s per softmax candidate, lightning ms, the ratios."""
  lightning = row["seconds"].get("lightning")
  return (f"{mode:>8}{seq_len:>7}{batch:>4}"
          + "".join(_cell(row["tflops"].get(name), 10, ".4g") for name in SOFTMAX)
          + _cell(None if lightning is None else 1e3 * lightning, 14, ".4g")
          + _cell(row.get("dispatch/cudnn"), 16, ".3f")
          + _cell(row.get("momentum/cudnn"), 16, ".3f")
          + _cell(row.get("cudnn/lightning"), 17, ".3f"))


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq-lens", type=int, nargs="+",
                      default=[1024, 2048, 4096, 8192, 16384])
  parser.add_argument("--tokens", type=int, default=16384)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--head-dim", type=int, default=128)
  parser.add_argument("--gamma", type=float, default=0.5)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--tiny", action="store_true",
                      help="T = 64, B = 1, N = 2, H = 16, 1 repeat: a CPU check of the script")
  args = parser.parse_args(argv)
  if args.tiny:
    args.seq_lens, args.tokens, args.heads, args.head_dim, args.repeats = [64], 64, 2, 16, 1

  print(f"bfloat16 causal, N={args.heads} H={args.head_dim}, B = max(1, {args.tokens} // T), "
        f"gamma={args.gamma}, median of {args.repeats} after 2 warm-up calls, "
        f"backend={jax.default_backend()}; TFLOP/s for {', '.join(SOFTMAX)}", flush=True)
  print(f"{'mode':>8}{'T':>7}{'B':>4}" + "".join(f"{name:>10}" for name in SOFTMAX)
        + f"{'lightning ms':>14}{'dispatch/cudnn':>16}{'momentum/cudnn':>16}"
        f"{'cudnn/lightning':>17}", flush=True)
  skipped: dict[str, str] = {}
  results: dict[str, dict] = {mode: {} for mode in MODES}
  for seq_len in args.seq_lens:
    batch = max(1, args.tokens // seq_len)
    rows = bench(seq_len, batch, args.heads, args.head_dim, args.gamma, args.repeats, skipped)
    for mode, row in rows.items():
      results[mode][seq_len] = {"batch": batch, **row}
      print(format_row(seq_len, batch, mode, row), flush=True)
  return {"results": results, "skipped": skipped}


if __name__ == "__main__":
  main()
