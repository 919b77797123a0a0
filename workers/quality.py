"""A job's optional quality gate: the judges that score an image against its prompt, and the
seeds a gated job tries.

A job with a ``min_score`` keeps the first image whose score reaches it, trying at most
``quality_tries`` seeds in one attempt (``workers.task.run_job``). Which judge scores is the
worker's configuration, never the job's: a payload naming a command would run code on every
worker that takes it.

- ``BuiltinJudge``: ``workers.tiny.judge``, which reads the synthetic scenes world
  (``workers.tiny.scenes``) back from an image; a prompt outside that world's grammar is an input
  error, found before any image is made.
- ``CommandJudge``: any program, run as ``CMD IMAGE_PATH PROMPT`` (split like a shell would,
  run without one), whose last line on stdout is a score from 0 to 1.

Nothing here imports torch or numpy: the built-in judge is imported when it first scores.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from contract.errors import JobInputError, JobInterrupted, JudgeError, QualityGateFailed
from contract.limits import MAX_JUDGE_NAME, SEED

if TYPE_CHECKING:
    from PIL import Image

BUILTIN = "builtin"
JUDGE_TIMEOUT_S = 60.0
_POLL_S = 0.2  # how often a running judge command is checked for a stop request

SEED_SPACE = SEED.max + 1
# The step from one of a gated job's seeds to its next: 2^32 over the golden ratio, odd. Not 1:
# in a ``num_images`` row the next job's own seed is this job's seed + 1, so two jobs could keep
# the same image. For the first 2,000 tries these steps stay more than 1.2 million seeds away
# from the seed they start at, so no block of consecutive seeds narrower than that (a row's
# images, a seed range) holds another job's try; and being odd, they never repeat a seed
# within 2^32 tries. (torch's CPU generator reads only a seed's low 32 bits: larger seeds would
# repeat images, so the seeds stay in the manifest's range.)
SEED_STEP = 2654435769


def candidate_seed(seed: int, n: int) -> int:
    """The seed of a gated job's try ``n`` (0: the job's own seed)."""
    return (seed + n * SEED_STEP) % SEED_SPACE


def attempt_seeds(seed: int, gate_round: int, tries: int) -> list[int]:
    """The seeds a gated job's attempt tries, in order, when ``gate_round`` (0, 1, ...) of its
    attempts have failed the gate before it: those after every seed a failed round tried, so
    a retry never repeats one, and an attempt that never judged an image (a pause, a shutdown,
    a job lost by Redis, a repair) moves nothing on: the job keeps the image it would have
    had."""
    first = max(0, gate_round) * tries
    return [candidate_seed(seed, first + k) for k in range(tries)]


def gate_round(job: dict[str, object]) -> int:
    """A gated payload's round: what the store sends, or, from a coordinator that sends none,
    its attempt number less one (the rule before rounds were counted)."""
    given = job.get("gate_round")
    if isinstance(given, int):
        return given
    attempt = job.get("attempt")
    return max(0, attempt - 1) if isinstance(attempt, int) else 0


def gate_failure(min_score: float, tried: list[tuple[int, float]]) -> QualityGateFailed:
    """The error of an attempt whose every image scored under the gate."""
    best = max(score for _seed, score in tried)
    seeds = [str(seed) for seed, _score in tried]
    shown = ", ".join(seeds if len(seeds) <= 4 else [*seeds[:2], "...", seeds[-1]])
    n = len(tried)
    return QualityGateFailed(
        f"best score {fmt_score(best)} < {fmt_score(min_score)} after {n} "
        f"seed{'s' if n != 1 else ''} ({shown})",
        tried,
    )


def fmt_score(value: float) -> str:
    """A score for people: 0.8, 0.667, 1."""
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


# -- judges -------------------------------------------------------------------------------------


class Judge(Protocol):
    """Scores an image against its prompt, from 0 (nothing right) to 1."""

    name: str  # what the result records: "builtin", or the command's first word

    def check(self, prompt: str) -> None:
        """Raise JobInputError for a prompt this judge can never score (before any work)."""

    def score(
        self, image: Image.Image, prompt: str, should_stop: Callable[[], bool] | None = None
    ) -> float: ...


def _refusal(prompt: str) -> JobInputError:
    shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    return JobInputError(
        "the built-in judge only knows the scenes world (prompts like 'two small yellow "
        f"squares on a black background'), not {shown!r}; give the worker --judge CMD"
    )


class BuiltinJudge:
    """``workers.tiny.judge``: which stated attributes of a scenes-world prompt the image shows."""

    name = BUILTIN

    def check(self, prompt: str) -> None:
        from workers.tiny.scenes import parse_prompt

        if parse_prompt(prompt) is None:
            raise _refusal(prompt)

    def score(
        self, image: Image.Image, prompt: str, should_stop: Callable[[], bool] | None = None
    ) -> float:
        from workers.tiny.judge import judge

        judgement = judge(image, prompt)
        if judgement is None:
            raise _refusal(prompt)
        return float(judgement.score)


class CommandJudge:
    """A program run as ``CMD IMAGE_PATH PROMPT``: its last stdout line is the score. A
    non-zero exit, no score, a score outside 0..1 or no answer within ``timeout_s`` is a
    JudgeError of one line; the program (and anything it started) is killed on a timeout or
    a stop request."""

    def __init__(self, command: str, *, timeout_s: float = JUDGE_TIMEOUT_S) -> None:
        argv = shlex.split(command)
        if not argv:
            raise ValueError("the judge command is empty")
        self.argv = argv
        self.name = argv[0][:MAX_JUDGE_NAME]
        self.timeout_s = timeout_s

    def check(self, prompt: str) -> None:
        """A command may score any prompt."""

    def score(
        self, image: Image.Image, prompt: str, should_stop: Callable[[], bool] | None = None
    ) -> float:
        with tempfile.TemporaryDirectory(prefix="orchestrate-judge-") as folder:
            path = Path(folder) / "image.png"
            image.save(path, format="PNG")
            out, err, code = self._run([*self.argv, str(path), prompt], should_stop)
        who = f"judge {self.name!r}"
        if code != 0:
            why = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            said = _last_line(err)
            raise JudgeError(f"{who} {why}" + (f": {said[:200]}" if said else ""))
        line = _last_line(out)
        if not line:
            raise JudgeError(f"{who} printed nothing; its last line must be a score from 0 to 1")
        try:
            value = float(line)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise JudgeError(f"{who} printed {line[:80]!r}, not a score from 0 to 1")
        return value

    def _run(self, argv: list[str], should_stop: Callable[[], bool] | None) -> tuple[str, str, int]:
        """Run the command in its own process group; (stdout, stderr, exit status)."""
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a group of its own: a timeout kills its children too
            )
        except OSError as exc:
            raise JudgeError(f"judge {self.name!r} cannot be run: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if should_stop is not None and should_stop():
                        raise JobInterrupted("stopped while the judge was scoring") from None
                    if time.monotonic() >= deadline:
                        raise JudgeError(
                            f"judge {self.name!r} gave no score within {self.timeout_s:g}s"
                        ) from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    if hasattr(os, "killpg"):
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:  # Windows: no process groups
                        proc.kill()
                proc.wait()
                for pipe in (proc.stdout, proc.stderr):
                    if pipe is not None:
                        pipe.close()
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), proc.returncode


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def command_problem(command: str) -> str | None:
    """Why ``--judge COMMAND`` cannot be used on this machine (None: it can)."""
    if command.strip() == BUILTIN:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"--judge {command!r}: cannot be split into words: {exc}"
    if not argv:
        return "--judge is empty; name a command, or 'builtin'"
    if shutil.which(argv[0]) is None:
        return f"--judge: {argv[0]!r} is not a command on PATH nor an executable file"
    return None


def make_judge(command: str | None) -> Judge:
    """The judge of ``--judge``: None or ``builtin`` is the built-in one, anything else a
    command (check it first with ``command_problem``)."""
    if command is None or command.strip() == BUILTIN:
        return BuiltinJudge()
    return CommandJudge(command)
