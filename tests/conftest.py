from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workers  # noqa: F401  (first: passive OpenMP waits, before any test module imports torch)
from orchestrator.database import database_url, open_engine
from orchestrator.manifest import Defaults, parse_manifest
from orchestrator.store import JobStore, WorkerIdentity
from tests.redis_server import RedisServer, SharedRedisServer

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the slow tier (the real tiny pipeline, Core ML conversions, subprocesses, "
        "chaos): the whole suite, as CI and README command 2 run it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fast tier by default: tests marked ``slow`` run with ``--slow`` (or when ``-m``
    names what to run)."""
    if config.getoption("--slow") or config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tiny-model cache for the whole session, outside the user's home."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("ORCHESTRATE_CACHE")
    os.environ["ORCHESTRATE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ORCHESTRATE_CACHE", None)
    else:
        os.environ["ORCHESTRATE_CACHE"] = old


@pytest.fixture(scope="session")
def shared_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRedisServer]:
    """One redis-server for this test process (each pytest-xdist worker has its own), on a free
    port (never the system's 6379); the suite fails (never skips) without one."""
    server = SharedRedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis emptied for this test: the process's shared server after FLUSHALL, or, for a test
    marked ``private_redis`` (it kills, stops or restarts Redis), a redis-server of its own."""
    if request.node.get_closest_marker("private_redis") is None:
        shared: SharedRedisServer = request.getfixturevalue("shared_redis_server")
        shared.flushall()
        yield shared
        return
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return database_url(str(tmp_path / "jobs.db"))


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    engine = open_engine(db_url)
    yield JobStore(engine)
    engine.dispose()


def fixed_size(_model: str) -> tuple[int, int]:
    return (64, 64)


def manifest_of(text: str, defaults: Defaults | None = None):  # type: ignore[no-untyped-def]
    return parse_manifest(text, "test.csv", defaults, native_size=fixed_size)


def submit_text(store: JobStore, text: str, *, max_attempts: int = 3):  # type: ignore[no-untyped-def]
    from workers.models.licences import licences_of

    manifest = manifest_of(text)
    licences = licences_of(s.model for s in manifest.jobs)  # as the CLI's submit records them
    return store.submit(
        manifest, name="test", defaults={}, max_attempts=max_attempts, licences=licences
    )


def worker(name: str = "w1") -> WorkerIdentity:
    return WorkerIdentity(name=name, host="testhost", pid=os.getpid())


PAYLOAD_TOKEN = "ab" * 16


def sample_payload(**extra: object) -> dict[str, object]:
    """A job payload exactly as the coordinator makes one (before signing)."""
    p: dict[str, object] = {
        "id": 1,
        "batch_id": 1,
        "prompt": "p",
        "negative_prompt": "",
        "seed": 1,
        "steps": 2,
        "guidance_scale": 7.5,
        "width": 64,
        "height": 64,
        "scheduler": "dpmpp_2m",
        "model": "tiny",
        "quantization": "fp16",
        "output_name": "",
        "output_dir": "",
        "line": 2,
        "image_index": 0,
        "tags": "",
        "extra": {},
        "attempt": 1,
        "token": PAYLOAD_TOKEN,
    }
    p.update(extra)
    return p


def sample_job(**fields: object) -> dict[str, object]:
    """A job as a worker's task sees it: the payload without the dispatch's fields."""
    return {k: v for k, v in sample_payload(**fields).items() if k not in ("attempt", "token")}


def image_job(model: str, **fields: Any) -> dict[str, Any]:
    """A real job of ``model`` for the task: a short guided run (4 steps, guidance 4, a negative
    prompt), ``fields`` changed."""
    return sample_job(
        **{
            "prompt": "a red circle",
            "negative_prompt": "blurry",
            "model": model,
            "seed": 7,
            "steps": 4,
            "guidance_scale": 4.0,
            "scheduler": "dpmpp_2m",
            **fields,
        }
    )


def png_pixels(png: bytes) -> Any:
    """A PNG's RGB pixels (numpy)."""
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture
def redis(redis_server: RedisServer) -> Any:
    """A client of this test's own Redis."""
    from contract import protocol as proto

    return proto.connect(redis_server.url)


def coordinator(store: JobStore, redis: Any, tmp_path: Path, **kw: Any) -> Any:
    """A coordinator holding its lease, with short timings (events are pushed by hand)."""
    from orchestrator.transports.coordinator import Coordinator, CoordinatorSettings

    settings = CoordinatorSettings(output_dir=tmp_path / "out", lost_after=0.5, poll=0.05, **kw)
    c = Coordinator(store, redis, settings)
    c.acquire()
    return c
