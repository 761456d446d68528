"""The fault the soak injects: the REMOTE jupyter_server stopped at intervals, kept down,
and started again on the same port (its kernels die with it).

Each restart is a ``Window`` in the ledger, from the stop until the restarted server
answers; the verdict excuses remote failures inside a window (plus ``--grace``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from tests.e2e.support.stack import Stack

from .ledger import Ledger, Window
from .report import log


async def restart_remote(
    stack: Stack, ledger: Ledger, args: argparse.Namespace, after_restart: Callable[[], None]
) -> None:
    """Stop the remote, wait, start it again on the same port; at intervals.

    A restart is begun only if it, the grace period and 10 s of healthy remote
    after it fit before the deadline (its length is taken from the previous
    restart), so that every window is followed by an observed recovery.
    ``after_restart`` runs once the remote is back (its PID changed).
    """
    interval, down, grace = args.restart_interval, args.down_time, args.grace
    next_at = ledger.started + interval
    expected = down + 15.0
    while True:
        if next_at + expected + grace + 10 > ledger.deadline:
            return
        await ledger.pause(next_at - time.monotonic())
        if not ledger.running():
            return
        window = Window(down=round(ledger.now(), 3))
        ledger.windows.append(window)
        log(f"restart: stopping the remote at {window.down:.1f}s")
        await asyncio.to_thread(stack.remote.stop)
        window.stopped = round(ledger.now(), 3)
        await asyncio.sleep(down)  # not interruptible: the remote must come back
        await asyncio.to_thread(stack.remote.start)
        after_restart()
        window.up = round(ledger.now(), 3)
        log(f"restart: the remote answers again at {window.up:.1f}s")
        expected = max(expected, window.up - window.down)
        next_at = max(next_at + interval, time.monotonic() + 1)
