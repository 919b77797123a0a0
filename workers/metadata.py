"""Image metadata: the A1111 ``parameters`` text that existing tools read, our JSON, and the
standard marking of an AI-generated image (XMP with IPTC's digital source type).

The XMP packet is what the EU AI Act's Article 50(2) asks of a generator ("marked in a
machine-readable format and detectable as artificially generated") in the vocabulary readers
know: ``Iptc4xmpExt:DigitalSourceType`` = IPTC's ``trainedAlgorithmicMedia``, the IPTC 2025.1
``AISystemUsed`` (the model), and ``xmp:CreatorTool`` (this software). It holds no prompt (IPTC's
``AIPromptInformation`` is left out: a transparency mark should not carry what may be private;
the prompt is in the A1111 and JSON chunks, which a user can strip) and nothing that changes
from run to run, so the same job still writes the same bytes. PNG carries it as an ``iTXt``
chunk keyed ``XML:com.adobe.xmp``, which exiftool, Adobe's tools and Pillow read.
"""

from __future__ import annotations

import io
import json
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from contract import __version__
from workers.models.schedulers import SCHEDULERS

PARAMETERS_KEY = "parameters"
JSON_KEY = "orchestrate"
XMP_KEY = "XML:com.adobe.xmp"
SOFTWARE = f"orchestrate-sd {__version__}"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
}


def a1111_quote(value: object) -> str:
    """Quote a value the way A1111 does: JSON string syntax only when it holds ',', ':' or a newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def a1111_parameters(job: dict[str, Any], extra: dict[str, object] | None = None) -> str:
    """A1111's infotext: prompt, ``Negative prompt: ...``, then ``Key: value`` pairs."""
    info = SCHEDULERS[job["scheduler"]]
    pairs: dict[str, object] = {
        "Steps": job["steps"],
        "Sampler": info.a1111_sampler,
    }
    if info.a1111_schedule:
        pairs["Schedule type"] = info.a1111_schedule
    pairs.update(
        {
            "CFG scale": f"{float(job['guidance_scale']):g}",
            "Seed": job["seed"],
            "Size": f"{job['width']}x{job['height']}",
            "Model": job["model"],
            "RNG": "CPU",
        }
    )
    if job.get("quantization") and job["quantization"] != "fp16":
        pairs["Quantization"] = job["quantization"]
    pairs.update(extra or {})
    lines = [job["prompt"]]
    if job.get("negative_prompt"):
        lines.append(f"Negative prompt: {job['negative_prompt']}")
    lines.append(", ".join(f"{k}: {a1111_quote(v)}" for k, v in pairs.items() if v is not None))
    return "\n".join(lines)


def _xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (control characters but tab and
    line breaks), each replaced by U+FFFD."""
    return "".join(
        c if c in "\t\n\r" or (c >= " " and c not in "\ufffe\uffff") else "\ufffd" for c in text
    )


def xmp_packet(model: str) -> str:
    """The XMP that marks an image as made by ``model`` with this software (no prompt, nothing
    that varies between runs)."""
    model = _xml_safe(model)
    description = f"AI-generated image, made by {model} with {SOFTWARE}"
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{_NS["x"]}" x:xmptk={quoteattr(SOFTWARE)}>\n'
        f' <rdf:RDF xmlns:rdf="{_NS["rdf"]}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{_NS["Iptc4xmpExt"]}"\n'
        f'    xmlns:xmp="{_NS["xmp"]}"\n'
        f'    xmlns:dc="{_NS["dc"]}"\n'
        f'    Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"\n'
        f"    Iptc4xmpExt:AISystemUsed={quoteattr(model)}\n"
        f"    xmp:CreatorTool={quoteattr(SOFTWARE)}>\n"
        "   <dc:description>\n"
        "    <rdf:Alt>\n"
        f'     <rdf:li xml:lang="x-default">{escape(description)}</rdf:li>\n'
        "    </rdf:Alt>\n"
        "   </dc:description>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )


def read_xmp(xmp: str) -> dict[str, str]:
    """The marking's fields of an XMP packet (``DigitalSourceType``, ``AISystemUsed``,
    ``CreatorTool``, ``description``), parsed as XML; missing ones are absent, and a packet
    that is not XML (another tool's, damaged) gives none."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xmp.encode("utf-8"))
    except ElementTree.ParseError:
        return {}
    found: dict[str, str] = {}
    for desc in root.iter(f"{{{_NS['rdf']}}}Description"):
        for prefix, name in (
            ("Iptc4xmpExt", "DigitalSourceType"),
            ("Iptc4xmpExt", "AISystemUsed"),
            ("xmp", "CreatorTool"),
        ):
            value = desc.get(f"{{{_NS[prefix]}}}{name}")
            if value is not None:
                found[name] = value
        li = desc.find(f"{{{_NS['dc']}}}description/{{{_NS['rdf']}}}Alt/{{{_NS['rdf']}}}li")
        if li is not None and li.text:
            found["description"] = li.text
    return found


def encode_png(image: Any, parameters: str, meta: dict[str, Any], *, model: str) -> bytes:
    """PNG bytes with a ``parameters`` chunk, a JSON chunk (iTXt where text is not Latin-1) and
    the XMP that marks the image as ``model``'s (``xmp_packet``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_text(JSON_KEY, json.dumps(meta, ensure_ascii=False, sort_keys=True))
    info.add_itxt(XMP_KEY, xmp_packet(model))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_metadata(data: bytes) -> dict[str, Any]:
    """The ``parameters`` text, the JSON chunk and the XMP marking (``read_xmp``; None when
    absent, as in images written before it) of a PNG this project wrote."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        text = dict(getattr(img, "text", {}))
    return {
        "parameters": text.get(PARAMETERS_KEY),
        "meta": json.loads(text[JSON_KEY]) if JSON_KEY in text else None,
        "xmp": read_xmp(text[XMP_KEY]) if XMP_KEY in text else None,
    }
