"""Soak test of the mixer: ``python -m tests.soak --duration SECONDS`` (see ``soak.py``)."""
