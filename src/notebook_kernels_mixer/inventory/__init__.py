"""What the mixer knows about kernels and sessions: one inventory per mixer.

``inventory`` (the events handlers announce), ``ownership`` (who owns which id,
persisted), ``listings`` (single flight, the listing window, last-known entries).
To change how listings merge or what stands in for a backend that cannot answer,
start in ``listings``; to change what is remembered across restarts, ``ownership``
and ``state``.
"""

from notebook_kernels_mixer.inventory.inventory import Inventory
from notebook_kernels_mixer.inventory.listings import Listing

__all__ = ["Inventory", "Listing"]
