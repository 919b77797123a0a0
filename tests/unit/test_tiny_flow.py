"""The built-in tiny flow-matching models (tiny-sd3, tiny-flux, tiny-flux2, tiny-zimage) and the
tokenizers written for them: built offline from code, loaded with their pipelines'
``from_pretrained``, drawing the same 64x64 image for the same seed, the same bytes every
build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.tiny.flow import (
    FLOW_MODELS,
    FLUX2_TEXT_LAYERS,
    QWEN_LAYERS,
    T5_MAX_LENGTH,
    TINY_FLUX2_MODEL_NAME,
    TINY_FLUX_MODEL_NAME,
    TINY_SD3_MODEL_NAME,
    TINY_ZIMAGE_MODEL_NAME,
    build_tiny_flow_model,
    ensure_tiny_flow_model,
    tiny_flow_model_path,
)
from workers.tiny.tokenizers import COMMON_WORDS, write_qwen_tokenizer, write_t5_tokenizer

# The longest prompt of the tiny world: it fits T5_MAX_LENGTH whole, in both tokenizers.
LONGEST_TINY_PROMPT = "a small red triangle at the bottom right on a yellow background"
LONG_PROMPT = ", ".join(["a small red triangle at the bottom right on a yellow background"] * 5)
QWEN3_CHAT = (
    "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_t5_tokenizer_round_trips_and_ends_truncated_prompts_with_eos(tmp_path: Path) -> None:
    from transformers import T5TokenizerFast

    size = write_t5_tokenizer(tmp_path)
    tokenizer = T5TokenizerFast.from_pretrained(tmp_path)
    assert len(tokenizer) == size  # not transformers 5's 3-token fallback
    assert tokenizer.model_max_length == T5_MAX_LENGTH
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    text = "Two small red circles, on a blue background #3!"
    ids = tokenizer(text).input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    for word in COMMON_WORDS:  # each word one piece, then </s>
        assert len(tokenizer(word).input_ids) == 2, word
    assert len(tokenizer(LONGEST_TINY_PROMPT).input_ids) <= T5_MAX_LENGTH

    encoded = tokenizer(
        LONG_PROMPT, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True
    )
    assert len(encoded.input_ids) == T5_MAX_LENGTH
    assert encoded.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.input_ids, skip_special_tokens=True) in LONG_PROMPT
    short = tokenizer("a cat", padding="max_length", max_length=T5_MAX_LENGTH, truncation=True)
    assert short.input_ids[3:] == [tokenizer.pad_token_id] * (T5_MAX_LENGTH - 3)
    assert sum(short.attention_mask) == 3


def test_qwen_tokenizer_renders_qwen3_chat_and_round_trips_bytes(tmp_path: Path) -> None:
    from transformers import Qwen2TokenizerFast

    size = write_qwen_tokenizer(tmp_path)
    tokenizer = Qwen2TokenizerFast.from_pretrained(tmp_path)
    assert len(tokenizer) == size
    assert tokenizer.model_max_length == T5_MAX_LENGTH
    assert tokenizer.pad_token == "<|endoftext|>"
    messages = [{"role": "user", "content": "a red circle"}]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == QWEN3_CHAT
    thinking = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert thinking == QWEN3_CHAT.removesuffix("<think>\n\n</think>\n\n")
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)
    assert pieces[:6] == ["<|im_start|>", "user", "Ċ", "a", "Ġred", "Ġcircle"]
    assert {"<|im_end|>", "assistant", "<think>", "</think>"} <= set(pieces)
    assert tokenizer.decode(tokenizer(text).input_ids) == text

    anything = "Héllo, wörld ✓ 123\tdone"  # no unknown token: every byte is one
    assert tokenizer.decode(tokenizer(anything).input_ids) == anything
    for word in COMMON_WORDS:
        assert len(tokenizer(" " + word).input_ids) == 1, word

    # what Flux2KleinPipeline feeds its text encoder: the chat, padded or cut to the length
    for prompt, whole in ((LONGEST_TINY_PROMPT, True), (LONG_PROMPT, False)):
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
        assert (len(tokenizer(chat).input_ids) <= T5_MAX_LENGTH) == whole
        encoded = tokenizer(chat, padding="max_length", max_length=T5_MAX_LENGTH, truncation=True)
        assert len(encoded.input_ids) == T5_MAX_LENGTH


def test_tokenizer_files_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    for write in (write_t5_tokenizer, write_qwen_tokenizer):
        write(tmp_path / "a" / write.__name__)
        write(tmp_path / "b" / write.__name__)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_a_name_that_is_not_a_flow_model_is_refused(tmp_path: Path) -> None:
    assert set(FLOW_MODELS) == {"tiny-sd3", "tiny-flux", "tiny-flux2", "tiny-zimage"}
    assert tiny_flow_model_path("tiny-sd3", tmp_path) == tmp_path / "models" / "tiny-sd3-v1"
    with pytest.raises(ValueError, match="not a built-in flow-matching model"):
        tiny_flow_model_path("tiny-xl", tmp_path)


def _pipeline_class(name: str) -> Any:
    from diffusers import (
        Flux2KleinPipeline,
        FluxPipeline,
        StableDiffusion3Pipeline,
        ZImagePipeline,
    )

    return {
        TINY_SD3_MODEL_NAME: StableDiffusion3Pipeline,
        TINY_FLUX_MODEL_NAME: FluxPipeline,
        TINY_FLUX2_MODEL_NAME: Flux2KleinPipeline,
        TINY_ZIMAGE_MODEL_NAME: ZImagePipeline,
    }[name]


def _call_kwargs(name: str) -> dict[str, Any]:
    """What a backend passes each pipeline: the size (FLUX's, Klein's and Z-Image's default is
    1024 px), the short text length, guidance, and for Klein the Qwen layers its transformer
    reads."""
    kwargs: dict[str, Any] = {
        "prompt": "two small red circles on a blue background",
        "height": 64,
        "width": 64,
        "num_inference_steps": 3,
        "max_sequence_length": T5_MAX_LENGTH,
        "output_type": "pil",
    }
    if name == TINY_SD3_MODEL_NAME:
        kwargs.update(guidance_scale=5.0, negative_prompt="blurry")
    elif name == TINY_FLUX_MODEL_NAME:
        kwargs.update(guidance_scale=3.5)  # embedded: one pass a step
    elif name == TINY_ZIMAGE_MODEL_NAME:
        kwargs.update(guidance_scale=3.0, negative_prompt="blurry")  # pos + 3 (pos - neg)
    else:
        kwargs.update(guidance_scale=4.0, text_encoder_out_layers=FLUX2_TEXT_LAYERS)
    return kwargs


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FLOW_MODELS))
def test_each_model_builds_loads_and_draws_the_same_image_for_the_same_seed(
    name: str, tmp_path: Path
) -> None:
    import numpy as np
    import torch

    path = ensure_tiny_flow_model(name, tmp_path)
    assert path == tiny_flow_model_path(name, tmp_path)
    assert ensure_tiny_flow_model(name, tmp_path) == path  # built once
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no build folder left
    pipe = _pipeline_class(name).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)

    def draw(seed: int, **kwargs: Any) -> Any:
        generator = torch.Generator("cpu").manual_seed(seed)
        image = pipe(**{**_call_kwargs(name), **kwargs}, generator=generator).images[0]
        assert image.size == (64, 64) and image.mode == "RGB"
        return np.asarray(image)

    first = draw(0)
    assert np.array_equal(first, draw(0))
    assert not np.array_equal(first, draw(1))
    assert first.std() > 1  # an image, not a flat colour
    assert not np.array_equal(first, draw(0, prompt=LONG_PROMPT))  # cut to the length


@pytest.mark.slow
def test_the_klein_transformer_reads_the_documented_qwen_layers(tmp_path: Path) -> None:
    import numpy as np
    import torch

    pipe = _pipeline_class(TINY_FLUX2_MODEL_NAME).from_pretrained(
        ensure_tiny_flow_model(TINY_FLUX2_MODEL_NAME, tmp_path)
    )
    pipe.set_progress_bar_config(disable=True)
    assert not pipe.config.is_distilled  # guidance_scale > 1 runs true CFG
    width = pipe.text_encoder.config.hidden_size
    assert pipe.transformer.config.joint_attention_dim == len(FLUX2_TEXT_LAYERS) * width
    assert (
        max(FLUX2_TEXT_LAYERS) < pipe.text_encoder.config.num_hidden_layers
    )  # not the normed last
    embeds, _ = pipe.encode_prompt(
        "a red circle",
        max_sequence_length=T5_MAX_LENGTH,
        text_encoder_out_layers=FLUX2_TEXT_LAYERS,
    )
    assert embeds.shape == (1, T5_MAX_LENGTH, len(FLUX2_TEXT_LAYERS) * width)
    negative, _ = pipe.encode_prompt(
        "blurry", max_sequence_length=T5_MAX_LENGTH, text_encoder_out_layers=FLUX2_TEXT_LAYERS
    )

    def draw(**kwargs: Any) -> Any:
        generator = torch.Generator("cpu").manual_seed(3)
        out = pipe(
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=4.0,
            output_type="np",
            generator=generator,
            **kwargs,
        )
        return out.images

    by_prompt = draw(
        prompt="a red circle",
        max_sequence_length=T5_MAX_LENGTH,
        text_encoder_out_layers=FLUX2_TEXT_LAYERS,
    )
    # the embeddings with the empty negative the pipeline encodes itself: the same image
    assert np.array_equal(
        by_prompt,
        draw(
            prompt_embeds=embeds,
            max_sequence_length=T5_MAX_LENGTH,
            text_encoder_out_layers=FLUX2_TEXT_LAYERS,
        ),
    )
    # a negative prompt goes in as negative_prompt_embeds, and changes the image
    assert not np.array_equal(
        by_prompt, draw(prompt_embeds=embeds, negative_prompt_embeds=negative)
    )
    # the pipeline's default layers (Klein 4B's 9, 18, 27) are not this model's
    with pytest.raises(IndexError):
        draw(prompt="a red circle", max_sequence_length=T5_MAX_LENGTH)


@pytest.mark.slow
def test_the_z_image_caption_is_qwens_second_to_last_hidden_states_in_its_chat(
    tmp_path: Path,
) -> None:
    """ZImagePipeline reads the prompt inside Qwen3's chat template with thinking on (no empty
    <think> block), padded to max_sequence_length, takes hidden_states[-2] (the last layer's
    input, not the normed output) and keeps the prompt's own tokens: a list of one tensor per
    prompt, as long as its chat, as wide as the transformer's cap_feat_dim."""
    import torch

    pipe = _pipeline_class(TINY_ZIMAGE_MODEL_NAME).from_pretrained(
        ensure_tiny_flow_model(TINY_ZIMAGE_MODEL_NAME, tmp_path)
    )
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.text_encoder).__name__ == "Qwen3Model"  # as Z-Image ships it
    width = pipe.text_encoder.config.hidden_size
    assert pipe.transformer.config.cap_feat_dim == width < 256  # the toy's width
    assert pipe.text_encoder.config.num_hidden_layers == QWEN_LAYERS
    chat = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a red circle"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=True,
    )
    assert chat == QWEN3_CHAT.removesuffix("<think>\n\n</think>\n\n")
    tokens = pipe.tokenizer(chat, return_tensors="pt")
    embeds, negative = pipe.encode_prompt(
        "a red circle", do_classifier_free_guidance=True, max_sequence_length=T5_MAX_LENGTH
    )
    assert isinstance(embeds, list) and len(embeds) == len(negative) == 1
    assert embeds[0].shape == (tokens.input_ids.shape[1], width)
    hidden = pipe.text_encoder(input_ids=tokens.input_ids, output_hidden_states=True)
    assert torch.allclose(embeds[0], hidden.hidden_states[QWEN_LAYERS - 1][0], atol=1e-5)
    assert not torch.allclose(embeds[0], hidden.last_hidden_state[0], atol=1e-3)
    # a longer prompt is cut at the length, chat end included, as the pipeline cuts it
    (long,), _ = pipe.encode_prompt(
        LONG_PROMPT, do_classifier_free_guidance=False, max_sequence_length=T5_MAX_LENGTH
    )
    assert long.shape == (T5_MAX_LENGTH, width)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FLOW_MODELS))
def test_two_builds_are_the_same_bytes(name: str, tmp_path: Path) -> None:
    build_tiny_flow_model(name, tmp_path / "a")
    build_tiny_flow_model(name, tmp_path / "b")
    first = _files(tmp_path / "a")
    assert any(p.endswith(".safetensors") for p in first)
    assert first == _files(tmp_path / "b")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }
