"""The default store: this process's memory (a node alone; nothing survives a restart)."""

from __future__ import annotations

from collections.abc import Mapping


class MemoryStore:
    """A :class:`proxy.store.base.StateStore` in a dict (also what unit tests restore from)."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}
        self.owner: dict[str, str] = {}
        self.ops = 0
        self.apis: dict[str, str] = {}
        self.values: dict[str, bytes] = {}

    async def write(self, node: str, batch: Mapping[str, bytes | None]) -> None:
        for call_id, record in batch.items():
            self.ops += 1
            if record is None:
                self.records.pop(call_id, None)
                self.owner.pop(call_id, None)
            else:
                self.records[call_id] = record
                self.owner[call_id] = node

    async def replace(self, node: str, records: Mapping[str, bytes]) -> None:
        stale = [c for c, n in self.owner.items() if n == node and c not in records]
        await self.write(node, {**dict.fromkeys(stale), **records})

    async def load(self, node: str) -> dict[str, bytes]:
        return {c: self.records[c] for c, n in self.owner.items() if n == node}

    async def owners(self) -> dict[str, str]:
        return dict(self.owner)

    async def announce(self, node: str, api_url: str) -> None:
        self.apis[node] = api_url

    async def nodes(self) -> dict[str, str]:
        return dict(self.apis)

    async def shared(self, name: str, value: bytes) -> bytes:
        self.ops += 1
        return self.values.setdefault(name, value)

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass
