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
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from contract import __version__

CARD_NAME = "README.md"
# The line that says a card is ours: an export rewrites a card that has it and refuses to touch
# a README.md that has not.
MARK = "<!-- written by orchestrate-sd's export; each export rewrites it -->"

# A card's data, for the next export into the same folder: each split's summary, so a card
# describes every split there, not only the last one exported.
_DATA = "<!-- orchestrate-sd card data: "
# The Hub's size_categories, by upper bound.
_SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)
FORMATS_TEXT = {
    "imagefolder": "a Hugging Face `imagefolder` (PNG files and `metadata.jsonl`)",
    "parquet": "Parquet with the images embedded",
    "webdataset": "WebDataset tar shards (`.png`, `.json`, `.txt` per sample)",
}
_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|#!"})


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` rows."""
    for bound, name in _SIZES:
        if n < bound:
            return name
    return "n>1T"


def _yaml(value: str) -> str:
    """A YAML scalar: an id as it is (``apache-2.0``, ``openrail++``), anything else
    double-quoted (JSON's string syntax, which YAML reads, control characters escaped)."""
    if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value):
        return value
    return json.dumps(value, ensure_ascii=True)


def _text(value: object) -> str:
    """Text from a user (a model name, a model card's licence name) as inert Markdown: line
    breaks as spaces, Markdown's and HTML's punctuation escaped."""
    return " ".join(str(value).split()).translate(_MARKDOWN)


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


def summarize(rows: Sequence[dict[str, Any]], fmt: str) -> dict[str, Any]:
    """What a card says of one split's export (JSON): its format, counts, and per model the
    licence its batches recorded and the spans of what made the images. A model whose batches
    recorded different licences (its card changed between submits) is listed with its first
    row's; each row's columns keep its own."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_model[row["model"]].append(row)
    models = []
    for model in sorted(by_model):
        group = by_model[model]
        models.append(
            {
                "model": model,
                "licence": _licence(group[0]),
                "images": len(group),
                "samplers": _span(r["scheduler"] for r in group),
                "steps": _span(int(r["steps"]) for r in group),
                "guidance": _span(float(r["guidance_scale"]) for r in group),
                "seeds": _span(
                    int(r["seed"] if r.get("image_seed") is None else r["image_seed"])
                    for r in group
                ),
                "sizes": _span(f"{r['width']}x{r['height']}" for r in group),
            }
        )
    batches = Counter(int(r["batch_id"]) for r in rows)
    return {
        "format": fmt,
        "images": len(rows),
        "batches": {str(b): c for b, c in sorted(batches.items())},
        "models": models,
    }


def earlier_splits(card: str | None) -> dict[str, dict[str, Any]]:
    """The split summaries a card this module wrote carries ({} for none or an unreadable one)."""
    if not card:
        return {}
    for line in card.splitlines():
        if line.startswith(_DATA) and line.endswith(" -->"):
            try:
                data = json.loads(line[len(_DATA) : -len(" -->")])
            except ValueError:
                return {}
            splits = data.get("splits") if isinstance(data, dict) else None
            return splits if isinstance(splits, dict) else {}
    return {}


def _licences(splits: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every licence of every split, once each, in a fixed order."""
    found = {json.dumps(m["licence"], sort_keys=True) for s in splits.values() for m in s["models"]}
    return [json.loads(x) for x in sorted(found)]


def _front_matter(splits: dict[str, dict[str, Any]]) -> str:
    licences = _licences(splits)
    ids = sorted({lic["hub_id"] for lic in licences})
    lines = ["---"]
    if len(ids) == 1:
        lines.append(f"license: {_yaml(ids[0])}")
    else:
        lines.append("license:")
        lines += [f"- {_yaml(i)}" for i in ids]
    # The Hub's card has room for one other licence's name and link; with several, the body
    # lists them.
    others = [lic for lic in licences if lic["hub_id"] == "other"]
    if len(others) == 1:
        lines.append(f"license_name: {_yaml(others[0]['id'])}")
        if _web(others[0].get("url")):
            lines.append(f"license_link: {_yaml(others[0]['url'])}")
    total = sum(int(s["images"]) for s in splits.values())
    lines += [
        "task_categories:",
        "- text-to-image",
        "size_categories:",
        f"- {size_category(total)}",
        "tags:",
        "- synthetic",
        "- ai-generated",
        "- orchestrate-sd",
        "---",
    ]
    return "\n".join(lines)


def dataset_card(
    rows: Sequence[dict[str, Any]], fmt: str, split: str, earlier: str | None = None
) -> str:
    """The ``README.md`` of an export of ``rows`` (export rows with their licence filled in, as
    ``export_dataset`` makes them) in format ``fmt`` as split ``split``; ``earlier``: the card
    already in the folder (this module's), whose other splits it keeps describing."""
    splits = {k: v for k, v in earlier_splits(earlier).items() if k != split}
    splits[split] = summarize(rows, fmt)
    splits = dict(sorted(splits.items()))
    total = sum(int(s["images"]) for s in splits.values())
    data = json.dumps({"splits": splits}, sort_keys=True, ensure_ascii=True)
    out = [
        _front_matter(splits),
        "",
        MARK,
        _DATA + data.replace("<", "\\u003c").replace(">", "\\u003e") + " -->",
        "",
        "# A synthetic image dataset",
        "",
        f"{total} image{'s' if total != 1 else ''}, **every one AI-generated** by a text-to-image "
        f"model from a prompt, made and exported by orchestrate-sd {__version__}: "
        + "; ".join(
            f"split `{name}`, {s['images']} as {FORMATS_TEXT.get(s['format'], s['format'])}"
            for name, s in splits.items()
        )
        + ".",
        "",
        "## What made them",
        "",
        "| split | model | licence | images | samplers | steps | guidance | seeds | size |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in splits.items():
        for m in s["models"]:
            cells = [name, m["model"], m["licence"]["id"], m["images"], m["samplers"]]
            cells += [m["steps"], m["guidance"], m["seeds"], m["sizes"]]
            out.append("| " + " | ".join(_text(v) for v in cells) + " |")
    out += [
        "",
        "Images per batch (a batch is one submitted manifest): "
        + "; ".join(
            f"split {name}: " + ", ".join(f"batch {b}: {c}" for b, c in s["batches"].items())
            for name, s in splits.items()
        )
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
    for lic in _licences(splits):
        models = sorted(
            {m["model"] for s in splits.values() for m in s["models"] if m["licence"] == lic}
        )
        link = f" ([text](<{lic['url']}>))" if _web(lic.get("url")) else ""
        limit = (
            f" **Limit: its images are {_text(lic['restriction'])}.**" if lic["restriction"] else ""
        )
        out.append(
            f"- **{_text(lic['name'])}**{link}, for {', '.join(_text(m) for m in models)}: "
            f"{_text(lic['outputs'])}.{limit}"
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
    """Whether a licence's address is a web page to link to (a model card's may be anything)."""
    return (
        isinstance(url, str)
        and url.startswith(("https://", "http://"))
        and not any(c in url for c in '<> \n\t"')
    )


def _licence(row: dict[str, Any]) -> dict[str, Any]:
    """The licence record ``export_dataset`` attached to an export row."""
    record: dict[str, Any] = row["licence_record"]
    return record
