"""Under what terms a model's images may be used: each known model's licence, in one table.

A dataset inherits its generator's terms: FLUX.1 [schnell], FLUX.2 [klein] 4B and Z-Image-Turbo
are Apache 2.0; FLUX.1 [dev] and FLUX.2 [klein] 9B are non-commercial licences whose terms
forbid using the outputs to train a model that competes with theirs; SD 3/3.5 are under the
Stability AI Community Licence (no outputs to create or improve a foundational generative
model; commercial use free below USD 1M a year of revenue); SD 1.x, 2.x and SDXL carry
OpenRAIL licences whose use restrictions pass to whoever uses the images. This module answers,
for a model as a manifest names it:

1. a known hub id (``KNOWN``, matched as the Hub matches, without regard to case; Apple's Core
   ML conversions carry the original's terms), or a built-in model (this project's own
   weights, trained from code: MIT);
2. else the ``license`` of the model card (the YAML front matter of ``README.md``) of a local
   folder, or of a hub model in this machine's cache: the Hub's licence ids, with
   ``license_name``/``license_link`` for ``other`` (the names of the licences in the table,
   FLUX's and Stability's, are taken for the table's entry: a local copy of FLUX.1 [dev] keeps
   its limit);
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
NO_FOUNDATION_MODELS = (
    "not to be used to create or improve a foundational generative AI model (other than the "
    "licensed models' derivatives), and free for commercial use only below USD 1M annual revenue"
)


@dataclass(frozen=True)
class Licence:
    """A model's licence and what it says about the images the model makes."""

    id: str  # the SPDX id where one exists (Apache-2.0), else the Hub's licence id or "unknown"
    name: str
    url: str | None  # the licence's text on the web (http or https), or None
    outputs: str  # what the terms say about the images, in one sentence
    # A use of the images the terms forbid or limit, beyond the use restrictions of a RAIL
    # licence (which bind every use, and which submit does not repeat for every batch).
    restriction: str | None = None
    # Where the answer came from: known model (this table), built-in, model card, unknown.
    source: str = "known model"
    # The Hub's licence id (a dataset card's ``license``): apache-2.0, mit, openrail++,
    # "other" (with ``id`` as its ``license_name``), "unknown".
    hub_id: str = "other"

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
    hub_id="apache-2.0",
)
MIT = Licence(
    "MIT",
    "MIT License",
    "https://opensource.org/license/mit",
    "the images may be used for any purpose",
    hub_id="mit",
)
BUILT_IN = Licence(
    **{
        **MIT.as_dict(),
        "name": "MIT License (this project's weights, trained from code)",
        "source": "built-in",
    }
)
OPENRAIL_M = Licence(
    "CreativeML-OpenRAIL-M",
    "CreativeML Open RAIL-M",
    "https://huggingface.co/spaces/CompVis/stable-diffusion-license",
    "the images are yours to use, within the licence's use restrictions (its Attachment A), "
    "which pass to whoever uses them",
    hub_id="creativeml-openrail-m",
)
OPENRAIL_PP = Licence(
    "openrail++",
    "CreativeML Open RAIL++-M",
    "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md",
    "the images are yours to use, within the licence's use restrictions (its Attachment A), "
    "which pass to whoever uses them",
    hub_id="openrail++",
)
STABILITY_COMMUNITY = Licence(
    "stabilityai-ai-community",
    "Stability AI Community License",
    "https://stability.ai/community-license-agreement",
    "the images may be used within its acceptable use policy, but not to create or improve a "
    "foundational generative AI model, and commercially only by those under USD 1M annual "
    "revenue (above it, an enterprise licence)",
    NO_FOUNDATION_MODELS,
)
FLUX1_DEV = Licence(
    "flux-1-dev-non-commercial-license",
    "FLUX.1 [dev] Non-Commercial License",
    "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
    "the images may be used, commercially too, except to train, fine-tune or distil a model "
    "that competes with FLUX.1 [dev]; the model itself is for non-commercial use, and the "
    "licence asks for content filtering before outputs are shared: read it before any "
    "commercial use",
    NO_COMPETING_MODELS,
)
FLUX_NON_COMMERCIAL = Licence(
    "flux-non-commercial-license",
    "FLUX Non-Commercial License",
    "https://huggingface.co/black-forest-labs/FLUX.2-klein-9B/blob/main/LICENSE.md",
    "the images may be used, commercially too, except to train, fine-tune or distil a model "
    "that competes with the FLUX models; the model itself is for non-commercial use: read it "
    "before any commercial use",
    NO_COMPETING_MODELS,
)
UNKNOWN = Licence(
    "unknown",
    "unknown",
    None,
    "unknown: the model's own licence decides what its images may be used for",
    source="unknown",
    hub_id="unknown",
)

# Known hub ids, as the Hub spells them (looked up without regard to case, as the Hub does).
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

_KNOWN_LOWER = {k.lower(): v for k, v in KNOWN.items()}
# The Hub's licence ids a model card may give that the table knows (SPDX ids where they exist)
# and the ``license_name`` of an ``other`` licence the table knows (its own id, as the models'
# cards on the Hub spell it).
_HUB_IDS: dict[str, Licence] = {
    lic.hub_id: lic for lic in (APACHE, MIT, OPENRAIL_M, OPENRAIL_PP)
} | {lic.id: lic for lic in (STABILITY_COMMUNITY, FLUX1_DEV, FLUX_NON_COMMERCIAL)}


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
        value = _scalar(value.strip())
        if value:
            found[key.strip()] = value
    return {}  # no closing ---: not front matter


def _scalar(value: str) -> str:
    """A YAML scalar as written on one line: a quoted one up to its closing quote (escapes of
    the common kinds undone), a plain one up to a `` #`` comment."""
    if value[:1] == "'":
        end = 1
        while (end := value.find("'", end)) != -1 and value[end : end + 2] == "''":
            end += 2
        return value[1:end].replace("''", "'") if end != -1 else value
    if value[:1] == '"':
        out, i = [], 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
                out.append({"n": "\n", "t": "\t"}.get(value[i], value[i]))
            else:
                out.append(value[i])
            i += 1
        return "".join(out)
    return value.split(" #", 1)[0].strip()


def from_model_card(text: str, base: str | None = None) -> Licence | None:
    """The licence a model card states, or None when it states none. ``base``: the web address
    a relative ``license_link`` (``LICENSE.md``) is relative to (a hub model's page); without
    one a relative link is dropped (it names a file beside the card, not a page)."""
    meta = front_matter(text)
    hub_id = meta.get("license", "").strip().lower()
    if not hub_id:
        return None
    name = meta.get("license_name", "").strip()
    known = _HUB_IDS.get(name.lower() if hub_id == "other" and name else hub_id)
    if known is not None:
        return Licence(**{**known.as_dict(), "source": "model card"})
    link = meta.get("license_link", "").strip()
    if not link.startswith(("https://", "http://")):
        link = f"{base}/blob/main/{link.lstrip('./')}" if base and link else ""
    label = name or hub_id
    return Licence(
        label,
        label,
        link or None,
        f"as its licence ({label}) says: read it before using the images",
        None,
        "model card",
        hub_id,
    )


def _is_folder(model: str) -> bool:
    from workers.models import expand_path, looks_like_path

    return looks_like_path(model) or expand_path(model).is_dir()


def _card_of(model: str) -> str | None:
    """The text of ``model``'s README.md: in its folder, or in this machine's hub cache."""
    from workers.models import expand_path

    folder = expand_path(model)
    candidates = [folder / "README.md"] if _is_folder(model) else []
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
        return BUILT_IN
    if model.lower() in _KNOWN_LOWER:
        return _KNOWN_LOWER[model.lower()]
    card = _card_of(model)
    base = None if _is_folder(model) else f"https://huggingface.co/{model}"
    found = from_model_card(card, base) if card is not None else None
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
