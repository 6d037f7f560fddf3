"""Shared state: what other nodes, the API and a restarted node must know, behind one interface.

In memory by default (a node alone); Redis when configured (``[store] url``), so that a node
restarted after a crash gets its calls back and several nodes see each other's calls. What is
written and what never is: :mod:`proxy.store.records`. How writes leave the node (a bounded,
coalescing queue off the packet path, retried with a bound, re-synced after an outage):
:mod:`proxy.store.sync`.
"""

from proxy.store.base import StateStore, StoreError
from proxy.store.memory import MemoryStore

__all__ = ["MemoryStore", "StateStore", "StoreError"]
