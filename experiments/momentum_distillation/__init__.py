"""Momentum distillation (ALBEF): contrastive retrieval learned from noisy pairs, with and without
the momentum model's soft targets (see ``config.py``)."""
