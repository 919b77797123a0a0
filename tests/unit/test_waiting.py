"""What a process waiting for Redis says: what it tried, for how long, at a growing interval,
and when the host name does not resolve; and the one way every outage is waited out
(``contract.waiting``), with its clock and its sleep given, so nothing here sleeps."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import redis

from contract import protocol as proto
from contract.limits import JOB_RETRY_BACKOFF
from contract.waiting import FOREVER, Backoff, Patience, patiently


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


# -- contract.waiting --------------------------------------------------------------------------


def test_a_backoff_doubles_up_to_its_cap() -> None:
    assert [proto.REDIS_BACKOFF.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [JOB_RETRY_BACKOFF.delay(n) for n in (0, 1, 2, 8, 9, 50)] == [1, 2, 4, 256, 300, 300]
    assert proto.REDIS_BACKOFF.delay(10**6) == 5.0  # a long outage's count does not overflow
    assert Backoff.every(2.0).delay(7) == 2.0


def test_jitter_spreads_a_delay_by_at_most_its_fraction() -> None:
    b = Backoff(10.0, factor=1.0, jitter=0.2)
    assert b.delay(0, rand=lambda: 0.0) == pytest.approx(8.0)
    assert b.delay(0, rand=lambda: 0.5) == pytest.approx(10.0)
    assert b.delay(0, rand=lambda: 1.0) == pytest.approx(12.0)
    assert all(8.0 <= b.delay(3) <= 12.0 for _ in range(100))


def test_patience_gives_up_on_tries_time_or_a_stop() -> None:
    assert not FOREVER.exhausted(10**6, 10.0**9)
    assert Patience(tries=4).exhausted(4, 0.0)
    assert not Patience(tries=4).exhausted(3, 0.0)
    assert Patience(seconds=30).exhausted(1, 30.5)
    assert not Patience(seconds=30).exhausted(1, 30.0)
    stopped = [False]
    p = Patience(stop=lambda: stopped[0])
    assert not p.exhausted(1, 0.0)
    stopped[0] = True
    assert p.exhausted(1, 0.0)


class Flaky:
    """Fails ``times`` times with ``exc``, then returns "ok"."""

    def __init__(self, times: int, exc: type[Exception] = ConnectionError) -> None:
        self.left, self.exc, self.calls = times, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise self.exc(f"down {self.calls}")
        return "ok"


def test_patiently_waits_each_failure_out_and_tells_of_it(clock: Clock) -> None:
    slept: list[float] = []
    told: list[tuple[str, float]] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    fn = Flaky(4)
    result = patiently(
        fn,
        retry_on=(ConnectionError,),
        backoff=proto.REDIS_BACKOFF,
        on_failure=lambda exc, delay: told.append((str(exc), delay)),
        sleep=sleep,
        clock=clock,
    )
    assert result == "ok" and fn.calls == 5
    assert slept == [1.0, 2.0, 4.0, 5.0]
    assert told == [("down 1", 1.0), ("down 2", 2.0), ("down 3", 4.0), ("down 4", 5.0)]


def test_patiently_gives_up_with_the_last_error_after_telling_of_it(clock: Clock) -> None:
    told: list[str] = []
    slept: list[float] = []
    with pytest.raises(ConnectionError, match="down 4"):
        patiently(
            Flaky(10),
            retry_on=(ConnectionError,),
            backoff=Backoff.every(1.0),
            patience=Patience(tries=4),
            on_failure=lambda exc, _d: told.append(str(exc)),
            sleep=slept.append,
            clock=clock,
        )
    assert told == ["down 1", "down 2", "down 3", "down 4"]
    assert slept == [1.0, 1.0, 1.0]  # no wait after the last try


def test_patiently_gives_up_once_its_time_is_spent(clock: Clock) -> None:
    def sleep(seconds: float) -> None:
        clock.now += seconds

    fn = Flaky(100)
    with pytest.raises(ConnectionError):
        patiently(
            fn,
            retry_on=(ConnectionError,),
            backoff=Backoff.every(2.0),
            patience=Patience(seconds=5.0),
            sleep=sleep,
            clock=clock,
        )
    assert fn.calls == 4  # tried at 0, 2, 4 and 6 s: 6 s is past the 5 s


def test_patiently_lets_any_other_error_through_at_once() -> None:
    fn = Flaky(1, exc=ValueError)
    with pytest.raises(ValueError):
        patiently(
            fn, retry_on=(ConnectionError,), backoff=Backoff.every(1.0), sleep=lambda _s: None
        )
    assert fn.calls == 1


@pytest.mark.parametrize(
    "kw",
    [{"first": -1.0}, {"first": 1.0, "jitter": 1.0}, {"first": 1.0, "factor": 2.0}],
)
def test_a_backoff_that_could_not_be_slept_is_refused(kw: dict[str, float]) -> None:
    # a negative first delay or a jitter of 100% could give a negative sleep; a growing
    # backoff with no cap reaches infinity in a long outage: time.sleep takes neither
    with pytest.raises(ValueError):
        Backoff(**kw)


def test_a_backoff_fault_rule_shortens_every_wait_and_only_while_it_is_set() -> None:
    from contract import faults

    try:
        faults.configure("backoff=0.25")
        assert [proto.REDIS_BACKOFF.delay(n) for n in range(3)] == [0.25, 0.25, 0.25]
        assert Backoff.every(0.1).delay(0) == 0.1  # a ceiling, never a longer wait
        faults.configure("redis:*=error@1")
        assert proto.REDIS_BACKOFF.delay(1) == 2.0
    finally:
        faults.configure(None)
    assert JOB_RETRY_BACKOFF.delay(0) == 1.0
