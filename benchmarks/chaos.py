"""Chaos at scale: seeded rounds of the chaos suite for as long as asked, with more jobs per
round and Redis outages of 10-30 s, counting faults injected and jobs lost, doubled, orphaned or
made again after their result was recorded (the goal is zero of each). Writes ``benchmarks/results/chaos.json``.

    .venv/bin/python benchmarks/chaos.py --minutes 30 --jobs 300

Each round: a private redis-server, SQLite file and output folder; a coordinator, two RQ
workers and a local worker (fake pipeline: the tests' agents) as real processes; 2-4 faults
from the suite's list at random moments (SIGKILL of any process, a kill at a fault point, a
Redis outage with or without its data, Redis errors, a second coordinator, a 20,000-row submit
during work, cancel + retry racing a finishing worker, a full output disk, an output folder
read-only for as long as an outage, a coordinator SIGSTOPped at a fault point past its lease,
taken over and woken beside its successor); then a clean finish and the invariants. What it
does not measure: real pipelines (the work is a fake image), and several machines (everything
runs on this one).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import save  # noqa: E402
from tests.chaos.harness import FAULTS, run_round  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--jobs", type=int, default=300, help="jobs per round")
    ap.add_argument("--seed", type=int, default=1, help="the first round's seed")
    ap.add_argument("--outage", type=float, nargs=2, default=(10.0, 30.0), metavar=("MIN", "MAX"))
    args = ap.parse_args()

    deadline = time.monotonic() + args.minutes * 60
    rng = random.Random(args.seed)
    rounds: list[dict[str, object]] = []
    faults: Counter[str] = Counter()
    lost = doubled = orphaned = wrong = remade = jobs = 0
    failures = []
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        seed = rng.randint(1, 10**9)
        tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
        try:
            o = run_round(
                tmp / "round",
                seed,
                jobs=args.jobs,
                outage_s=(args.outage[0], args.outage[1]),
                window_s=max(3.0, args.jobs / 15),  # spread over most of a round's work
            )
        except Exception as exc:  # a round that could not even finish is a failure too
            failures.append(f"seed {seed}: {type(exc).__name__}: {str(exc)[:2000]}")
            print(f"round {len(rounds) + 1} (seed {seed}) FAILED: {exc!s:.300}", flush=True)
            rounds.append({"seed": seed, "error": str(exc)[:2000]})
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        faults.update(f for f in o.faults if f in FAULTS)
        jobs += o.jobs
        lost += len(o.lost)
        doubled += len(o.doubled)
        wrong += len(o.wrong_bytes)
        orphaned += o.orphaned
        remade += len(o.remade)
        if not o.ok:
            failures.append(o.summary())
        rounds.append(
            {
                "seed": seed,
                "jobs": o.jobs,
                "faults": o.faults,
                "seconds": round(o.seconds, 1),
                "lost": o.lost,
                "doubled": o.doubled,
                "wrong_bytes": o.wrong_bytes,
                "orphaned": o.orphaned,
                "remade": o.remade,
            }
        )
        print(
            f"round {len(rounds)} (seed {seed}, {o.seconds:.0f}s): {', '.join(o.faults)} -> "
            f"lost {len(o.lost)}, doubled {len(o.doubled)}, wrong {len(o.wrong_bytes)}, "
            f"orphaned {o.orphaned}, remade {len(o.remade)}",
            flush=True,
        )
    result = {
        "minutes": round((time.monotonic() - t0) / 60, 1),
        "rounds": len(rounds),
        "jobs": jobs,
        "faults_injected": sum(faults.values()),
        "faults_by_kind": dict(sorted(faults.items())),
        "jobs_lost": lost,
        "jobs_doubled": doubled,
        "jobs_with_wrong_bytes": wrong,
        "orphaned_or_unverified": orphaned,
        "jobs_remade": remade,
        "failed_rounds": failures,
        "outage_s": list(args.outage),
        "jobs_per_round": args.jobs,
        "per_round": rounds,
    }
    print(
        f"\n{result['rounds']} rounds in {result['minutes']} min, {jobs} jobs, "
        f"{result['faults_injected']} faults: lost {lost}, doubled {doubled}, wrong bytes "
        f"{wrong}, orphaned {orphaned}, remade {remade}; {len(failures)} failed rounds"
    )
    save("chaos", result)


if __name__ == "__main__":
    main()
