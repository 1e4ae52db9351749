"""Trains (or loads) the 2-layer softmax and 1-layer momentum induction models and scores every
head as previous-token, duplicate-token, induction and prefix-matching head.

    python -m momentum_jax.experiments.head_detection [--quick] [--output-dir DIR]
        [--fresh] [--no-progress] [--config.PATH=VALUE ...]
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from momentum_jax.analysis import chance_scores, detect_heads, plot_head_scores, score_heads
from momentum_jax.data import repeated_random_tokens
from momentum_jax.experiments.cli import start_experiment
from momentum_jax.experiments.head_detection.config import get_config
from momentum_jax.train import train


def head_score_tables(patterns: dict[str, jax.Array], tokens_BxT: jax.Array,
                      repeat_len: int) -> dict[str, np.ndarray]:
  """Batch-mean score per (layer, head) for each kind: ``{kind: scores_LxN}``."""
  per_layer = [score_heads(patterns[name], tokens_BxT, repeat_len=repeat_len)
               for name in sorted(patterns)]
  return {kind: np.stack([np.asarray(jnp.mean(scores[kind], axis=0)) for scores in per_layer])
          for kind in per_layer[0]}


def main(argv: Sequence[str] | None = None) -> dict:
  run = start_experiment(argv, __doc__, "head_detection", get_config,
                         workdirs=lambda config: (name for name, _ in config.models))
  config, out_dir = run.config, run.out_dir
  tokens_BxT = repeated_random_tokens(jax.random.key(config.seed), config.probe_batch,
                                      config.repeat_len, config.task.vocab_size)
  chance = {kind: float(jnp.mean(score_B)) for kind, score_B in
            chance_scores(tokens_BxT, repeat_len=config.repeat_len).items()}
  results = {}
  for name, model_config in config.models:
    result = train(model_config, config.train, config.task, out_dir / name,
                   progress=run.progress, experiment=run.experiment)
    _, cache = result.model.run_with_cache(
        tokens_BxT, names_filter=lambda hook: hook.endswith("attn.hook_pattern"))
    tables = head_score_tables(cache, tokens_BxT, config.repeat_len)
    found = detect_heads(cache, tokens_BxT, config.threshold, min_lift=config.min_lift,
                         repeat_len=config.repeat_len)
    for kind in ("previous_token", "induction"):
      plot_head_scores(tables[kind], out_dir / f"{name}_{kind}.png",
                       title=f"{name}: {kind.replace('_', '-')} score")
    results[name] = {
        "eval_accuracy": float(result.final_eval["accuracy"]),
        "scores": {kind: table.tolist() for kind, table in tables.items()},
        "detected": [hit._asdict() for hit in found],
    }

  summary = {"quick": run.quick, "repeat_len": config.repeat_len,
             "threshold": config.threshold, "min_lift": config.min_lift, "chance": chance,
             "results": results, **run.record()}
  (out_dir / "head_detection.json").write_text(json.dumps(summary, indent=2))
  print("uniform head (chance): " + ", ".join(f"{kind} {value:.3f}"
                                              for kind, value in chance.items()))
  print(f"detected: score >= {config.threshold} and lift (score / chance) >= {config.min_lift}")
  for name, r in results.items():
    print(f"\n{name} (held-out accuracy {r['eval_accuracy']:.1%}); score (lift)")
    print(f"{'layer.head':<12}" + "".join(f"{kind:>19}" for kind in r["scores"]))
    num_layers, num_heads = np.shape(r["scores"]["induction"])
    for layer in range(num_layers):
      for head in range(num_heads):
        scores = [(r["scores"][kind][layer][head], chance[kind]) for kind in r["scores"]]
        cells = [f"{score:.3f} ({score / null:5.1f})" for score, null in scores]
        print(f"{f'{layer}.{head}':<12}" + "".join(f"{cell:>19}" for cell in cells))
    print("detected: " + (", ".join(
        f"L{h['layer']}H{h['head']} {h['kind']} {h['score']:.2f} ({h['lift']:.1f}x)"
        for h in r["detected"]) or "none"))
  print(f"\nwrote {out_dir / 'head_detection.json'}")
  return summary


if __name__ == "__main__":
  main()
