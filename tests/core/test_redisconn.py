"""Client URLs, against real Redis servers."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from trackgate.core.redisconn import async_client, pubsub_url, sync_client


async def test_a_unix_socket_url_reaches_redis(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"unix://{sock}?db=2"
        assert pubsub_url(url) == url
        client = async_client(url)
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        await client.aclose()
        plain = sync_client(url)
        assert plain.connection_pool.connection_kwargs["path"] == str(sock)
        assert plain.connection_pool.connection_kwargs["db"] == 2
        assert plain.get("k") == b"v"
        plain.close()
    finally:
        server.terminate()
        server.wait(10)


def test_cluster_urls_lose_only_their_cluster_marks() -> None:
    assert pubsub_url("redis+cluster://a:7000/0") == "redis://a:7000/0"
    assert pubsub_url("redis://a:7000/0?cluster=1&x=2") == "redis://a:7000/0?x=2"
    assert pubsub_url("redis://a:6379/0") == "redis://a:6379/0"
