"""Dependencies of the route handlers and their ``Annotated`` aliases.

Handlers declare what they need by type (``RedisDep``, ``CommandsDep``,
``ReadScope``, ``Imei`` ...); this module is the one place that knows where
each comes from (the application state built at start-up) and how a
request is authenticated.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trackgate.api import metrics
from trackgate.api.auth import Scope, TokenBook
from trackgate.api.errors import Forbidden, Unauthorized
from trackgate.api.settings import ApiSettings
from trackgate.core.commands import CommandStore
from trackgate.core.devices import IMEI_PATTERN
from trackgate.core.keys import Keys
from trackgate.core.redisconn import AsyncClient

COMMAND_ID_PATTERN = r"^[0-9a-f]{32}$"


def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


def get_redis(request: Request) -> AsyncClient:
    client: AsyncClient = request.app.state.redis
    return client


def get_keys(request: Request) -> Keys:
    keys: Keys = request.app.state.keys
    return keys


def get_commands(request: Request) -> CommandStore:
    store: CommandStore = request.app.state.commands
    return store


def get_tokens(request: Request) -> TokenBook:
    book: TokenBook = request.app.state.tokens
    return book


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
RedisDep = Annotated[AsyncClient, Depends(get_redis)]
KeysDep = Annotated[Keys, Depends(get_keys)]
CommandsDep = Annotated[CommandStore, Depends(get_commands)]
TokensDep = Annotated[TokenBook, Depends(get_tokens)]

bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A token from the API tokens file (scope read or commands).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]

_CHALLENGE = 'Bearer realm="trackgate"'


def check_scope(book: TokenBook, credentials: HTTPAuthorizationCredentials | None,
           wanted: Scope) -> Scope:  # fmt: skip
    if credentials is None:
        metrics.AUTH_FAILURES.labels("missing").inc()
        raise Unauthorized(
            "a bearer token is required", headers={"WWW-Authenticate": _CHALLENGE}
        )
    granted = book.scope_of(credentials.credentials)
    if granted is None:
        metrics.AUTH_FAILURES.labels("invalid").inc()
        raise Unauthorized(
            "the bearer token is not valid",
            code="invalid_token",
            headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'},
        )
    if granted < wanted:
        metrics.AUTH_FAILURES.labels("scope").inc()
        raise Forbidden(
            f"this token's scope does not allow {wanted.name.lower()}",
            code="insufficient_scope",
            details={"required": wanted.name.lower()},
            headers={"WWW-Authenticate": _CHALLENGE + ', error="insufficient_scope"'},
        )
    return granted


def require_read(book: TokensDep, credentials: Credentials) -> Scope:
    return check_scope(book, credentials, Scope.READ)


def require_commands(book: TokensDep, credentials: Credentials) -> Scope:
    return check_scope(book, credentials, Scope.COMMANDS)


ReadScope = Annotated[Scope, Depends(require_read)]
CommandScope = Annotated[Scope, Depends(require_commands)]

Imei = Annotated[
    str,
    Path(pattern=IMEI_PATTERN, description="The device's IMEI (15 or 16 digits)."),
]
CommandId = Annotated[
    str, Path(pattern=COMMAND_ID_PATTERN, description="Id of the command.")
]
