"""The quality gate and the exports on a flow-matching model: a gated job on the built-in
tiny FLUX.1 is scored by the built-in judge seed by seed, like any other family's."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import WorkerSettings
from orchestrator.export import export_dataset
from orchestrator.store import JobStore
from orchestrator.transports.local import LocalWorker
from tests.conftest import submit_text
from workers.metadata import read_png_metadata
from workers.task import PipelineCache

pytestmark = pytest.mark.slow

SCENE = "a red circle on a blue background"


def test_a_gated_flow_job_is_judged_seed_by_seed_and_exported(
    store: JobStore, tmp_path: Path
) -> None:
    submit_text(
        store,
        "prompt,model,seed,steps,scheduler,min_adherence,quality_tries\n"
        f"{SCENE},tiny-flux,5,4,flow_euler,0.0,2\n"  # any image passes: the first seed's
        f"{SCENE},tiny-flux,6,4,flow_euler,1.0,2\n",  # random weights never draw it all
        max_attempts=1,
    )
    settings = WorkerSettings(output_dir=tmp_path / "out", burst=True, poll_seconds=0.05)
    LocalWorker(store, settings, cache=PipelineCache(device="cpu", threads=1)).run()

    passed, failed = store.get_job(1), store.get_job(2)
    assert passed["status"] == "succeeded"
    assert (passed["image_seed"], passed["judge"]) == (5, "builtin")
    assert 0.0 <= passed["score"] < 1.0
    meta = read_png_metadata(Path(passed["output_path"]).read_bytes())["meta"]
    assert meta["run"]["versions"]["model_family"] == "tiny-flux"
    assert meta["quality"]["min_score"] == 0.0 and meta["quality"]["scores"][0][0] == 5

    assert failed["status"] == "failed"
    (attempt,) = failed["attempt_rows"]
    assert attempt["error"].startswith("QualityGateFailed")
    assert "2 images" in attempt["error"] or "2 seeds" in attempt["error"], attempt["error"]

    out = tmp_path / "export"
    export_dataset(store, out, "imagefolder")
    rows = (out / "train" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 1 and '"tiny-flux"' in rows[0]
