"""Under what terms a model's images may be used: each known model's licence, in one table.

A dataset inherits its generator's terms: FLUX.1 [schnell], FLUX.2 [klein] 4B and Z-Image-Turbo
are Apache 2.0; FLUX.1 [dev] and FLUX.2 [klein] 9B are non-commercial licences whose terms
forbid using the outputs to train a model that competes with theirs; SD 3/3.5 are under the
Stability AI Community Licence (free below USD 1M a year of revenue); SD 1.x, 2.x and SDXL carry
OpenRAIL licences whose use restrictions pass to whoever uses the images. This module answers,
for a model as a manifest names it:

1. a known hub id (``KNOWN``, the exact id; Apple's Core ML conversions carry the original's
   terms), or a built-in model (this project's own weights, trained from code: MIT);
2. else the ``license`` of the model card (the YAML front matter of ``README.md``) of a local
   folder, or of a hub model in this machine's cache: the Hub's licence ids, with
   ``license_name``/``license_link`` for ``other``;
3. else unknown, said as such (a fine-tune may carry other terms than its base model's, so a
   family is never taken for a licence).

Nothing here imports torch or touches the network: ``submit`` calls it on the control plane.
The terms are summarised in one sentence each; the licence's own text (``url``) is what binds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Limits on what the images may be used for (``Licence.restriction``), as ``submit`` warns
# about them ("its images are ...").
NO_COMPETING_MODELS = "not to be used to train, fine-tune or distil a model that competes with it"
REVENUE_CAP = "free for commercial use only below USD 1M annual revenue"


@dataclass(frozen=True)
class Licence:
    """A model's licence and what it says about the images the model makes."""

    id: str  # the SPDX id where one exists (Apache-2.0), else the Hub's licence id or "unknown"
    name: str
    url: str | None
    outputs: str  # what the terms say about the images, in one sentence
    # A use of the images the terms forbid or limit, beyond the use restrictions of a RAIL
    # licence (which bind every use, and which submit does not repeat for every batch).
    restriction: str | None = None
    # Where the answer came from: known model (this table), built-in, model card, unknown.
    source: str = "known model"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Licence:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    def short(self) -> str:
        """One line: the id, and the restriction when there is one."""
        return f"{self.id} ({self.restriction})" if self.restriction else self.id


APACHE = Licence(
    "Apache-2.0",
    "Apache License 2.0",
    "https://www.apache.org/licenses/LICENSE-2.0",
    "the images may be used for any purpose, commercial included",
)
MIT = Licence(
    "MIT",
    "MIT License (this project's weights, trained from code)",
    "https://opensource.org/license/mit",
    "the images may be used for any purpose",
    source="built-in",
)
OPENRAIL_M = Licence(
    "CreativeML-OpenRAIL-M",
    "CreativeML Open RAIL-M",
    "https://huggingface.co/spaces/CompVis/stable-diffusion-license",
    "the images are yours to use, within the licence's use restrictions (its Attachment A), "
    "which pass to whoever uses them",
)
OPENRAIL_PP = Licence(
    "openrail++",
    "CreativeML Open RAIL++-M",
    "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md",
    "the images are yours to use, within the licence's use restrictions (its Attachment A), "
    "which pass to whoever uses them",
)
STABILITY_COMMUNITY = Licence(
    "stabilityai-ai-community",
    "Stability AI Community License",
    "https://stability.ai/community-license-agreement",
    "the images may be used, commercially only by those under USD 1M annual revenue (above "
    "it, an enterprise licence)",
    REVENUE_CAP,
)
FLUX1_DEV = Licence(
    "flux-1-dev-non-commercial-license",
    "FLUX.1 [dev] Non-Commercial License",
    "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
    "the images may be used, commercially too, except to train, fine-tune or distil a model "
    "that competes with FLUX.1 [dev]",
    NO_COMPETING_MODELS,
)
FLUX_NON_COMMERCIAL = Licence(
    "flux-non-commercial-license",
    "FLUX Non-Commercial License",
    "https://huggingface.co/black-forest-labs/FLUX.2-klein-9B/blob/main/LICENSE.md",
    "the images may be used, commercially too, except to train, fine-tune or distil a model "
    "that competes with the FLUX models",
    NO_COMPETING_MODELS,
)
UNKNOWN = Licence(
    "unknown",
    "unknown",
    None,
    "unknown: the model's own licence decides what its images may be used for",
    source="unknown",
)

# Known hub ids, exactly as the Hub spells them.
KNOWN: dict[str, Licence] = {
    "runwayml/stable-diffusion-v1-5": OPENRAIL_M,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": OPENRAIL_M,
    "CompVis/stable-diffusion-v1-4": OPENRAIL_M,
    "apple/coreml-stable-diffusion-v1-5": OPENRAIL_M,
    "apple/coreml-stable-diffusion-v1-5-palettized": OPENRAIL_M,
    "stabilityai/stable-diffusion-2-1": OPENRAIL_PP,
    "stabilityai/stable-diffusion-2-1-base": OPENRAIL_PP,
    "apple/coreml-stable-diffusion-2-1-base": OPENRAIL_PP,
    "apple/coreml-stable-diffusion-2-1-base-palettized": OPENRAIL_PP,
    "stabilityai/stable-diffusion-xl-base-1.0": OPENRAIL_PP,
    "apple/coreml-stable-diffusion-xl-base": OPENRAIL_PP,
    "apple/coreml-stable-diffusion-mixed-bit-palettization": OPENRAIL_PP,
    "stabilityai/stable-diffusion-3-medium-diffusers": STABILITY_COMMUNITY,
    "stabilityai/stable-diffusion-3.5-medium": STABILITY_COMMUNITY,
    "stabilityai/stable-diffusion-3.5-large": STABILITY_COMMUNITY,
    "stabilityai/stable-diffusion-3.5-large-turbo": STABILITY_COMMUNITY,
    "black-forest-labs/FLUX.1-schnell": APACHE,
    "black-forest-labs/FLUX.1-dev": FLUX1_DEV,
    "black-forest-labs/FLUX.2-klein-4B": APACHE,
    "black-forest-labs/FLUX.2-klein-9B": FLUX_NON_COMMERCIAL,
    "Tongyi-MAI/Z-Image-Turbo": APACHE,
}

# The Hub's licence ids a model card may give, where they are SPDX ids or known here.
_HUB_IDS: dict[str, Licence] = {
    "apache-2.0": APACHE,
    "mit": MIT,
    "creativeml-openrail-m": OPENRAIL_M,
    "openrail++": OPENRAIL_PP,
}


def front_matter(text: str) -> dict[str, str]:
    """The top-level ``key: value`` scalars of a model card's YAML front matter (between the
    first two ``---`` lines); quotes are taken off, lists and nested keys are skipped. Enough
    for ``license``, ``license_name`` and ``license_link``, without a YAML library on the
    control plane."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    found: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            return found
        if not line or line[0] in " \t-#" or ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = value.split(" #", 1)[0].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = json.loads(value) if value[0] == '"' else value[1:-1].replace("''", "'")
        if value:
            found[key.strip()] = value
    return {}  # no closing ---: not front matter


def from_model_card(text: str) -> Licence | None:
    """The licence a model card states, or None when it states none."""
    meta = front_matter(text)
    hub_id = meta.get("license", "").strip()
    if not hub_id:
        return None
    known = _HUB_IDS.get(hub_id.lower())
    if known is not None:
        return Licence(**{**known.as_dict(), "source": "model card"})
    name = meta.get("license_name") or hub_id
    return Licence(
        hub_id if hub_id != "other" else name,
        name,
        meta.get("license_link"),
        f"as its licence ({name}) says: read it before using the images",
        None,
        "model card",
    )


def _card_of(model: str) -> str | None:
    """The text of ``model``'s README.md: in its folder, or in this machine's hub cache."""
    from workers.models import expand_path, looks_like_path

    folder = expand_path(model)
    candidates = [folder / "README.md"] if looks_like_path(model) or folder.is_dir() else []
    if not candidates and model.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "README.md")
        except Exception:  # no huggingface_hub (a control-plane install), not a repo id
            cached = None
        if isinstance(cached, str):
            candidates.append(Path(cached))
    for path in candidates:
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return None


def licence_of(model: str) -> Licence:
    """The licence of ``model`` as a manifest names it (see the module's docstring)."""
    from workers.models import is_builtin

    if is_builtin(model):
        return MIT
    if model in KNOWN:
        return KNOWN[model]
    card = _card_of(model)
    found = from_model_card(card) if card is not None else None
    return found if found is not None else UNKNOWN


def licences_of(models: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each distinct model's licence, as the JSON a batch records (``batches.licences_json``)."""
    return {model: licence_of(model).as_dict() for model in sorted(set(models))}


def recorded(licences_json: str | None, model: str) -> Licence:
    """The licence a batch recorded for ``model`` (unknown where it recorded none: a batch
    submitted before licences were recorded)."""
    return from_record(json.loads(licences_json or "{}").get(model))


def from_record(entry: object) -> Licence:
    """A licence as a batch recorded it (``Licence.as_dict``), unknown for None."""
    return Licence.from_dict(entry) if isinstance(entry, dict) else UNKNOWN
