"""Notebook Kernels Mixer: one Jupyter kernel API in front of many places to run kernels.

The mixer is an application-specific reverse proxy. It merges the kernelspecs, kernels
(with their websocket) and sessions APIs of several Jupyter-API servers ("backends") and
proxies everything else to the local Jupyter server. See README.md for the topology.
"""

__version__ = "0.1.0"
