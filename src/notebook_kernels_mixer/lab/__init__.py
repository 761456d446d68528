"""``mixer lab``: SPEC §1's whole topology in one command, and its clean stop.

* :mod:`.topology` — what to start, with which config: a frozen plan (ports, tokens,
  backend names), the mixer's TOML written from data, the children's command lines;
* :mod:`.supervisor` — process supervision, knowing nothing of Jupyter: start, bounded
  readiness waits, watch, stop in order, reap kernels left behind;
* :mod:`.command` — the arguments (``jupyter lab``'s conventions), the start-up
  sequence and the URL banner.
"""

from notebook_kernels_mixer.lab.command import main

__all__ = ["main"]
