"""The quality gate's parts on their own: manifest columns and flags, the seeds a gated job
tries, the judges (a command's failures and timeouts, the built-in one's refusal) and the RQ
protocol's fields."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from contract import protocol as proto
from contract.errors import JobInputError, JobInterrupted, JudgeError, ManifestError
from orchestrator.manifest import Defaults, parse_manifest
from tests.conftest import PAYLOAD_TOKEN, fixed_size, manifest_of, sample_payload
from tests.fake_quality import seed_pixels
from workers.quality import (
    SEED_STEP,
    BuiltinJudge,
    CommandJudge,
    attempt_seeds,
    candidate_seed,
    command_problem,
    gate_failure,
    gate_round,
    make_judge,
)

SCENE = "two small yellow squares on a black background"


def issues(text: str, defaults: Defaults | None = None) -> list[str]:
    with pytest.raises(ManifestError) as err:
        parse_manifest(text, "jobs.csv", defaults, native_size=fixed_size)
    return [str(i) for i in err.value.issues]


# -- the manifest ---------------------------------------------------------------------------------


def test_gate_columns_and_their_defaults() -> None:
    m = manifest_of(
        "prompt,min_score,quality_tries\n"
        f"{SCENE},0.8,5\n"
        f"{SCENE} ,0.5,\n"  # the default number of tries
        "a cat,,\n"  # no gate: no tries either
    )
    assert [(j.min_score, j.quality_tries) for j in m.jobs] == [(0.8, 5), (0.5, 3), (None, None)]
    # the alias column, and flags as defaults for rows that leave the cell empty
    m = parse_manifest(
        "prompt,min_adherence\na,\nb,0.25\n",
        "jobs.csv",
        Defaults(min_score=0.6, quality_tries=7),
        native_size=fixed_size,
    )
    assert [(j.min_score, j.quality_tries) for j in m.jobs] == [(0.6, 7), (0.25, 7)]


def test_bad_gate_values_are_named_by_file_line_column_and_value() -> None:
    assert issues(
        "prompt,min_score,quality_tries\n"
        "a,1.5,\n"
        "b,high,\n"
        "c,0.5,0\n"
        "d,0.5,21\n"
        "e,,4\n"
        "f,-0.1,\n"
        "g,nan,\n"
    ) == [
        "jobs.csv:2: column 'min_score': must be between 0 and 1 (got '1.5')",
        "jobs.csv:3: column 'min_score': must be a number (got 'high')",
        "jobs.csv:4: column 'quality_tries': must be between 1 and 20 (got '0')",
        "jobs.csv:5: column 'quality_tries': must be between 1 and 20 (got '21')",
        "jobs.csv:6: column 'quality_tries': needs a quality gate: give the row a min_score "
        "(or --min-score) (got '4')",
        "jobs.csv:7: column 'min_score': must be between 0 and 1 (got '-0.1')",
        "jobs.csv:8: column 'min_score': must be between 0 and 1 (got 'nan')",
    ]
    # an alias is named as the header spells it
    assert issues("prompt,min_adherence\na,2\n") == [
        "jobs.csv:2: column 'min_adherence': must be between 0 and 1 (got '2')"
    ]
    assert issues("prompt,min_score,Min_Adherence\na,0.5,0.5\n") == [
        "jobs.csv:1: column 'Min_Adherence': names 'min_score' a second time (min_adherence "
        "is another name for it)"
    ]


def test_an_ungated_job_keeps_its_fingerprint_and_a_gate_makes_another_job() -> None:
    plain, gated, stricter = manifest_of("prompt,seed,min_score\na,1,\na,1,0.5\na,1,0.7\n").jobs
    # the fingerprint every job had before the gate existed (orchestrate 0.1's formula)
    legacy = [
        "a",
        "",
        1,
        plain.steps,
        repr(float(plain.guidance_scale)),
        plain.width,
        plain.height,
        plain.scheduler,
        plain.model,
        plain.quantization,
    ]
    assert plain.fingerprint() == hashlib.sha256(json.dumps(legacy).encode()).hexdigest()
    assert len({plain.fingerprint(), gated.fingerprint(), stricter.fingerprint()}) == 3


# -- seeds ------------------------------------------------------------------------------------------


def test_a_gated_job_tries_its_own_seed_first_and_never_repeats_one() -> None:
    assert attempt_seeds(7667, 0, 3) == [
        7667,
        (7667 + SEED_STEP) % 2**32,
        (7667 + 2 * SEED_STEP) % 2**32,
    ]
    # an attempt after a failed gate starts after the last seed the failed one tried
    assert attempt_seeds(7667, 1, 3)[0] == candidate_seed(7667, 3)
    tried = [s for rounds in range(50) for s in attempt_seeds(2**32 - 1, rounds, 20)]
    assert len(set(tried)) == len(tried) == 1000
    assert all(0 <= s < 2**32 for s in tried)


def test_the_jobs_of_a_num_images_row_never_share_a_seed() -> None:
    """seed + 1 would be the next image's own seed: two jobs could keep the same image."""
    jobs = manifest_of("prompt,seed,num_images,min_score\na,4294960000,2000,0.5\n").jobs
    assert jobs[-1].seed == 4294960000 + 1999
    seeds = [s for j in jobs for rounds in (0, 1, 2) for s in attempt_seeds(j.seed, rounds, 20)]
    assert len(set(seeds)) == len(seeds) == 2000 * 60


def test_gate_failure_names_the_best_score_and_every_seed() -> None:
    exc = gate_failure(0.8, [(7667, 0.6), (12, 0.25), (13, 0.5)])
    assert str(exc) == "best score 0.6 < 0.8 after 3 seeds (7667, 12, 13)"
    assert exc.scores == [(7667, 0.6), (12, 0.25), (13, 0.5)]
    many = gate_failure(0.9, [(s, 0.1) for s in range(10)])
    assert str(many) == "best score 0.1 < 0.9 after 10 seeds (0, 1, ..., 9)"


# -- judges -----------------------------------------------------------------------------------------


def script(tmp_path: Path, body: str, name: str = "judge.py") -> str:
    path = tmp_path / name
    path.write_text("import sys, time\n" + body + "\n", encoding="utf-8")
    return f"{sys.executable} {path}"


def image() -> Image.Image:
    return seed_pixels(42)


def test_a_command_judge_gets_the_image_and_the_prompt_and_reads_its_last_line(
    tmp_path: Path,
) -> None:
    cmd = script(
        tmp_path,
        "from PIL import Image\n"
        "with Image.open(sys.argv[1]) as im:\n"
        "    assert im.size == (8, 8)\n"
        "print('loading...', flush=True)\n"
        "print(0.75 if sys.argv[2] == 'a \"quoted\" prompt; rm -rf /' else 0.0)\n"
        "print()\n",
    )
    judge = CommandJudge(cmd)
    assert judge.name == sys.executable
    assert judge.score(image(), 'a "quoted" prompt; rm -rf /') == 0.75


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("print('hello')", r"printed 'hello', not a score from 0 to 1$"),
        ("print(1.5)", r"printed '1.5', not a score from 0 to 1$"),
        ("print('nan')", r"printed 'nan', not a score from 0 to 1$"),
        ("pass", r"printed nothing; its last line must be a score from 0 to 1$"),
        (
            "print(0.9); print('model not found\\nsee the log', file=sys.stderr); sys.exit(3)",
            r"exited with status 3: see the log$",
        ),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", r"was killed by signal 9$"),
    ],
)
def test_a_judge_that_fails_or_says_no_score_is_one_clear_line(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(JudgeError, match=message) as err:
        CommandJudge(script(tmp_path, body)).score(image(), "p")
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"judge {sys.executable!r} ")


def test_a_judge_that_cannot_start_is_a_judge_error(tmp_path: Path) -> None:
    with pytest.raises(JudgeError, match=r"judge '/nonexistent/judge' cannot be run: "):
        CommandJudge("/nonexistent/judge --fast").score(image(), "p")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_judge_past_its_time_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    cmd = script(
        tmp_path,
        "import os, subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n",
    )
    judge = CommandJudge(cmd, timeout_s=1.0)
    with pytest.raises(JudgeError, match=r"gave no score within 1s$"):
        judge.score(image(), "p")
    for pid in map(int, pids.read_text().split()):
        # the grandchild is reaped by init, which may take a moment
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), pid


def test_a_stop_request_ends_a_running_judge(tmp_path: Path) -> None:
    started = tmp_path / "started"
    cmd = script(tmp_path, f"open({str(started)!r}, 'w').close()\ntime.sleep(60)\n")
    with pytest.raises(JobInterrupted):
        CommandJudge(cmd).score(image(), "p", should_stop=started.exists)


def test_the_built_in_judge_refuses_a_prompt_outside_the_scenes_world() -> None:
    judge = make_judge(None)
    assert isinstance(judge, BuiltinJudge) and judge.name == "builtin"
    assert isinstance(make_judge("builtin"), BuiltinJudge)
    judge.check(SCENE)
    with pytest.raises(JobInputError) as err:
        judge.check("a lighthouse at dusk, oil painting")
    assert str(err.value) == (
        "the built-in judge only knows the scenes world (prompts like 'two small yellow "
        "squares on a black background'), not 'a lighthouse at dusk, oil painting'; "
        "give the worker --judge CMD"
    )


def test_a_judge_command_is_checked_before_any_work(tmp_path: Path) -> None:
    assert command_problem("builtin") is None
    assert command_problem(f"{sys.executable} -c 'print(1)'") is None
    assert command_problem("no-such-judge-here --x") == (
        "--judge: 'no-such-judge-here' is not a command on PATH nor an executable file"
    )
    assert command_problem("judge 'unclosed") == (
        '--judge "judge \'unclosed": cannot be split into words: No closing quotation'
    )
    assert command_problem("  ") == "--judge is empty; name a command, or 'builtin'"


# -- the RQ protocol --------------------------------------------------------------------------------


def test_a_payload_carries_its_gate_whole_or_not_at_all() -> None:
    gated = sample_payload(min_score=0.8, quality_tries=3)
    assert proto.check_payload(gated)["min_score"] == 0.8
    assert proto.check_payload(sample_payload(min_score=1, quality_tries=20))["min_score"] == 1.0
    with pytest.raises(proto.BadMessage, match=r"missing \['quality_tries'\]"):
        proto.check_payload(sample_payload(min_score=0.8))
    with pytest.raises(proto.BadMessage, match="min_score must be from 0 to 1"):
        proto.check_payload(sample_payload(min_score=1.5, quality_tries=3))
    with pytest.raises(proto.BadMessage, match="quality_tries is out of range"):
        proto.check_payload(sample_payload(min_score=0.5, quality_tries=21))
    with pytest.raises(proto.BadMessage, match="unknown \\['judge'\\]"):
        proto.check_payload(sample_payload(judge="rm -rf /"))  # never a command in a payload
    # the gate's round comes with the gate (a coordinator from before rounds sends none)
    assert proto.check_payload({**gated, "gate_round": 2})["gate_round"] == 2
    with pytest.raises(proto.BadMessage, match="gate_round must be an integer"):
        proto.check_payload({**gated, "gate_round": "2"})
    with pytest.raises(proto.BadMessage, match=r"unknown \['gate_round'\]"):
        proto.check_payload(sample_payload(gate_round=0))


def test_a_payload_without_a_round_falls_back_to_its_attempt_number() -> None:
    assert gate_round({"attempt": 3, "gate_round": 0}) == 0
    assert gate_round({"attempt": 3}) == 2
    assert gate_round({}) == 0


def result(**quality: object) -> dict[str, object]:
    return {"backend": "fake", "total_s": 0.5, **quality}


def test_a_result_carries_a_verdict_whole_and_checked() -> None:
    verdict = {"score": 0.9, "image_seed": 12, "judge": "python3", "scores": [[11, 0.2], [12, 0.9]]}
    assert proto.check_result(result(**verdict)) == result(**verdict)
    assert "score" not in proto.check_result(result())
    for bad, message in (
        ({**verdict, "score": 1.5}, "result.score must be from 0 to 1"),
        ({**verdict, "image_seed": 2**32}, "result.image_seed is out of range"),
        ({**verdict, "judge": "x" * 256}, "result.judge is longer than 255"),
        ({**verdict, "scores": [[1, 0.5, 3]]}, r"\[seed, score\] pairs"),
        ({**verdict, "scores": [[1, 0.5]] * 21}, "at most 20"),
        ({"score": 0.9}, "not all four"),
    ):
        with pytest.raises(proto.BadMessage, match=message):
            proto.check_result(result(**bad))


def test_a_failed_event_may_say_which_seeds_it_tried() -> None:
    rq_id = proto.rq_id_for(7, 1, "abcdef")
    common = {"job_id": 7, "token": PAYLOAD_TOKEN, "worker": "w", "host": "h", "pid": 1}
    raw = proto.encode_event(
        "failed", rq_id, error="QualityGateFailed: ...", scores=[[1, 0.2], [2, 0.3]], **common
    )
    assert proto.decode_event(raw).scores == [[1, 0.2], [2, 0.3]]
    assert proto.decode_event(proto.encode_event("failed", rq_id, **common)).scores is None
    with pytest.raises(proto.BadMessage):
        proto.decode_event(proto.encode_event("failed", rq_id, scores="lots", **common))
