"""Decoding speed: one decode step against recomputing the full forward pass for one new token,
at a short and a long context, per attention variant.

    python -m momentum_jax.experiments.bench.decode [--contexts 256 4096] [--repeats 10]
        [--variants softmax momentum ...]

The model: 4 layers, d_model 256, 4 heads, MLP 1024, batch 1, float32. For each variant and
context C the cache holds C − 1 tokens (prefilled once), and the two candidates, timed side by
side (interleaved medians, jitted, blocked until ready), are

  decode    ``decode(model, one token, cache)``: the variant's decoding step (a K/V cache of C
            rows, or the O(1) state of linear / Lightning attention), or, for a variant without
            one (``decoding_form`` ``"recompute"``), the layer's attention over the C rows;
  recompute ``model(all C tokens)``: what a sampler without a cache does for each new token.

Every candidate of a variant is timed in one interleaved round. Printed: the form, seconds per new token, recompute / decode (the cache's speed-up), decode
tokens/s, and decode at the longest context / decode at the shortest (flat for a recurrent state,
linear in C for a cache).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import jax
from flax import nnx

from momentum_jax.experiments.bench.timing import interleaved_medians
from momentum_jax.nn import Transformer, TransformerConfig, decode, decoding_form, init_cache

VARIANT_PARAMS = {"momentum": {"gamma": 0.5}, "ema_value": {"eta": 0.5}}
VARIANTS = ("softmax", "momentum", "kv_shift", "ema_value", "linear", "lightning", "sigmoid")


def _candidates(config: TransformerConfig, context: int):
  """``{"decode": ..., "recompute": ...}`` zero-argument calls at ``context`` tokens, both pure
  ``jax.jit`` functions of the split model. The decode step donates its cache, as ``generate``
  does, so the new row is written in place; each call then rewinds the length by one, so every
  call decodes the last token at the same context."""
  graphdef, weights = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
  tokens = jax.random.randint(jax.random.key(1), (1, context), 0, config.vocab_size)
  step = jax.jit(lambda weights, tokens, cache: decode(nnx.merge(graphdef, weights), tokens,
                                                       cache), donate_argnums=2)
  _, cache = step(weights, tokens[:, :-1], init_cache(nnx.merge(graphdef, weights), 1, context))
  forward = jax.jit(lambda weights, tokens: nnx.merge(graphdef, weights)(tokens))
  last, held = tokens[:, -1:], {"cache": cache}

  def decode_last() -> jax.Array:
    logits, cache = step(weights, last, held["cache"])
    held["cache"] = cache._replace(length=cache.length - 1)
    return logits

  return {"decode": decode_last, "recompute": lambda: forward(weights, tokens)}


def main(argv: Sequence[str] | None = None) -> dict[str, dict[int, dict[str, float]]]:
  parser = argparse.ArgumentParser(prog="python -m momentum_jax.experiments.bench.decode",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--contexts", type=int, nargs="+", default=[256, 4096])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
  args = parser.parse_args(argv)
  base = TransformerConfig(vocab_size=256, context_len=max(args.contexts), num_layers=4,
                           d_model=256, num_heads=4, mlp_dim=1024)
  results: dict[str, dict[int, dict[str, float]]] = {}
  print(f"{jax.devices()[0].device_kind}: 4 layers, d_model 256, batch 1, median of "
        f"{args.repeats}")
  print(f"{'variant':<11}{'form':<10}{'context':>8}{'decode s':>11}{'recompute s':>13}"
        f"{'speed-up':>10}{'tokens/s':>10}{'vs shortest':>13}")
  for name in args.variants:
    config = dataclasses.replace(base, attention=name,
                                 attention_params=VARIANT_PARAMS.get(name, {}))
    # Every context's candidates in one interleaved round, each timed call after an untimed one
    # of its own (so a long recompute's memory traffic does not fall on the next decode step).
    calls = {(context, kind): call for context in args.contexts
             for kind, call in _candidates(config, context).items()}
    medians = interleaved_medians(calls, args.repeats, settle=True)
    for context in args.contexts:
      seconds = {kind: medians[(context, kind)] for kind in ("decode", "recompute")}
      results.setdefault(name, {})[context] = seconds
      growth = seconds["decode"] / results[name][args.contexts[0]]["decode"]
      print(f"{name:<11}{decoding_form(config):<10}{context:>8}{seconds['decode']:>11.5f}"
            f"{seconds['recompute']:>13.5f}{seconds['recompute'] / seconds['decode']:>10.1f}"
            f"{1 / seconds['decode']:>10.0f}{growth:>13.2f}")
  return results


if __name__ == "__main__":
  main()
