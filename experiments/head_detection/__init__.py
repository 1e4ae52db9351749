"""Head detection on the single-layer-induction models: which heads are previous-token and
induction heads (``python -m momentum_jax.experiments.head_detection``)."""
