"""The sampling command: a continuation of a prompt from a trained run.

    python -m momentum_jax.generate --workdir runs/text_lm/momentum_g0.25 --prompt "In the"
        [--max-new-tokens 200] [--temperature 0.8] [--top-k 40] [--top-p 1.0] [--seed 0]

``--workdir`` is a model's folder (inside an experiment's run folder, one per model). The
prompt and its continuation must fit the model's context: a ``--max-new-tokens`` past it is
refused, never shortened. An error exits with status 2 and one line on stderr naming the argument.

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
  try:
    model, tokenizer = load_run(args.workdir)
    prompt_ids = tokenizer.encode(args.prompt)
    context_len = model.config.context_len
    if not 1 <= len(prompt_ids) <= context_len:
      raise ValueError(f"--prompt must encode to 1..{context_len} tokens (the model's "
                       f"context_len), got {len(prompt_ids)}")
    room = context_len - len(prompt_ids)
    if not 0 <= args.max_new_tokens <= room:
      raise ValueError(f"--max-new-tokens must be in 0..{room} (the model's context_len "
                       f"{context_len} less the prompt's {len(prompt_ids)} tokens), got "
                       f"{args.max_new_tokens}")
    tokens = generate(model, jnp.asarray(prompt_ids)[None], args.max_new_tokens,
                      rng=jax.random.key(args.seed), temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p)
  except (OSError, ValueError) as error:  # a bad argument or run folder: named, on one line
    parser.exit(2, f"{parser.prog}: error: {' '.join(str(error).split())}\n")
  text = tokenizer.decode(tokens[0])
  print(text)
  return text


if __name__ == "__main__":
  main()
