"""``trackgate dev``: the whole system on loopback, for trying it out.

Starts a throw-away redis-server (unless ``--redis-url`` names one), the
ingest service and the API sidecar as child processes, prints where each
listens, and stops them all on Ctrl-C. It is a convenience for development,
not a process manager for production (Kubernetes is that).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(name="dev")(dev)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        # As the servers will bind: connections in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(
    port: int, what: str, process: subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def dev(
    host: Annotated[
        str, typer.Option(help="Tracker address; 0.0.0.0 lets real devices in")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Tracker port (TCP+UDP)")] = 5027,
    api_port: Annotated[int, typer.Option(help="API port")] = 8080,
    admin_port: Annotated[int, typer.Option(help="Ingest admin/metrics port")] = 9464,
    redis_url: Annotated[
        str | None, typer.Option(help="Use this Redis instead of starting one")
    ] = None,
    workers: Annotated[int, typer.Option(help="Ingest worker processes")] = 1,
) -> None:
    """Run Redis, ingest and the API on 127.0.0.1 until Ctrl-C."""
    wanted_ports = ((host, port, "tracker"), ("127.0.0.1", api_port, "API"),
                    ("127.0.0.1", admin_port, "admin"))  # fmt: skip
    for address, wanted, name in wanted_ports:
        if not _port_free(address, wanted):
            typer.echo(
                f"port {wanted} ({name}) is taken: choose another with --"
                f"{'port' if name == 'tracker' else name.lower() + '-port'}",
                err=True,
            )
            raise typer.Exit(2)
    workdir = Path(tempfile.mkdtemp(prefix="trackgate-dev-"))
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    token = secrets.token_urlsafe(24)
    tokens_file = workdir / "api-tokens"
    tokens_file.write_text(f"commands {token}\n")
    tokens_file.chmod(0o600)
    # SIGTERM (a plain `kill`) stops the children too, like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)

    def stop_all() -> None:
        for _name, child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for _name, child in reversed(children):
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        if redis_url is None:
            binary = shutil.which("redis-server")
            if binary is None:
                typer.echo(
                    "redis-server is not on PATH: install it (apt-get install "
                    "redis-server) or pass --redis-url",
                    err=True,
                )
                raise typer.Exit(2)
            redis_port = _free_port()
            redis = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(workdir),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                ],
                stdout=subprocess.DEVNULL,
            )
            children.append(("redis", redis))
            _wait_port(redis_port, "redis-server", redis)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"

        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
        env.update(
            {
                "TRACKGATE_REDIS_URL": redis_url,
                "TRACKGATE_HOST": "127.0.0.1",
                "TRACKGATE_PORT": str(port),
                "TRACKGATE_ADMIN_HOST": "127.0.0.1",
                "TRACKGATE_ADMIN_PORT": str(admin_port),
                "TRACKGATE_WORKERS": str(workers),
                "TRACKGATE_API_HOST": "127.0.0.1",
                "TRACKGATE_API_PORT": str(api_port),
                "TRACKGATE_API_TOKENS_FILE": str(tokens_file),
                "TRACKGATE_INGEST_PORT": str(port),
            }
        )
        me = [sys.executable, "-m", "trackgate"]
        ingest = subprocess.Popen([*me, "ingest"], env=env)
        children.append(("ingest", ingest))
        _wait_port(port, "ingest", ingest)
        api_running = _api_available()
        if api_running:
            api = subprocess.Popen([*me, "api"], env=env)
            children.append(("api", api))
            _wait_port(api_port, "api", api)

        typer.echo("")
        typer.echo("trackgate is running on loopback:")
        typer.echo(f"  trackers  tcp+udp {host}:{port}")
        typer.echo(f"  metrics   http://127.0.0.1:{admin_port}/metrics")
        if api_running:
            typer.echo(f"  api       http://127.0.0.1:{api_port}/docs")
            typer.echo(f"  token     {token}   (scope: commands)")
        typer.echo(f"  redis     {redis_url}")
        typer.echo("")
        me_cli = Path(sys.executable).with_name("trackgate")
        typer.echo("Try, in another shell:")
        typer.echo(f"  {me_cli} simulate --port {port}")
        typer.echo(f"  {me_cli} records --redis-url {redis_url}")
        typer.echo("Ctrl-C stops everything.")
        while all(child.poll() is None for _n, child in children):
            time.sleep(0.5)
        dead = [n for n, c in children if c.poll() is not None]
        typer.echo(f"{', '.join(dead)} exited: stopping the rest", err=True)
        raise SystemExit(1)
    except KeyboardInterrupt:
        typer.echo("\nstopping ...")
    except RuntimeError as exc:
        typer.echo(f"start failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        stop_all()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _api_available() -> bool:
    try:
        from trackgate.cli import api  # noqa: F401
    except ImportError:
        return False
    return True
