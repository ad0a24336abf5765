"""The token file: format, errors, and refusing to start without one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from trackgate.api.auth import TokenFileError, parse_tokens
from trackgate.api.main import ApiConfigError, create_app
from trackgate.api.settings import ApiSettings


def test_token_file_lines_give_scopes_and_skip_comments() -> None:
    entries = parse_tokens(
        "# comment\n\nread aaaaaaaaaaaaaaaa\n  commands bbbbbbbbbbbbbbbb  \n"
    )

    assert [entry.scope.name for entry in entries] == ["READ", "COMMANDS"]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("admin aaaaaaaaaaaaaaaa\n", "line 1: scope must be read or commands"),
        ("read\n", "line 1: want '<scope> <token>'"),
        ("# only a comment\n", "has no tokens"),
        ("read short\n", "line 1: token shorter than 16"),
    ],
)
def test_malformed_token_file_is_refused_without_echoing_tokens(
    text: str, complaint: str
) -> None:
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(text)

    assert complaint in str(caught.value)
    assert "aaaaaaaaaaaaaaaa" not in str(caught.value)


def test_app_does_not_start_without_a_token_file(
    make_settings: Callable[..., ApiSettings], tmp_path: Path
) -> None:
    with pytest.raises(ApiConfigError, match="TRACKGATE_API_TOKENS_FILE"):
        create_app(make_settings(api_tokens_file=None))
    with pytest.raises(ApiConfigError, match="cannot read"):
        create_app(make_settings(api_tokens_file=tmp_path / "missing"))
