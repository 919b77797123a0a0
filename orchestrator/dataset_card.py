"""The dataset card every export writes beside its data: ``README.md`` with the YAML front
matter the Hugging Face Hub reads (licence, ``task_categories``, ``size_categories``, tags) and
a body that says what made the images, under what terms they may be used, how each one is
marked as AI-generated and how to reproduce one.

The card is made from the exported rows alone (job fields, the licence each batch recorded), in
a fixed order and with no date, so the same export writes the same bytes. Text that came from a
user (model names, a model card's licence name) is escaped for Markdown tables and quoted for
YAML (a JSON string is a YAML double-quoted scalar).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from contract import __version__

CARD_NAME = "README.md"
# The line that says a card is ours: an export rewrites a card that has it and refuses to touch
# a README.md that has not.
MARK = "<!-- written by orchestrate-sd's export; each export rewrites it -->"

# The Hub's licence ids (https://huggingface.co/docs/hub/repositories-licenses) for the SPDX or
# Hub ids ``workers.models.licences`` records; any other licence is the Hub's "other", with its
# name and link.
_HUB_LICENCES = {
    "Apache-2.0": "apache-2.0",
    "MIT": "mit",
    "CreativeML-OpenRAIL-M": "creativeml-openrail-m",
    "openrail++": "openrail++",
}
# The Hub's size_categories, by upper bound.
_SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
)
FORMATS_TEXT = {
    "imagefolder": "a Hugging Face `imagefolder` (PNG files and `metadata.jsonl`)",
    "parquet": "Parquet with the images embedded",
    "webdataset": "WebDataset tar shards (`.png`, `.json`, `.txt` per sample)",
}


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    for bound, name in _SIZES:
        if n < bound:
            return name
    return "n>100M"


def _yaml(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cell(value: object) -> str:
    """A Markdown table cell: pipes escaped, line breaks as spaces."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _span(values: Iterable[Any]) -> str:
    """``7`` for one value, ``1-4`` for a contiguous run of integers, else a short list."""
    found = sorted(set(values))
    if len(found) == 1:
        return f"{found[0]:g}" if isinstance(found[0], float) else str(found[0])
    if all(isinstance(v, int) for v in found):
        return f"{found[0]}-{found[-1]}" + (
            "" if found[-1] - found[0] + 1 == len(found) else f" ({len(found)} values)"
        )
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in found[:6]]
    return ", ".join(shown) + (", ..." if len(found) > 6 else "")


def _front_matter(rows: Sequence[dict[str, Any]], licences: dict[str, dict[str, Any]]) -> str:
    ids = sorted({_HUB_LICENCES.get(lic["id"], "other") for lic in licences.values()})
    lines = ["---"]
    if len(ids) == 1:
        lines.append(f"license: {ids[0]}")
    else:
        lines.append("license:")
        lines += [f"- {i}" for i in ids]
    others = [lic for lic in licences.values() if lic["id"] not in _HUB_LICENCES]
    if others:
        names = sorted({lic["name"] for lic in others})
        lines.append(
            f"license_name: {_yaml(names[0] if len(names) == 1 else 'several: ' + ', '.join(names))}"
        )
        links = sorted({lic["url"] for lic in others if lic.get("url")})
        if len(links) == 1:
            lines.append(f"license_link: {_yaml(links[0])}")
    lines += [
        "task_categories:",
        "- text-to-image",
        "size_categories:",
        f"- {size_category(len(rows))}",
        "tags:",
        "- synthetic",
        "- ai-generated",
        "- orchestrate-sd",
        "---",
    ]
    return "\n".join(lines)


def dataset_card(rows: Sequence[dict[str, Any]], fmt: str, split: str) -> str:
    """The ``README.md`` of an export of ``rows`` (export rows with their ``licence`` columns
    filled, as ``export_dataset`` makes them) in format ``fmt``, split ``split``. A model whose
    batches recorded different licences (its card changed between submits) is listed with its
    first row's; each row's columns keep its own."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    licences = {model: _licence(group[0]) for model, group in by_model.items()}
    n = len(rows)
    out = [
        _front_matter(rows, licences),
        "",
        MARK,
        "",
        "# A synthetic image dataset",
        "",
        f"{n} image{'s' if n != 1 else ''}, **every one AI-generated** by a text-to-image "
        f"model from a prompt, made and exported by orchestrate-sd {__version__} as "
        f"{FORMATS_TEXT.get(fmt, fmt)}, split `{split}`.",
        "",
        "## What made them",
        "",
        "| model | licence | images | samplers | steps | guidance | seeds | size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in sorted(by_model):
        group = by_model[model]
        out.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    model,
                    licences[model]["id"],
                    len(group),
                    _span(r["scheduler"] for r in group),
                    _span(int(r["steps"]) for r in group),
                    _span(float(r["guidance_scale"]) for r in group),
                    _span(int(r.get("image_seed") or r["seed"]) for r in group),
                    _span(f"{r['width']}x{r['height']}" for r in group),
                )
            )
            + " |"
        )
    batches = Counter(int(r["batch_id"]) for r in rows)
    out += [
        "",
        "Images per batch (a batch is one submitted manifest): "
        + ", ".join(f"batch {b}: {c}" for b, c in sorted(batches.items()))
        + ". Each row's own fields (prompt, negative prompt, seed, steps, guidance, sampler, "
        "size, model, quantization, the seed a quality gate kept, timings) are in the data.",
        "",
        "## Licences",
        "",
        "Each image inherits the terms of the model that made it (the `licence`, "
        "`licence_url` and `licence_restriction` columns give them per image, as recorded "
        "when its batch was submitted). The licence's own text is what binds; in short:",
        "",
    ]
    for lic in sorted({json.dumps(v, sort_keys=True) for v in licences.values()}):
        entry = json.loads(lic)
        models = sorted(m for m, v in licences.items() if v == entry)
        link = f" ([text]({entry['url']}))" if _web(entry.get("url")) else ""
        limit = (
            f" **Limit: its images are {entry['restriction']}.**" if entry["restriction"] else ""
        )
        out.append(
            f"- **{_cell(entry['name'])}**{link}, for {', '.join(f'`{_cell(m)}`' for m in models)}: "
            f"{_cell(entry['outputs'])}.{limit}"
        )
    out += [
        "",
        "## AI marking",
        "",
        "Every PNG says it is AI-generated in a machine-readable form (the EU AI Act's "
        "Article 50(2)): an XMP packet (PNG `iTXt` chunk `XML:com.adobe.xmp`) with IPTC's "
        "`Iptc4xmpExt:DigitalSourceType` = "
        "`http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia`, the model "
        "as `Iptc4xmpExt:AISystemUsed` and the software as `xmp:CreatorTool`; beside it the "
        "A1111 `parameters` text and orchestrate-sd's JSON (`orchestrate` chunk). `exiftool "
        "-XMP:all IMAGE.png` reads the marking. A copy re-encoded or stripped of metadata "
        "loses it: the marking travels with the file, not with the pixels.",
        "",
        "## Reproducing an image",
        "",
        "Every PNG carries everything that made it. With orchestrate-sd installed and the "
        "model at hand, `orchestrate reproduce IMAGE.png` generates it again from its own "
        "metadata and compares the pixels: identical on the same device, thread count and "
        "library versions (the JSON chunk records them); elsewhere it says how far apart "
        "they are (PSNR).",
        "",
    ]
    return "\n".join(out)


def is_ours(text: str) -> bool:
    """Whether a README.md is a card an export wrote (and may rewrite)."""
    return MARK in text


def _web(url: object) -> bool:
    return isinstance(url, str) and url.startswith(("https://", "http://")) and ")" not in url


def _licence(row: dict[str, Any]) -> dict[str, Any]:
    """The licence of an export row: the whole record ``export_dataset`` attached
    (``licence_record``), else what its columns say."""
    record = row.get("licence_record")
    if isinstance(record, dict):
        return record
    return {
        "id": row.get("licence") or "unknown",
        "name": row.get("licence") or "unknown",
        "url": row.get("licence_url"),
        "outputs": "as its licence says",
        "restriction": row.get("licence_restriction"),
    }
