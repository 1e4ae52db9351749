"""Flux layer routing at inference: prefill and decoding speed when half the layers run sliding-
window attention, against every layer full.

    python -m momentum_jax.experiments.bench.flux_routing [--tiny] [--repeats 5]

A softmax model with the flux router (``TransformerConfig.flux_router``, 8 layers, d_model 128,
4 heads, MLP 512, ``flux_window`` 256) decodes one sequence by the flux inference form
(``momentum_jax.nn.flux_router``): each layer's decision, made once from the prompt, picks a
K/V cache of the whole context (full) or a ring buffer of the window (sparse), and only that
branch is computed. The decisions are forced by the routers' biases (±1e4 on the sparse logit):

  full      every layer full attention (the baseline)
  half      the odd layers sparse, the even ones full (the issue's setting)
  sparse    every layer sparse (the bound on what routing can save)

and, beside them for decoding, the same model without the router: ``softmax`` (its own decoding
step over a K/V cache of ``max_len`` rows) and ``window`` (every layer a ``flux_window`` sliding
window, a ring buffer: what a sparse layer's step should cost). Two measurements, each a median of interleaved calls
(``experiments/bench/timing.py``): ``--repeats`` prefills, ten times as many decoding steps.

  prefill   the jitted first decoding call on an empty cache: the 4096-token prompt, every layer
            deciding and filling its cache (a sparse layer in chunks of the window, O(T · window);
            a full layer over the ``max_len`` cache, O(T · max_len)).
  decode    one jitted single-token step at context 4096 with the cache donated (written in
            place, as ``generate`` does), after the prefill; each call rewinds the length, so
            every call decodes the same row.

Speed-up is full / candidate. ``--tiny``: 2 layers, context 64, window 8, d_model 32, seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from momentum_jax.experiments.bench.timing import interleaved_medians
from momentum_jax.nn import Transformer, TransformerConfig, decode, init_cache

MODEL = dict(vocab_size=256, num_layers=8, d_model=128, num_heads=4, mlp_dim=512,
             attention="softmax")
FULL = {"context": 4096, "window": 256}
TINY = {"context": 64, "window": 8, "num_layers": 2, "d_model": 32, "num_heads": 2,
        "mlp_dim": 64}
ROUTINGS = ("full", "half", "sparse")


def _sparse_layers(routing: str, num_layers: int) -> list[bool]:
  """Which layers are routed to the window under ``routing``."""
  return [routing == "sparse" or (routing == "half" and layer % 2 == 1)
          for layer in range(num_layers)]


def _force(model: Transformer, sparse_layers: Sequence[bool]) -> None:
  """Sets each layer's router bias so that it chooses its entry of ``sparse_layers``."""
  for block, sparse in zip(model.blocks, sparse_layers):
    bias = block.attn.flux.proj.bias
    bias[...] = jnp.asarray([0.0, 1e4 if sparse else -1e4], bias[...].dtype)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prefill(graphdef: nnx.GraphDef, weights: nnx.State, prompt_1xT: jax.Array, max_len: int
             ) -> tuple[jax.Array, object]:
  """The first decoding call on an empty cache of ``max_len`` rows."""
  model = nnx.merge(graphdef, weights)
  return decode(model, prompt_1xT, init_cache(model, 1, max_len))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _step(graphdef: nnx.GraphDef, weights: nnx.State, tokens_1x1: jax.Array, cache: object
          ) -> tuple[jax.Array, object]:
  """A decoding step, the cache donated (written in place)."""
  return decode(nnx.merge(graphdef, weights), tokens_1x1, cache)


def _model(config: TransformerConfig, sparse_layers: Sequence[bool] | None
           ) -> tuple[nnx.GraphDef, nnx.State, jax.Array]:
  """``graphdef, weights`` of the model in evaluation mode, its routers forced to
  ``sparse_layers`` (None: no router), and ``[1, context + 1]`` tokens."""
  model = Transformer(config, rngs=nnx.Rngs(0))
  if sparse_layers is not None:
    _force(model, sparse_layers)
  model.eval()
  tokens = jax.random.randint(jax.random.key(1), (1, config.context_len), 0, config.vocab_size)
  return *nnx.split(model), tokens


def _decode_call(graphdef: nnx.GraphDef, weights: nnx.State, cache: object, last_1x1: jax.Array
                 ) -> Callable[[], jax.Array]:
  """A zero-argument call that decodes ``last`` after the cache's rows and rewinds the length,
  so that every call decodes the same row."""
  held = {"cache": cache}

  def decode_last() -> jax.Array:
    logits, cache = _step(graphdef, weights, last_1x1, held["cache"])
    held["cache"] = cache._replace(length=cache.length - 1)
    return logits

  return decode_last


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
  parser = argparse.ArgumentParser(prog="python -m momentum_jax.experiments.bench.flux_routing",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--tiny", action="store_true", help="2 layers, context 64: seconds")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  shape = {**FULL, **(TINY if args.tiny else {})}
  context, window = shape.pop("context"), shape.pop("window")
  base = TransformerConfig(**{**MODEL, **shape, "context_len": context + 1})  # one more row
  flux = dataclasses.replace(base, flux_router=True, flux_window=window)
  max_len = flux.context_len
  prefills, decodes, decisions = {}, {}, {}
  for routing in ROUTINGS:
    wanted = _sparse_layers(routing, flux.num_layers)
    graphdef, weights, tokens = _model(flux, wanted)
    prompt = tokens[:, :context]
    _, cache = _prefill(graphdef, weights, prompt, max_len)
    decisions[routing] = [bool(state.sparse[0]) for state in cache.layers]
    if decisions[routing] != wanted:
      raise RuntimeError(f"routing {routing!r} decided {decisions[routing]}, not {wanted}")
    prefills[routing] = functools.partial(lambda *args: _prefill(*args)[0], graphdef, weights,
                                          prompt, max_len)
    decodes[routing] = _decode_call(graphdef, weights, cache, tokens[:, context:])
  # Without the router, decoding only (a cache of `context` rows: the step's cost does not
  # depend on what they hold).
  for name, config in (("softmax", base), ("window", dataclasses.replace(base, window=window))):
    graphdef, weights, tokens = _model(config, None)
    empty = init_cache(nnx.merge(graphdef, weights), 1, max_len)
    decodes[name] = _decode_call(graphdef, weights, empty._replace(length=jnp.int32(context)),
                                 tokens[:, context:])
  medians = {**{(r, "prefill"): t for r, t in interleaved_medians(prefills, args.repeats, warmup=1).items()},
             **{(r, "decode"): t for r, t in interleaved_medians(decodes, 10 * args.repeats,
                                                                  settle=True).items()}}
  print(f"{jax.devices()[0].device_kind}: {flux.num_layers} layers, d_model {flux.d_model}, "
        f"{flux.num_heads} heads, context {context}, window {window}, batch 1, median of "
        f"{args.repeats} prefills, {10 * args.repeats} decoding steps")
  print(f"{'routing':<10}{'sparse layers':>14}{'prefill s':>11}{'speed-up':>10}"
        f"{'decode ms':>11}{'speed-up':>10}")
  results: dict[str, dict[str, float]] = {}
  for routing in ROUTINGS:
    seconds = {kind: medians[(routing, kind)] for kind in ("prefill", "decode")}
    speedup = {kind: medians[("full", kind)] / seconds[kind] for kind in seconds}
    results[routing] = {**seconds, **{f"{kind}_speedup": s for kind, s in speedup.items()}}
    print(f"{routing:<10}{sum(decisions[routing]):>10}/{flux.num_layers:<3}"
          f"{seconds['prefill']:>11.3f}{speedup['prefill']:>10.2f}"
          f"{1e3 * seconds['decode']:>11.3f}{speedup['decode']:>10.2f}")
  for name, layers in (("softmax", "no router"), ("window", f"{window}-window")):
    seconds = medians[(name, "decode")]
    results[name] = {"decode": seconds, "decode_speedup": medians[("full", "decode")] / seconds}
    print(f"{name:<10}{layers:>14}{'-':>11}{'-':>10}{1e3 * seconds:>11.3f}"
          f"{results[name]['decode_speedup']:>10.2f}")
  return results


if __name__ == "__main__":
  main()
