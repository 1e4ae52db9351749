"""Small momentum model vs larger softmax baselines on real text (see ``config.py``)."""
