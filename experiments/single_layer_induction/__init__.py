"""Single-layer induction: 1-layer momentum vs 1- and 2-layer softmax (see ``config.py``)."""
