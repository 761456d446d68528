"""Notebook sessions the mixer keeps itself, for backends without a sessions API
(Kernel Gateway, Enterprise Gateway).

Only the mixer knows these sessions, so a record is on disk before the client hears
of it; a record the state file does not take is undone here, and the store that
asked (``resources.session_stores.KeptSessions``) undoes what it started.
"""

from __future__ import annotations

from notebook_kernels_mixer.state import KeptSession, StateError, StateStore


class KeptRecords:
    def __init__(self, state: StateStore) -> None:
        self._state = state

    def of(self, backend: str) -> list[KeptSession]:
        return [r for r in self._state.kept.values() if r.backend == backend]

    def get(self, session_id: str) -> KeptSession | None:
        return self._state.kept.get(session_id)

    def drop(self, session_id: str) -> None:
        """The session is gone (deleted, or its kernel is): nothing to wait for, a
        record left behind by a crash is dropped again at the next listing."""
        self._state.drop_kept(session_id)

    async def put(self, record: KeptSession, *, undo: KeptSession | None) -> None:
        """Keep ``record``, durably. If the state file does not take it, back to
        ``undo`` (None: no record) and ``StateError``."""
        self._state.put_kept(record)
        try:
            await self._state.flush()
        except StateError:
            if undo is None:
                self._state.drop_kept(record.id)
            else:
                self._state.put_kept(undo)
            raise

    def __len__(self) -> int:
        return len(self._state.kept)
