"""The request body limit, against ``trackgate api`` served over real sockets.

The server runs as a subprocess with the smallest limit the settings allow
(16 KiB), so that a valid command padded with JSON whitespace reaches the
limit exactly. Requests are written by hand on a plain socket: the tests
choose the framing (``Content-Length`` or chunked), how much of a body is
sent before the answer is read, and whether the body ends at all.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import COMMANDS_TOKEN, READ_TOKEN
from tests.support.servers import RedisServer, free_port, trackgate_env, wait_for_port

LIMIT = 16 * 1024
DEFAULT_LIMIT = 64 * 1024
CHUNK = 1000


@pytest.fixture(scope="module")
def small_limit_server(
    redis_proc: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    tokens = tmp_path_factory.mktemp("bodylimit") / "tokens"
    tokens.write_text(f"read {READ_TOKEN}\ncommands {COMMANDS_TOKEN}\n")
    port = free_port()
    env = trackgate_env(
        TRACKGATE_REDIS_URL=redis_proc.url,
        TRACKGATE_API_TOKENS_FILE=str(tokens),
        TRACKGATE_API_HOST="127.0.0.1",
        TRACKGATE_API_PORT=str(port),
        TRACKGATE_KEY_PREFIX="bodylimit",
        TRACKGATE_LOG_LEVEL="WARNING",
        TRACKGATE_API_MAX_BODY_BYTES=str(LIMIT),
    )
    command = [str(Path(sys.executable).with_name("trackgate")), "api"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def head(method: str, path: str, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the next response on ``sock``."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def error_of(body: bytes) -> dict[str, Any]:
    parsed = json.loads(body)
    assert set(parsed) == {"error"}, parsed
    error: dict[str, Any] = parsed["error"]
    assert set(error) == {"code", "message", "details"}, error
    return error


def command_body(text: str, size: int) -> bytes:
    """A valid command request of exactly ``size`` bytes (JSON whitespace)."""
    core = json.dumps({"text": text}).encode()
    assert len(core) <= size
    return core[:-1] + b" " * (size - len(core)) + b"}"


def errors_counted(port: int) -> float:
    with connect(port) as sock:
        sock.sendall(head("GET", "/metrics"))
        status, _, body = answer(sock)
    assert status == 200
    found = re.search(
        rb'^trackgate_api_errors_total\{code="body_too_large"\} (\S+)$',
        body,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    small_limit_server: int,
) -> None:
    port = small_limit_server
    with connect(port) as sock:
        # Only the head goes out: the answer cannot wait for the body.
        sock.sendall(
            head(
                "POST", "/v1/devices/356307042441101/commands",
                Authorization=f"Bearer {COMMANDS_TOKEN}",
                Content_Type="application/json", Content_Length=str(LIMIT + 1),
            )
        )  # fmt: skip
        status, headers, body = answer(sock)
        # The connection stays usable: the body is read and dropped.
        sock.sendall(b" " * (LIMIT + 1) + head("GET", "/healthz"))
        assert answer(sock)[0] == 200
    assert status == 413
    assert headers["content-type"] == "application/json"
    error = error_of(body)
    assert error["code"] == "body_too_large"
    assert error["details"] == {"max_bytes": LIMIT}
    assert str(LIMIT) in error["message"]


def test_the_limit_comes_before_routing_and_tokens(small_limit_server: int) -> None:
    # No token, a route without a body, and a client waiting for 100 Continue:
    # the answer is 413 straight away, not 401, and no 100 Continue first.
    with connect(small_limit_server) as sock:
        sock.sendall(
            head(
                "GET", "/v1/devices", Content_Length=str(10 * LIMIT),
                Expect="100-continue",
            )
        )  # fmt: skip
        first_line = sock.recv(64).split(b"\r\n", 1)[0]
    assert first_line.startswith(b"HTTP/1.1 413 ")


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(
    small_limit_server: int,
) -> None:
    port = small_limit_server
    before = errors_counted(port)
    with connect(port) as sock:
        sock.sendall(
            head(
                "POST", "/v1/devices/356307042441102/commands",
                Authorization=f"Bearer {COMMANDS_TOKEN}",
                Content_Type="application/json", Transfer_Encoding="chunked",
            )
        )  # fmt: skip
        sent = 0
        while sent <= LIMIT:
            sock.sendall(chunk(b" " * CHUNK))
            sent += CHUNK
        # The body has not ended: the answer comes from counting, not the end.
        status, _, body = answer(sock)
        # The rest is read and dropped; the connection serves the next request.
        sock.sendall(chunk(b" " * CHUNK) * 20 + b"0\r\n\r\n" + head("GET", "/healthz"))
        assert answer(sock)[0] == 200
    assert status == 413
    error = error_of(body)
    assert error["code"] == "body_too_large"
    assert error["details"] == {"max_bytes": LIMIT}
    assert errors_counted(port) == before + 1


def test_a_chunked_body_of_exactly_the_limit_is_served(
    small_limit_server: int,
) -> None:
    body = command_body("getinfo", LIMIT)
    with connect(small_limit_server) as sock:
        sock.sendall(
            head(
                "POST", "/v1/devices/356307042441103/commands",
                Authorization=f"Bearer {COMMANDS_TOKEN}",
                Content_Type="application/json", Transfer_Encoding="chunked",
            )
        )  # fmt: skip
        for start in range(0, len(body), CHUNK):
            sock.sendall(chunk(body[start : start + CHUNK]))
        sock.sendall(b"0\r\n\r\n")
        status, _, answered = answer(sock)
    assert status == 201, answered
    created = json.loads(answered)
    assert created["text"] == "getinfo" and created["state"] == "queued"


def test_a_declared_length_at_the_limit_is_served_one_more_byte_is_not(
    small_limit_server: int,
) -> None:
    port = small_limit_server
    path = "/v1/devices/356307042441104/commands"
    auth = f"Bearer {COMMANDS_TOKEN}"
    for size, expected in ((LIMIT, 201), (LIMIT + 1, 413), (LIMIT - 1, 201)):
        body = command_body(f"getver {size}", size)
        with connect(port) as sock:
            sock.sendall(
                head(
                    "POST", path, Authorization=auth,
                    Content_Type="application/json", Content_Length=str(size),
                )
                + body
            )  # fmt: skip
            status, _, answered = answer(sock)
        assert status == expected, (size, answered)
        if expected == 413:
            assert error_of(answered)["code"] == "body_too_large"
        else:
            assert json.loads(answered)["text"] == f"getver {size}"


def test_the_default_limit_is_64_kib(api_server: str) -> None:
    port = int(api_server.rsplit(":", 1)[1])
    with connect(port) as sock:
        sock.sendall(
            head(
                "POST", "/v1/devices/356307042441105/commands",
                Authorization=f"Bearer {COMMANDS_TOKEN}",
                Content_Type="application/json", Transfer_Encoding="chunked",
            )
        )  # fmt: skip
        sock.sendall(chunk(b" " * DEFAULT_LIMIT) + chunk(b" "))
        status, _, body = answer(sock)
    assert status == 413
    assert error_of(body)["details"] == {"max_bytes": DEFAULT_LIMIT}
    # Exactly the limit passes it and reaches validation (spaces are no
    # command): 422, not 413.
    with connect(port) as sock:
        sock.sendall(
            head(
                "POST", "/v1/devices/356307042441105/commands",
                Authorization=f"Bearer {COMMANDS_TOKEN}",
                Content_Type="application/json", Transfer_Encoding="chunked",
            )
        )  # fmt: skip
        sock.sendall(chunk(b" " * DEFAULT_LIMIT) + b"0\r\n\r\n")
        status, _, body = answer(sock)
    assert status == 422, body
