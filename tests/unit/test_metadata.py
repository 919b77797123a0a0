from __future__ import annotations

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
    data = encode_png(img, params, {"job": {"id": 1, "prompt": "京都の夜"}})
    meta = read_png_metadata(data)
    assert meta["parameters"] == params
    assert meta["meta"] == {"job": {"id": 1, "prompt": "京都の夜"}}
