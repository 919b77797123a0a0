"""The hub as this machine sees it: reachable or not in one quick look, near misses of the
built-in names. No test here reaches beyond 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from workers.models import hub


@pytest.fixture(autouse=True)
def fresh_answers() -> Iterator[None]:
    hub.forget_reachability()
    yield
    hub.forget_reachability()


def closed_port() -> int:
    """A local port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Endpoint = Callable[[str], None]


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """Points huggingface_hub (and so ``workers.models.hub``) at a URL, HF_HUB_OFFLINE and proxies
    unset."""
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def point_at(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)

    return point_at


def test_a_host_that_refuses_is_unreachable_and_one_that_listens_is_not(
    endpoint: Endpoint,
) -> None:
    endpoint(f"http://127.0.0.1:{closed_port()}")
    assert hub.reachable() is False
    assert hub.online() is False
    assert hub.unreachable_reason() == "127.0.0.1 does not answer"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint(f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.reachable() is True


def test_the_answer_is_kept_and_a_proxy_is_not_second_guessed(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint(f"http://127.0.0.1:{closed_port()}")
    assert hub.reachable() is False
    calls: list[object] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: calls.append(a))
    assert hub.reachable() is False and calls == []  # remembered: not asked again
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert hub.reachable() is True and calls == []


def test_offline_by_setting_needs_no_look_at_the_network(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "reachable", lambda: pytest.fail("the network was looked at"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.online() is False
    assert hub.exists("me/model") is None
    assert hub.unreachable_reason() == "HF_HUB_OFFLINE=1"


@pytest.mark.parametrize(
    ("model", "close"),
    [
        ("tiny-sdx", ["tiny-sd3"]),
        ("Tiny", ["tiny"]),
        ("tiny-x1", ["tiny-xl"]),
        ("tinyxl", ["tiny-xl"]),
        ("tiny", []),  # the name itself
        ("sd15", []),
        ("me/tiny", []),  # an owner: a hub id, not a typo of a built-in name
    ],
)
def test_near_misses_of_the_built_in_names(model: str, close: list[str]) -> None:
    assert hub.near_builtin(model) == close
