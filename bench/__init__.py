"""The benchmark (``python bench/run.py``): direct access against the mixer, as ratios."""
