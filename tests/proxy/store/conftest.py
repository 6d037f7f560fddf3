"""A real redis-server on a free loopback port (no persistence), stopped and started by tests."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import pick_tcp_port


@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, socket_timeout=2)

    async def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"redis-{self.starts}.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), stdout=log, stderr=log)
        client = self.client()
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except (OSError, aioredis.ConnectionError):
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    server = RedisServer(pick_tcp_port(), tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def store_key(tmp_path: Path) -> Path:
    path = tmp_path / "store.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode())
    return path


async def dump_all(server: RedisServer) -> dict[bytes, tuple[bytes, bytes]]:
    """Every key and its value as Redis would give it to anyone with access: SCAN, then DUMP
    (the serialised value, whatever its type) and the readable form (GET/HGETALL/SMEMBERS)."""
    client = server.client()
    out: dict[bytes, tuple[bytes, bytes]] = {}
    try:
        async for key in client.scan_iter(match="*", count=1000):
            kind = (await client.type(key)).decode()
            dumped = await client.dump(key) or b""
            if kind == "string":
                readable = await client.get(key) or b""
            elif kind == "hash":
                readable = b"\n".join(k + b"=" + v for k, v in (await client.hgetall(key)).items())
            elif kind == "set":
                readable = b"\n".join(sorted(await client.smembers(key)))
            else:
                readable = b""
            out[key] = (dumped, readable)
    finally:
        await client.aclose()
    return out
