"""Byte-level language models on real text: softmax vs momentum attention (a γ grid) vs two other
variants, identical budgets (see ``config.py``)."""
