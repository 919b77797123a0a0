"""Model licences: the table, model cards' front matter, and what a batch records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.models.licences import (
    APACHE,
    BUILT_IN,
    FLUX1_DEV,
    KNOWN,
    NO_COMPETING_MODELS,
    STABILITY_COMMUNITY,
    UNKNOWN,
    from_model_card,
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
    sd35 = licence_of("stabilityai/stable-diffusion-3.5-large")
    assert sd35 is STABILITY_COMMUNITY
    assert "foundational generative AI model" in str(sd35.restriction)
    assert "USD 1M" in str(sd35.restriction)
    assert licence_of("runwayml/stable-diffusion-v1-5").id == "CreativeML-OpenRAIL-M"
    # RAIL use restrictions bind every use; submit does not warn about them on every batch.
    assert licence_of("stabilityai/stable-diffusion-xl-base-1.0").restriction is None
    for name in ("tiny", "tiny-flow", "tiny-xl", "tiny-flux"):
        assert licence_of(name) is BUILT_IN and BUILT_IN.id == "MIT"
    # The Hub matches ids without regard to case, and so does the table.
    assert licence_of("black-forest-labs/flux.1-dev") is FLUX1_DEV
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
        # Somebody else's MIT model is MIT, not this project's weights.
        ("---\nlicense: MIT\n---\n", ("MIT", None)),
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
    assert "this project" not in found.name


def test_a_local_copy_of_a_known_model_keeps_its_limit(tmp_path: Path) -> None:
    """FLUX.1 [dev]'s and SD 3.5's own cards say license: other, their licence's name, and a
    link relative to the card (a file beside it)."""
    flux = (
        "---\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\n"
        "license_link: LICENSE.md\n---\n"
    )
    (tmp_path / "README.md").write_text(flux)
    found = licence_of(str(tmp_path))
    assert (found.id, found.restriction, found.source) == (
        FLUX1_DEV.id,
        NO_COMPETING_MODELS,
        "model card",
    )
    assert found.url == FLUX1_DEV.url
    sd = "---\nlicense: other\nlicense_name: stabilityai-ai-community\n---\n"
    stability = from_model_card(sd)
    assert stability is not None and stability.restriction == STABILITY_COMMUNITY.restriction
    # Another licence's relative link: dropped for a folder, made absolute for a hub model.
    other = "---\nlicense: other\nlicense_name: acme\nlicense_link: ./LICENSE.md\n---\n"
    local = from_model_card(other)
    assert local is not None and local.url is None
    hub = from_model_card(other, "https://huggingface.co/acme/model")
    assert hub is not None and hub.url == "https://huggingface.co/acme/model/blob/main/LICENSE.md"
    assert hub.hub_id == "other"
    nc = from_model_card("---\nlicense: cc-by-nc-4.0\n---\n")
    assert nc is not None and nc.hub_id == "cc-by-nc-4.0"  # the Hub's own id, kept


def test_front_matter_never_fails_on_yaml_it_does_not_model() -> None:
    """A third-party card may hold any YAML: what this reader does not model gives a value or
    nothing, never an exception (submit reads it)."""
    card = (
        "---\n"
        'a: "\\x41 and \\u00e9"\n'
        'b: "a" or "b"\n'
        "c: 'it''s' # comment\n"
        'd: "My #1" # comment\n'
        'e: "unterminated\n'
        "f: plain # comment\n"
        "---\n"
    )
    found = front_matter(card)
    assert (found["c"], found["d"], found["f"]) == ("it's", "My #1", "plain")
    assert found["b"] == "a" and found["e"] == "unterminated"


def test_a_folder_without_a_card_and_an_unknown_hub_id_are_unknown(tmp_path: Path) -> None:
    assert licence_of(str(tmp_path)) is UNKNOWN
    assert licence_of(str(tmp_path / "not-there")) is UNKNOWN
    assert licence_of("someone/some-model") is UNKNOWN


def test_a_batch_records_each_models_licence_once() -> None:
    recorded_json = json.dumps(licences_of(["tiny", "black-forest-labs/FLUX.1-dev", "tiny"]))
    assert sorted(json.loads(recorded_json)) == ["black-forest-labs/FLUX.1-dev", "tiny"]
    assert recorded(recorded_json, "tiny") == BUILT_IN
    assert recorded(recorded_json, "black-forest-labs/FLUX.1-dev") == FLUX1_DEV
    # A batch from before licences were recorded, or a model it did not name: unknown.
    assert recorded(None, "tiny") is UNKNOWN
    assert recorded(recorded_json, "other/model") is UNKNOWN
