"""Invalid or missing settings: one line each naming the variable, exit 2.

Every command runs as the installed ``trackgate`` script in a process of
its own, with an environment holding no ``TRACKGATE_*`` variable but the
ones a test sets, so what a user would see is what is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from tests.support.servers import free_port, trackgate_env
from trackgate.core.keys import Keys
from trackgate.core.settings import CommonSettings

SCRIPT = Path(sys.executable).with_name("trackgate")
REDIS_URL_PROBLEM = (
    "not a Redis URL: it must start with redis://, rediss:// or redis+cluster://"
)


def trackgate(
    *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env=trackgate_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def refused(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr of a command that must have stopped on its settings."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


# The Redis URL, checked where ingest, api, bridge and records share it ----


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@redis.example:6380/2",
        "redis+cluster://10.0.0.1:7000",
        "rediss+cluster://10.0.0.1:7000",
        "redis://10.0.0.1:7000/0?cluster=1",
        "unix:///var/run/redis.sock",
    ],
)
def test_redis_urls_redis_py_accepts_are_valid(url: str) -> None:
    assert CommonSettings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("garbage", "it must start with redis://"),
        ("http://redis:6379", "it must start with redis://"),
        ("redis://redis:port/0", "Port could not be cast to integer"),
        ("redis+cluster://redis:99999", "Port out of range"),
    ],
)
def test_malformed_redis_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        CommonSettings(redis_url=url)

    (error,) = caught.value.errors()
    assert error["loc"] == ("redis_url",)
    assert problem in error["msg"]


def test_the_url_problem_never_repeats_a_password() -> None:
    with pytest.raises(ValidationError) as caught:
        CommonSettings(redis_url="redis://:s3cret-pass@redis:port/0")

    assert "s3cret" not in caught.value.errors()[0]["msg"]


# ingest -------------------------------------------------------------------


def test_ingest_with_a_malformed_redis_url_starts_no_worker() -> None:
    port = free_port()
    started = time.monotonic()
    result = trackgate(
        "ingest", "--redis-url", "garbage", "--port", str(port), "--admin-port", "0"
    )

    assert refused(result) == [
        "trackgate ingest: invalid settings: TRACKGATE_REDIS_URL (--redis-url): "
        + REDIS_URL_PROBLEM
    ]
    assert time.monotonic() - started < 30


def test_ingest_reports_a_port_out_of_range_with_its_variable_and_option() -> None:
    lines = refused(trackgate("ingest", "--port", "70000"))

    assert lines == [
        "trackgate ingest: invalid settings: TRACKGATE_PORT (--port): "
        "Input should be less than or equal to 65535, got 70000"
    ]


def test_ingest_reports_every_bad_variable_on_a_line_of_its_own() -> None:
    lines = refused(
        trackgate(
            "ingest",
            TRACKGATE_REDIS_URL="redis:/x",
            TRACKGATE_WORKERS="-1",
            TRACKGATE_LOG_FORMAT="xml",
        )
    )

    assert lines == [
        "trackgate ingest: invalid settings: TRACKGATE_REDIS_URL (--redis-url): "
        + REDIS_URL_PROBLEM,
        "trackgate ingest: invalid settings: TRACKGATE_LOG_FORMAT: "
        "String should match pattern '^(text|json)$', got 'xml'",
        "trackgate ingest: invalid settings: TRACKGATE_WORKERS (--workers): "
        "Input should be greater than or equal to 0, got '-1'",
    ]


# api ----------------------------------------------------------------------


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("read 0123456789abcdef-read\n")
    return path


def test_api_with_a_malformed_redis_url_stops_before_serving(
    tokens_file: Path,
) -> None:
    result = trackgate(
        "api", "--tokens-file", str(tokens_file), "--redis-url", "garbage",
        "--port", str(free_port()),
    )  # fmt: skip

    assert refused(result) == [
        "trackgate api: invalid settings: TRACKGATE_REDIS_URL (--redis-url): "
        + REDIS_URL_PROBLEM
    ]


def test_api_with_a_malformed_redis_url_in_the_environment(tokens_file: Path) -> None:
    result = trackgate(
        "api",
        TRACKGATE_API_TOKENS_FILE=str(tokens_file),
        TRACKGATE_REDIS_URL="localhost:6379",
        TRACKGATE_API_PORT=str(free_port()),
    )

    assert refused(result) == [
        "trackgate api: invalid settings: TRACKGATE_REDIS_URL (--redis-url): "
        + REDIS_URL_PROBLEM
    ]


def test_api_without_a_tokens_file_names_the_variable() -> None:
    (line,) = refused(trackgate("api"))

    assert line.startswith(
        "trackgate api: invalid settings: TRACKGATE_API_TOKENS_FILE is not set"
    )


# bridge -------------------------------------------------------------------


def test_bridge_without_a_job_names_the_variable_and_the_option() -> None:
    lines = refused(trackgate("bridge", "laravel"))

    assert lines == [
        "trackgate bridge laravel: invalid settings: "
        "TRACKGATE_LARAVEL_JOB (--job) is not set"
    ]


def test_bridge_with_a_malformed_redis_url() -> None:
    lines = refused(
        trackgate(
            "bridge", "laravel", "--job", "App\\Jobs\\Ingest@handle",
            TRACKGATE_REDIS_URL="garbage",
        )
    )  # fmt: skip

    assert lines == [
        "trackgate bridge laravel: invalid settings: TRACKGATE_REDIS_URL: "
        + REDIS_URL_PROBLEM
    ]


def test_bridge_with_a_malformed_laravel_redis_url() -> None:
    lines = refused(
        trackgate(
            "bridge", "laravel", "--job", "App\\Jobs\\Ingest@handle",
            TRACKGATE_LARAVEL_REDIS_URL="redis://laravel:port/0",
        )
    )  # fmt: skip

    assert lines == [
        "trackgate bridge laravel: invalid settings: TRACKGATE_LARAVEL_REDIS_URL: "
        "not a Redis URL: Port could not be cast to integer value as 'port'"
    ]


# operator and agent -------------------------------------------------------


def test_agent_without_environment_lists_each_missing_variable() -> None:
    lines = refused(trackgate("agent"))

    assert lines == [
        f"trackgate agent: invalid settings: TRACKGATE_{name} is not set"
        for name in (
            "AGENT_PROFILE",
            "AGENT_NODE_NAME",
            "AGENT_POD_NAME",
            "AGENT_POD_NAMESPACE",
        )
    ]


def test_agent_reports_a_value_out_of_range() -> None:
    lines = refused(
        trackgate(
            "agent",
            TRACKGATE_AGENT_PROFILE="edge",
            TRACKGATE_AGENT_NODE_NAME="node-1",
            TRACKGATE_AGENT_POD_NAME="agent-x",
            TRACKGATE_AGENT_POD_NAMESPACE="trackgate",
            TRACKGATE_AGENT_INTERVAL="0",
        )
    )

    assert lines == [
        "trackgate agent: invalid settings: TRACKGATE_AGENT_INTERVAL: "
        "Input should be greater than or equal to 1, got '0'"
    ]


def test_operator_without_environment_lists_each_missing_variable() -> None:
    lines = refused(trackgate("operator"))

    assert lines == [
        "trackgate operator: invalid settings: TRACKGATE_OPERATOR_NAMESPACE is not set",
        "trackgate operator: invalid settings: TRACKGATE_AGENT_IMAGE is not set",
    ]


# records ------------------------------------------------------------------


def test_records_with_a_malformed_redis_url() -> None:
    lines = refused(trackgate("records", "--redis-url", "garbage"))

    assert lines == [
        "trackgate records: invalid settings: TRACKGATE_REDIS_URL (--redis-url): "
        + REDIS_URL_PROBLEM
    ]


def test_records_without_redis_at_the_given_url() -> None:
    result = trackgate("records", "--redis-url", "redis://127.0.0.1:1/0")

    (line,) = refused(result)
    assert line.startswith(
        "trackgate records: cannot read Redis at redis://127.0.0.1:1/0 "
        "(set TRACKGATE_REDIS_URL or --redis-url): "
    )
    assert "Connection refused" in line


def test_records_without_redis_at_the_environment_url_hides_the_password() -> None:
    port = free_port()
    result = trackgate(
        "records", TRACKGATE_REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0"
    )

    (line,) = refused(result)
    assert line.startswith(
        f"trackgate records: cannot read Redis at redis://***@127.0.0.1:{port}/0 "
    )
    assert "s3cret" not in line


def test_records_without_redis_at_the_default_url() -> None:
    try:
        redis.Redis(port=6379, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        pass
    else:
        pytest.skip("a Redis listens on 127.0.0.1:6379 here")

    (line,) = refused(trackgate("records"))

    assert line.startswith(
        "trackgate records: cannot read Redis at redis://127.0.0.1:6379/0 "
        "(set TRACKGATE_REDIS_URL or --redis-url): "
    )


def test_records_prints_the_newest_of_every_shard(redis_url: str) -> None:
    keys = Keys(shards=2)
    by_shard: dict[int, str] = {}
    for n in range(100):
        imei = str(356_307_040_000_000 + n)
        by_shard.setdefault(keys.shard_of(imei), imei)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    # Shard 0 holds the older records: the newest two are one in each shard.
    for entry_id, shard in (("1000-0", 0), ("2000-0", 0), ("3000-0", 1)):
        imei = by_shard[shard]
        client.xadd(
            keys.records_for(imei),
            {"imei": imei, "io": json.dumps({"21": shard})},
            id=entry_id,
        )
    client.close()

    result = trackgate(
        "records", "--count", "2",
        TRACKGATE_REDIS_URL=redis_url, TRACKGATE_STREAM_SHARDS="2",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["id"], r["imei"], r["io"]) for r in rows] == [
        ("3000-0", by_shard[1], {"21": 1}),
        ("2000-0", by_shard[0], {"21": 0}),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("heartbeat_ttl_s", "inf"),
        ("store_timeout_s", "nan"),
        ("key_prefix", ""),
        ("key_prefix", "a b"),
        ("key_prefix", "a{b"),
        ("log_level", "LOUD"),
        ("pod_name", ""),
        ("pod_name", "a}b"),
        ("pod_name", "pod/1"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_start(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trackgate.ingest.settings import IngestSettings

    monkeypatch.setenv(f"TRACKGATE_{name.upper()}", value)
    with pytest.raises(ValidationError) as caught:
        IngestSettings()
    assert caught.value.errors()[0]["loc"] == (name,)


def test_ingest_with_a_bad_log_level_is_one_line() -> None:
    result = trackgate("ingest", "--log-level", "LOUD", "--admin-port", "0")
    assert result.returncode == 2
    assert "TRACKGATE_LOG_LEVEL" in result.stderr
    assert "Traceback" not in result.stderr
