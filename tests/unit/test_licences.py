"""Model licences: the table, model cards' front matter, and what a batch records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.models.licences import (
    APACHE,
    FLUX1_DEV,
    KNOWN,
    MIT,
    NO_COMPETING_MODELS,
    UNKNOWN,
    front_matter,
    licence_of,
    licences_of,
    recorded,
)


def test_known_models_and_built_ins() -> None:
    assert licence_of("black-forest-labs/FLUX.1-schnell") is APACHE
    assert licence_of("black-forest-labs/FLUX.2-klein-4B") is APACHE
    dev = licence_of("black-forest-labs/FLUX.1-dev")
    assert dev is FLUX1_DEV and dev.restriction == NO_COMPETING_MODELS
    assert licence_of("stabilityai/stable-diffusion-3.5-large").restriction is not None
    assert licence_of("runwayml/stable-diffusion-v1-5").id == "CreativeML-OpenRAIL-M"
    # RAIL use restrictions bind every use; submit does not warn about them on every batch.
    assert licence_of("stabilityai/stable-diffusion-xl-base-1.0").restriction is None
    for name in ("tiny", "tiny-flow", "tiny-xl", "tiny-flux"):
        assert licence_of(name) is MIT
    # Ids are exact, as the Hub spells them: another spelling is another (unknown) model.
    assert licence_of("black-forest-labs/flux.1-dev") is UNKNOWN
    assert all(k.count("/") == 1 for k in KNOWN)


def test_front_matter_reads_top_level_scalars_only() -> None:
    card = (
        "---\n"
        "license: other  # a comment\n"
        'license_name: "My: licence"\n'
        "license_link: 'https://example.com/it''s'\n"
        "tags:\n"
        "- license: not-this\n"
        "  nested: no\n"
        "---\n"
        "license: nor-this\n"
    )
    assert front_matter(card) == {
        "license": "other",
        "license_name": "My: licence",
        "license_link": "https://example.com/it's",
    }
    assert front_matter("no front matter\nlicense: mit\n") == {}
    assert front_matter("---\nlicense: mit\n") == {}  # never closed: not front matter
    assert front_matter("\ufeff---\nlicense: mit\n---\n") == {"license": "mit"}


@pytest.mark.parametrize(
    ("readme", "expected"),
    [
        ("---\nlicense: apache-2.0\n---\n# A model\n", ("Apache-2.0", None)),
        ("---\nlicense: openrail++\n---\n", ("openrail++", None)),
        (
            "---\nlicense: other\nlicense_name: acme-research\n"
            "license_link: https://acme.example/licence\n---\n",
            ("acme-research", "https://acme.example/licence"),
        ),
        ("---\ntags: [x]\n---\n", ("unknown", None)),
        ("# no front matter\n", ("unknown", None)),
    ],
)
def test_a_local_folders_model_card_gives_its_licence(
    tmp_path: Path, readme: str, expected: tuple[str, str | None]
) -> None:
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    found = licence_of(str(tmp_path))
    assert found.id == expected[0]
    if expected[1] is not None:
        assert found.url == expected[1]
    assert found.source == ("unknown" if expected[0] == "unknown" else "model card")


def test_a_folder_without_a_card_and_an_unknown_hub_id_are_unknown(tmp_path: Path) -> None:
    assert licence_of(str(tmp_path)) is UNKNOWN
    assert licence_of(str(tmp_path / "not-there")) is UNKNOWN
    assert licence_of("someone/some-model") is UNKNOWN


def test_a_batch_records_each_models_licence_once() -> None:
    recorded_json = json.dumps(licences_of(["tiny", "black-forest-labs/FLUX.1-dev", "tiny"]))
    assert sorted(json.loads(recorded_json)) == ["black-forest-labs/FLUX.1-dev", "tiny"]
    assert recorded(recorded_json, "tiny") == MIT
    assert recorded(recorded_json, "black-forest-labs/FLUX.1-dev") == FLUX1_DEV
    # A batch from before licences were recorded, or a model it did not name: unknown.
    assert recorded(None, "tiny") is UNKNOWN
    assert recorded(recorded_json, "other/model") is UNKNOWN
