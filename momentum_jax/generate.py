"""The sampling command: a continuation of a prompt from a trained run.

    python -m momentum_jax.generate --workdir runs/text_lm/momentum_g0.25 --prompt "In the"
        [--max-new-tokens 200] [--temperature 0.8] [--top-k 40] [--top-p 1.0] [--seed 0]

Only the command line lives here. In code, ``momentum_jax.train.load_run`` reads a run's model
and tokeniser and ``momentum_jax.nn.generate`` samples through the KV cache, so the model's
attention must have a decoding form.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from momentum_jax.nn import generate
from momentum_jax.train import load_run


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(prog="python -m momentum_jax.generate",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a train() workdir (a model's folder)")
  parser.add_argument("--prompt", required=True)
  parser.add_argument("--max-new-tokens", type=int, default=200)
  parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
  parser.add_argument("--top-k", type=int, default=None)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  model, tokenizer = load_run(args.workdir)
  prompt_ids = tokenizer.encode(args.prompt)
  room = model.config.context_len - len(prompt_ids)
  if not prompt_ids.size or room < 0:
    raise ValueError(f"--prompt must encode to 1..{model.config.context_len} tokens (the model's "
                     f"context_len), got {len(prompt_ids)}")
  tokens = generate(model, jnp.asarray(prompt_ids)[None], min(args.max_new_tokens, room),
                    rng=jax.random.key(args.seed), temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p)
  text = tokenizer.decode(tokens[0])
  print(text)
  return text


if __name__ == "__main__":
  main()
