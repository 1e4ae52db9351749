"""Spike robustness: AdamW, AdamW + clipping, SPAM and Stable-SPAM under gradient spikes
(see ``config.py``)."""
