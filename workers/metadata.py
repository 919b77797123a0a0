"""Image metadata: the A1111 ``parameters`` text that existing tools read, and our JSON."""

from __future__ import annotations

import io
import json
from typing import Any

from workers.models.schedulers import SCHEDULERS

PARAMETERS_KEY = "parameters"
JSON_KEY = "orchestrate"


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


def encode_png(image: Any, parameters: str, meta: dict[str, Any]) -> bytes:
    """PNG bytes with a ``parameters`` chunk and a JSON chunk (iTXt where text is not Latin-1)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_text(JSON_KEY, json.dumps(meta, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_png_metadata(data: bytes) -> dict[str, Any]:
    """The ``parameters`` text and the JSON chunk of a PNG this project wrote."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        text = dict(getattr(img, "text", {}))
    return {
        "parameters": text.get(PARAMETERS_KEY),
        "meta": json.loads(text[JSON_KEY]) if JSON_KEY in text else None,
    }
