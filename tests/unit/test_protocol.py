"""The RQ protocol's checks: every field of every message, by type, and the signatures."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from contract import protocol as proto
from contract.job import GATE_FIELDS, JOB_FIELDS, PAYLOAD_FIELDS, GenerationRequest
from orchestrator.manifest import COLUMNS, JobSpec
from orchestrator.models import Job
from orchestrator.transports.coordinator import _worker_row
from tests.conftest import sample_payload

TOKEN = "ab" * 16
RQ_ID = "orc-12-3-abcdef"


def event(**fields: Any) -> bytes:
    base = {
        "type": "result",
        "rq_id": RQ_ID,
        "job_id": 12,
        "token": TOKEN,
        "worker": "mac1",
        "host": "mac1.local",
        "pid": 42,
        "sha256": "0" * 64,
        "size": 10,
        "result": {"total_s": 1.5, "backend": "diffusers", "versions": {"torch": "2.13.0"}},
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_a_good_result_decodes_with_its_owner() -> None:
    e = proto.decode_event(event())
    assert (e.type, e.job_id, e.size) == ("result", 12, 10)
    assert e.owner == f"rq:{RQ_ID}/{TOKEN}"
    assert proto.split_owner(e.owner) == (RQ_ID, TOKEN)
    assert e.result == {"backend": "diffusers", "total_s": 1.5, "versions": {"torch": "2.13.0"}}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"rq_id": ["a"]}, "rq_id must be a string"),
        ({"rq_id": "os.system"}, "not one of this project's dispatch ids"),
        ({"job_id": 13}, "does not match rq_id"),
        ({"job_id": "12"}, "job_id must be an integer"),
        ({"token": ...}, "token must be a string"),
        ({"token": "xyz"}, "token must be 32 hex digits"),
        ({"worker": ...}, "worker must be a string"),
        ({"pid": "one"}, "pid must be an integer"),
        ({"sha256": ...}, "sha256 must be a string"),
        ({"size": True}, "size must be an integer"),
        ({"result": [1]}, "result must be an object"),
        ({"result": {"total_s": "fast"}}, "result.total_s must be a finite number"),
        ({"result": {"total_s": float("nan")}}, "must be a finite number"),
        ({"type": "exploded"}, "unknown event type"),
    ],
)
def test_bad_events_are_refused_with_the_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(proto.BadMessage, match=reason):
        proto.decode_event(event(**fields))


def test_not_json_or_not_an_object() -> None:
    for raw in (b"\xff\xfe", b"nope", b"[]", b"null"):
        with pytest.raises(proto.BadMessage):
            proto.decode_event(raw)


def test_signatures() -> None:
    secret = b"k"
    signed = proto.encode_event(
        "started", RQ_ID, secret=secret, job_id=12, token=TOKEN, worker="w", host="h", pid=1
    )
    assert proto.decode_event(signed, secret).type == "started"
    with pytest.raises(proto.BadMessage, match="bad signature"):
        proto.decode_event(signed, b"other")
    with pytest.raises(proto.BadMessage, match="unsigned"):
        proto.decode_event(event(), secret)
    tampered = json.loads(signed)
    tampered["job_id"] = 13
    with pytest.raises(proto.BadMessage, match="bad signature"):
        proto.decode_event(json.dumps(tampered).encode(), secret)


def payload(**extra: Any) -> dict[str, Any]:
    return sample_payload(**extra)


def test_payloads_are_exactly_the_coordinators() -> None:
    assert proto.check_payload(payload()) == payload()
    assert proto.check_payload(payload(guidance_scale=7))["guidance_scale"] == 7.0
    with pytest.raises(proto.BadMessage, match="unknown \\['cmd'\\]"):
        proto.check_payload(payload(cmd="rm -rf /"))
    with pytest.raises(proto.BadMessage, match="steps must be an integer"):
        proto.check_payload(payload(steps="20"))
    with pytest.raises(proto.BadMessage, match="must be an object"):
        proto.check_payload(["not", "a", "dict"])
    signed = proto.sign(payload(), b"k")
    assert proto.check_payload(signed, b"k") == payload()
    with pytest.raises(proto.BadMessage, match="unsigned"):
        proto.check_payload(payload(), b"k")


def test_a_worker_hash_with_bad_fields_is_kept_without_them() -> None:
    row, bad = _worker_row(
        {
            "name": "mac1",
            "pid": "not a number",
            "jobs_done": "3",
            "state": "dancing",
            "busy_s": "inf?",
        }
    )
    assert (row["pid"], row["jobs_done"], row["state"], row["busy_s"]) == (None, 3, "idle", 0.0)
    assert sorted(bad) == ["busy_s", "pid", "state"]


def test_the_job_fields_are_spelled_once() -> None:
    """The worker's request decides the pixels; the manifest, the fingerprint, the payload,
    the insert and the schema are derived from it and agree."""
    pixels = tuple(f.name for f in dataclasses.fields(GenerationRequest))
    assert (*pixels, "model", "quantization") == JOB_FIELDS
    assert tuple(f.name for f in dataclasses.fields(JobSpec))[: len(JOB_FIELDS)] == JOB_FIELDS
    assert COLUMNS[: len(JOB_FIELDS)] == JOB_FIELDS
    columns = set(Job.__table__.columns.keys())
    assert set(PAYLOAD_FIELDS) <= columns
    assert {f.name for f in dataclasses.fields(JobSpec) if f.name != "extra"} <= columns
    # what the store sends, with the metadata as an object, plus the dispatch's own fields;
    # a gated job's payload adds its gate (and only then: see test_quality_gate)
    sent = (set(PAYLOAD_FIELDS) - {"extra_json"}) | {"extra", "attempt", "token"}
    assert sent == set(proto._PAYLOAD_TYPES) | set(proto._GATE_TYPES)
    assert tuple(proto._GATE_TYPES) == GATE_FIELDS
    assert {f.name for f in dataclasses.fields(JobSpec)} >= set(GATE_FIELDS)
    assert set(GATE_FIELDS) <= set(COLUMNS)
