from __future__ import annotations

import io

from PIL import Image

from workers.metadata import a1111_parameters, a1111_quote, encode_png, read_png_metadata

JOB = {
    "prompt": "a red fox, in the snow",
    "negative_prompt": "blurry",
    "seed": 7667,
    "steps": 20,
    "guidance_scale": 7.5,
    "width": 512,
    "height": 512,
    "scheduler": "dpmpp_2m_karras",
    "model": "runwayml/stable-diffusion-v1-5",
    "quantization": "fp16",
}


def test_a1111_quotes_only_values_with_separators() -> None:
    assert a1111_quote("tiny") == "tiny"
    assert a1111_quote("a, b") == '"a, b"'
    assert a1111_quote("C:\\models") == '"C:\\\\models"'
    assert a1111_quote('say "hi", 京都') == '"say \\"hi\\", 京都"'


def test_parameters_text_has_a1111_layout() -> None:
    assert a1111_parameters(JOB) == (
        "a red fox, in the snow\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 7667, "
        "Size: 512x512, Model: runwayml/stable-diffusion-v1-5, RNG: CPU"
    )


def test_no_negative_prompt_line_when_empty_and_quantization_shown() -> None:
    job = {**JOB, "negative_prompt": "", "scheduler": "pndm", "quantization": "fp16"}
    text = a1111_parameters(job, {"Backend": "diffusers, cpu"})
    assert text.splitlines()[1].startswith("Steps: 20, Sampler: PLMS, CFG scale: 7.5")
    assert text.endswith('Backend: "diffusers, cpu"')


def test_png_chunks_round_trip_unicode() -> None:
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    params = a1111_parameters({**JOB, "prompt": "京都の夜, neon"})
    data = encode_png(img, params, {"job": {"id": 1, "prompt": "京都の夜"}}, model="tiny")
    meta = read_png_metadata(data)
    assert meta["parameters"] == params
    assert meta["meta"] == {"job": {"id": 1, "prompt": "京都の夜"}}


def test_every_png_is_marked_as_ai_generated_in_xmp() -> None:
    from workers.metadata import SOFTWARE, TRAINED_ALGORITHMIC_MEDIA

    img = Image.new("RGB", (8, 8), (10, 20, 30))
    model = 'C:\\models\\a & "b" <c>'  # XML's special characters, escaped and read back
    data = encode_png(img, a1111_parameters(JOB), {"job": JOB}, model=model)
    xmp = read_png_metadata(data)["xmp"]
    assert xmp["DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert xmp["AISystemUsed"] == model
    assert xmp["CreatorTool"] == SOFTWARE
    assert xmp["description"].startswith("AI-generated image, made by ")
    # Nothing in the packet varies between runs: the same job writes the same bytes.
    assert encode_png(img, a1111_parameters(JOB), {"job": JOB}, model=model) == data
    # The prompt is not in the marking.
    assert "fox" not in data.split(b"XML:com.adobe.xmp", 1)[1].split(b"IEND")[0].decode("latin-1")


def test_exiftool_reads_the_iptc_source_type(tmp_path) -> None:
    """exiftool (``apt-get install libimage-exiftool-perl``; ``scripts/setup.sh --test``
    installs it) reads the marking as IPTC's field, not as private text."""
    import json
    import shutil
    import subprocess

    from workers.metadata import SOFTWARE, TRAINED_ALGORITHMIC_MEDIA

    exiftool = shutil.which("exiftool")
    assert exiftool, "exiftool is not installed: ./scripts/setup.sh --test installs it"
    path = tmp_path / "x.png"
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    path.write_bytes(encode_png(img, a1111_parameters(JOB), {"job": JOB}, model="tiny"))
    out = subprocess.run(
        [exiftool, "-j", "-n", "-G1", "-XMP:all", "-PNG:all", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    tags = json.loads(out.stdout)[0]
    assert tags["XMP-iptcExt:DigitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert tags["XMP-iptcExt:AISystemUsed"] == "tiny"
    assert tags["XMP-xmp:CreatorTool"] == SOFTWARE
    assert tags["XMP-dc:Description"].startswith("AI-generated image, made by tiny")
    assert tags["PNG:Parameters"].startswith("a red fox, in the snow")


def test_a_model_name_xml_cannot_hold_and_a_foreign_packet_do_not_break_reading() -> None:
    from PIL.PngImagePlugin import PngInfo

    from workers.metadata import JSON_KEY, XMP_KEY

    img = Image.new("RGB", (8, 8))
    data = encode_png(img, "p", {"job": JOB}, model="a\x01b\x1bc")
    assert read_png_metadata(data)["xmp"]["AISystemUsed"] == "a\ufffdb\ufffdc"
    # Another tool's damaged packet: the A1111 and JSON chunks still read, the marking is empty.
    info = PngInfo()
    info.add_text("parameters", "p")
    info.add_text(JSON_KEY, '{"job": {}}')
    info.add_itxt(XMP_KEY, "<x:xmpmeta><unclosed>")
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    meta = read_png_metadata(buf.getvalue())
    assert (meta["parameters"], meta["meta"], meta["xmp"]) == ("p", {"job": {}}, {})
