"""One module per Jupyter resource the mixer merges: kernelspecs, kernels, sessions.

Each module keeps the pure translation between a backend's view and the merged view
(plain functions, tested as such) apart from its aiohttp handlers.
"""
