"""Error answers of a served API, read off a real socket.

422s carry their list of problems whichever check refused the request; a
request that is not valid HTTP is answered by uvicorn before the
application, in plain text (docs/api.md, Known limits): these tests pin
that down so that the documentation stays true.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.conftest import READ, READ_TOKEN, error_of
from tests.api.served import ApiProcess
from tests.support.servers import RedisServer


@pytest.fixture(scope="module")
def served(
    redis_proc: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    api = ApiProcess(
        redis_proc.url, tmp_path_factory.mktemp("api"), api_diagnostics_max_s="10"
    )
    api.start()
    try:
        yield api
    finally:
        api.stop()


def test_seconds_above_the_setting_is_422_with_its_problem_listed(
    served: ApiProcess,
) -> None:
    response = httpx.get(
        f"{served.url}/v1/diagnostics?seconds=11", headers=READ, timeout=5
    )

    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"] == "seconds must be at most 10"
    assert error["details"] == [
        {"loc": ["query", "seconds"], "msg": "seconds must be at most 10",
         "type": "less_than_equal"}
    ]  # fmt: skip


def test_seconds_above_the_hard_bound_has_the_same_shape(served: ApiProcess) -> None:
    response = httpx.get(
        f"{served.url}/v1/diagnostics?seconds=61", headers=READ, timeout=5
    )

    assert response.status_code == 422
    [problem] = error_of(response)["details"]
    assert (problem["loc"], problem["type"]) == (["query", "seconds"],
                                                 "less_than_equal")  # fmt: skip


def raw_exchange(port: int, *parts: bytes) -> bytes:
    """Send ``parts`` as is, a moment apart, and read until the server closes."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            for part in parts:
                sock.sendall(part)
                time.sleep(0.2)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (BrokenPipeError, ConnectionResetError):
            # The server answered and closed before reading the whole
            # request; what it sent first is still in our receive queue.
            while chunk := _recv_quietly(sock):
                chunks.append(chunk)
    return b"".join(chunks)


def _recv_quietly(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.mark.parametrize(
    "parts",
    [
        # A head that is still incomplete past 16 KiB: the first 20 kB of a
        # 100 kB URL, then the rest.
        (b"GET /v1/devices?x=" + b"a" * 20_000,
         b"a" * 80_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"),
        (b"POST /v1/devices/356307042441013/commands HTTP/1.1\r\nHost: t\r\n"
         b"Content-Length: -5\r\n\r\n",),
    ],
    ids=["100KB-url", "negative-content-length"],
)  # fmt: skip
def test_invalid_http_gets_uvicorns_plain_text_400_and_a_close(
    served: ApiProcess, parts: tuple[bytes, ...]
) -> None:
    answer = raw_exchange(served.port, *parts)

    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
    }
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["connection"] == "close"
    assert b"Invalid HTTP request received." in body
    served.wait_for_log("Invalid HTTP request received.")
    # The application never saw it: its metrics count no 400, and it goes
    # on answering other connections.
    metrics = httpx.get(f"{served.url}/metrics", timeout=5).text
    assert 'status="400"' not in metrics
    ok = httpx.get(
        f"{served.url}/v1/devices",
        headers={"Authorization": f"Bearer {READ_TOKEN}"},
        timeout=5,
    )
    assert ok.status_code == 200


def test_a_url_under_the_limit_reaches_the_application(served: ApiProcess) -> None:
    # 8 KiB of query: under the 16 KiB request head, so the JSON 422 answers.
    response = httpx.get(
        f"{served.url}/v1/devices?limit={'9' * 8192}", headers=READ, timeout=5
    )

    assert response.status_code == 422
    assert error_of(response)["details"][0]["loc"] == ["query", "limit"]
