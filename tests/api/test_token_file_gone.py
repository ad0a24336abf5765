"""A token file that disappears under a running API: logged, tokens kept.

Runs ``trackgate api`` as a real process and reads its log, since the
point is what an operator sees.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import READ
from tests.api.served import ApiProcess

#: Longer than the API's one-second interval between looks at the file.
CHECK_S = 1.2


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(redis_url, tmp_path)
    api.start()
    try:
        yield api
    finally:
        api.stop()


def devices(api: ApiProcess, headers: dict[str, str]) -> int:
    return httpx.get(f"{api.url}/v1/devices", headers=headers, timeout=5).status_code


def test_deleted_token_file_is_an_error_and_the_last_tokens_stay(
    served: ApiProcess,
) -> None:
    assert devices(served, READ) == 200
    served.tokens_file.unlink()
    time.sleep(CHECK_S)

    # Every request after the deletion is served with the tokens read last.
    statuses = [devices(served, READ) for _ in range(3)]
    time.sleep(CHECK_S)
    statuses.append(devices(served, READ))

    assert statuses == [200, 200, 200, 200]
    served.wait_for_log("cannot be read")
    errors = served.entries("ERROR")
    # One line for the disappearance, not one per check.
    assert [e["msg"] for e in errors] == [
        f"token file {served.tokens_file} cannot be read (No such file or "
        "directory), previous tokens kept until it is back"
    ]
    assert errors[0]["logger"] == "trackgate.api.auth"


def test_token_file_that_comes_back_is_read_again(served: ApiProcess) -> None:
    new_token = "restored-0123456789abcdef"
    assert devices(served, READ) == 200
    mtime = served.tokens_file.stat().st_mtime
    served.tokens_file.unlink()
    time.sleep(CHECK_S)
    assert devices(served, READ) == 200  # noticed: gone, old tokens kept

    # Back with other tokens and, as a restored backup may be, the old time.
    served.tokens_file.write_text(f"read {new_token}\n")
    os.utime(served.tokens_file, (mtime, mtime))
    time.sleep(CHECK_S)

    assert devices(served, {"Authorization": f"Bearer {new_token}"}) == 200
    assert devices(served, READ) == 401
    served.wait_for_log("loaded 1 API tokens")
    assert len(served.entries("ERROR")) == 1
