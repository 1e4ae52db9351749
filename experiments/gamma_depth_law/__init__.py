"""The γ*–depth law of momentum attention, measured (see ``config.py``)."""
