"""Shared by the serve tests: the model every app serves, and how an API error is checked."""

from __future__ import annotations

import httpx
import pytest

from gatgan import GAT


@pytest.fixture(scope="module")
def gat(tiny_run) -> GAT:
    """The tiny run's model, loaded once per module (an app built on it generates once at start-up)."""
    return GAT.from_run(tiny_run)


def _check_error(response: httpx.Response, status: int, field: str | None = None, *words: str) -> str:
    """Every refusal is JSON {"error": one line, "field": the body field or absent}; returns the line."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    message = body["error"]
    assert message and message.splitlines() == [message], f"not one line: {message!r}"
    assert body.get("field") == field, body
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.fixture
def check_error():
    """`check_error(response, status, field, *words)`: asserts an API error naming `words`."""
    return _check_error
