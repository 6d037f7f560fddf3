"""The store interface: whole call records by call id, grouped by the node that owns them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class StoreError(Exception):
    """The store could not be read or written (its cause says why); never holds a record."""


class StateStore(Protocol):
    """Where call records live. A record is opaque bytes here (JSON made by
    :mod:`proxy.store.records`); ``None`` in a batch deletes the call's record."""

    ops: int  # commands sent to the store so far (for the figures and metrics)

    async def write(self, node: str, batch: Mapping[str, bytes | None]) -> None:
        """Write (or delete) the records of ``batch`` as owned by ``node``; one round trip."""
        ...

    async def replace(self, node: str, records: Mapping[str, bytes]) -> None:
        """Make ``records`` the whole of ``node``'s calls (a re-sync after an outage)."""
        ...

    async def load(self, node: str) -> dict[str, bytes]:
        """The records of every call ``node`` owns."""
        ...

    async def owners(self) -> dict[str, str]:
        """Every call of every node: call id → owning node."""
        ...

    async def announce(self, node: str, api_url: str) -> None:
        """Say where ``node``'s API answers (other nodes forward actions on its calls there)."""
        ...

    async def nodes(self) -> dict[str, str]:
        """Every node that announced itself: node → API base URL."""
        ...

    async def shared(self, name: str, value: bytes) -> bytes:
        """One value for the whole node set: ``value`` if none was stored under ``name`` yet
        (then stored), else the stored one (e.g. the DTLS certificate every node presents)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
