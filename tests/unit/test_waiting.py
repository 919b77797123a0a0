"""What a process waiting for Redis says: what it tried, for how long, at a growing interval,
and when the host name does not resolve."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis

from contract import protocol as proto


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(proto.time, "monotonic", c)
    return c


def refused() -> redis.exceptions.ConnectionError:
    return redis.exceptions.ConnectionError(
        "Error 111 connecting to 10.0.0.9:6379. Connection refused."
    )


def unresolved(errno: int = socket.EAI_NONAME) -> redis.exceptions.ConnectionError:
    try:
        try:
            raise socket.gaierror(errno, "Name or service not known")
        except socket.gaierror as exc:
            raise redis.exceptions.ConnectionError("Error -2 connecting to nohost.invalid") from exc
    except redis.exceptions.ConnectionError as exc:
        return exc


def test_the_message_repeats_at_a_growing_interval_with_how_long(clock: Clock) -> None:
    said: list[str] = []
    waiting = proto.Waiting(said.append, "10.0.0.9:6379", every=2.0)
    for _ in range(200):  # a try every 2 s for 400 s
        waiting.failed(refused())
        clock.now += 2.0
    assert said[0] == (
        "cannot reach Redis at 10.0.0.9:6379: Error 111 connecting to 10.0.0.9:6379. "
        "Connection refused; waiting for it, trying every 2s"
    )
    assert [line.split(" after ")[1].split(":")[0] for line in said[1:]] == [
        "10s",
        "30s",
        "70s",
        "2m30s",
        "5m10s",
    ]
    assert all(
        line.startswith("still waiting for Redis at 10.0.0.9:6379 after ") for line in said[1:]
    )
    assert waiting.ended() == pytest.approx(400.0)
    assert waiting.ended() is None  # forgotten: the next outage starts afresh
    waiting.failed(refused())
    assert said[-1].startswith("cannot reach Redis")


def test_a_name_that_does_not_resolve_is_called_a_likely_typo() -> None:
    assert proto.unresolved_host(unresolved()) == (
        "its host name does not resolve, most likely a typo in the URL, not an outage"
    )
    assert "DNS" in (proto.unresolved_host(unresolved(socket.EAI_AGAIN)) or "")
    assert proto.unresolved_host(refused()) is None


def test_connect_names_an_unresolvable_host_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def getaddrinfo(*_a: Any, **_k: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)  # no DNS needed for this test
    with pytest.raises(proto.Unreachable) as info:
        proto.connect("redis://:s3cret@nohost.invalid:6379/0")
    assert str(info.value) == (
        "cannot reach Redis at redis://:***@nohost.invalid:6379/0: its host name does not "
        "resolve, most likely a typo in the URL, not an outage"
    )


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:pw@queuehost.local:6380/2", "queuehost.local:6380"),
        ("rediss://user:pw@queuehost.local/0", "queuehost.local:6379"),
        ("unix:///run/redis.sock", "/run/redis.sock"),
    ],
)
def test_the_address_never_carries_the_password(url: str, where: str) -> None:
    assert proto.address(url) == where


def test_connect_patiently_says_when_it_got_through(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[Any] = [proto.Unreachable("x"), proto.Unreachable("x"), "client"]

    def connect(_url: str) -> Any:
        out = tries.pop(0)
        if isinstance(out, Exception):
            try:
                raise out from refused()
            except proto.Unreachable as exc:
                raise exc
        return out

    def sleep(seconds: float) -> None:
        clock.now += seconds

    monkeypatch.setattr(proto, "connect", connect)
    monkeypatch.setattr(proto.time, "sleep", sleep)
    said: list[str] = []
    assert proto.connect_patiently("redis://:pw@10.0.0.9/0", say=said.append) == "client"
    assert said == [
        "cannot reach Redis at 10.0.0.9:6379: Error 111 connecting to 10.0.0.9:6379. "
        "Connection refused; waiting for it, trying every 2s",
        "reached Redis at 10.0.0.9:6379 after 4s",
    ]
