"""Bearer tokens from a file, with scopes, checked in constant time.

The file (``TRACKGATE_API_TOKENS_FILE``, usually a mounted Secret) holds one
``<scope> <token>`` a line; blank lines and ``#`` comments are skipped.
Scope ``read`` reads devices, records and commands; ``commands`` also
queues and cancels commands. The file is read at start-up (a bad file stops
the process) and again when its modification time changes, so a rotated
Secret takes effect without a restart; a bad rotated file, or a file that
disappears, is logged as an error and the previous tokens stay in force
(a file that comes back is read again).

A presented token is hashed and compared with every known token's hash by
``hmac.compare_digest``, without stopping at the first match, so the time
taken does not depend on which token (or how much of one) matched.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

log = logging.getLogger("trackgate.api.auth")

#: Seconds between checks of the token file's modification time.
RELOAD_CHECK_S = 1.0

#: Shortest token accepted in the file; shorter ones are guessable.
MIN_TOKEN_LENGTH = 16


class Scope(IntEnum):
    """Scopes in increasing power: a higher one includes the lower ones."""

    READ = 1
    COMMANDS = 2


class TokenFileError(Exception):
    """The token file cannot be used (missing, unreadable or malformed)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    scope: Scope


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_tokens(text: str, source: str = "tokens file") -> list[_Entry]:
    """The entries of a token file; errors name the line, never the token."""
    entries: list[_Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenFileError(f"{source} line {number}: want '<scope> <token>'")
        scope_name, token = parts
        try:
            scope = Scope[scope_name.upper()]
        except KeyError:
            raise TokenFileError(
                f"{source} line {number}: scope must be read or commands"
            ) from None
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenFileError(
                f"{source} line {number}: token shorter than {MIN_TOKEN_LENGTH}"
            )
        entries.append(_Entry(_digest(token), scope))
    if not entries:
        raise TokenFileError(f"{source} has no tokens")
    return entries


class TokenBook:
    """The tokens in force, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[_Entry] = []
        self._mtime = 0.0
        self._checked = 0.0
        #: the file could not be found at the last check (logged once)
        self._missing = False
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenFileError(f"cannot read {self.path}: {exc.strerror}") from exc
        self._entries = parse_tokens(text, str(self.path))
        self._mtime = stat.st_mtime
        log.info("loaded %d API tokens from %s", len(self._entries), self.path)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            if not self._missing:
                self._missing = True
                log.error(
                    "token file %s cannot be read (%s), previous tokens kept "
                    "until it is back", self.path, exc.strerror,
                )  # fmt: skip
            return
        # A file that is back is read again whatever its time says.
        changed = self._missing or mtime != self._mtime
        self._missing = False
        if not changed:
            return
        try:
            self._load()
        except TokenFileError as exc:
            log.error("token file change ignored, previous tokens kept: %s", exc)
            with contextlib.suppress(OSError):
                self._mtime = self.path.stat().st_mtime

    def scope_of(self, token: str) -> Scope | None:
        """The scope ``token`` grants, or None if it is not a known token."""
        self._maybe_reload()
        presented = _digest(token)
        granted = 0
        for entry in self._entries:
            # No early exit: every entry is compared whatever matched.
            if hmac.compare_digest(presented, entry.digest):
                granted = max(granted, int(entry.scope))
        return Scope(granted) if granted else None
