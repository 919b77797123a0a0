"""Tokenizers for the built-in flow-matching models, written by our own code with no download.

Real T5 and Qwen tokenizers are vocabularies of 32,000 and 151,000 pieces learned from a
corpus; a random-weight model needs only a tokenizer of the same kind that reads every prompt
and loads the way the real one does:

* ``write_t5_tokenizer``: a T5-style Unigram vocabulary (sentencepiece's model: ``<pad>``,
  ``</s>``, ``<unk>`` first, pieces with log-probability scores, words split at spaces and
  marked with ``▁``), and ``</s>`` appended to every sequence. It loads with
  ``T5TokenizerFast.from_pretrained`` (in transformers 5 the same class as ``T5Tokenizer``).
* ``write_qwen_tokenizer``: a Qwen2-style byte-level BPE (GPT-2's byte table, Qwen's
  pre-tokenizer, a few merges for common words) with Qwen's special tokens and a chat template
  in Qwen3's format, so ``apply_chat_template(..., enable_thinking=False)`` renders what
  diffusers' Flux2KleinPipeline feeds its Qwen3 text encoder. It loads with
  ``Qwen2TokenizerFast.from_pretrained``.

Both write ``tokenizer.json`` with the ``tokenizers`` package and a ``tokenizer_config.json``
that names the transformers class; the Qwen one also writes ``vocab.json`` and ``merges.txt``.
The files are the same bytes every time (the tiny models' folders must be).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sized
from pathlib import Path

from workers.tiny import byte_unicode_table

# Words given pieces of their own, so a prompt of the tiny world ("two small red circles on a
# blue background") fits in a few dozen tokens; any other text still tokenizes, by character
# (T5) or by byte (Qwen). Fixed here: changing it changes the models (bump their versions).
COMMON_WORDS = (
    "a",
    "an",
    "one",
    "two",
    "three",
    "the",
    "of",
    "on",
    "in",
    "at",
    "to",
    "and",
    "with",
    "is",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "circle",
    "square",
    "triangle",
    "small",
    "large",
    "top",
    "bottom",
    "left",
    "right",
    "center",
    "background",
    "photo",
    "painting",
    "picture",
    "image",
    "cat",
    "dog",
    "house",
    "tree",
    "sky",
)

# The tokenizers' model_max_length: the text length the tiny models are meant to be called
# with (the pipelines' max_sequence_length), so a backend can read it from the folder. Longer
# texts still tokenize (with a logged warning) and the encoders take them: T5's attention is
# relative, Qwen's rotary.
MODEL_MAX_LENGTH = 32

T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"

QWEN_ENDOFTEXT, QWEN_IM_START, QWEN_IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
QWEN_THINK, QWEN_END_THINK = "<think>", "</think>"
QWEN_CHAT_WORDS = ("user", "assistant", "system")  # the roles, each one token
# Qwen2's pre-tokenizer: contractions, words with one leading non-letter, single digits,
# punctuation runs, newlines, spaces.
QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen3's chat format, without tools: each message as <|im_start|>role\ncontent<|im_end|>\n;
# a past assistant turn loses its reasoning; the generation prompt opens the assistant's turn
# and, with enable_thinking=False, gives it an empty <think></think> block, as Qwen3's own
# template does.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] if message['content'] is string else '' %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def t5_pieces() -> list[tuple[str, float]]:
    """The T5 vocabulary, in id order: pieces and their log-probability scores.

    ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2 (score 0, as sentencepiece gives control pieces),
    ``▁``, each printable ASCII character with and without the word-start ``▁``, then the
    common words with ``▁``. A word is ten times as likely as a word-start character, which
    is twice as likely as one inside a word: Unigram's best split keeps known words whole.
    """
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    weighted = [("▁", 4.0)]
    weighted += [("▁" + c, 2.0) for c in chars] + [(c, 1.0) for c in chars]
    weighted += [("▁" + w, 20.0) for w in COMMON_WORDS if len(w) > 1]
    total = sum(weight for _, weight in weighted)
    scores = [(piece, round(math.log(weight / total), 6)) for piece, weight in weighted]
    return [(T5_PAD, 0.0), (T5_EOS, 0.0), (T5_UNK, 0.0), *scores]


def write_t5_tokenizer(folder: Path) -> int:
    """Write a T5-style Unigram tokenizer into ``folder``; return its vocab size.

    Loads with ``transformers.T5TokenizerFast.from_pretrained(folder)`` (and as a pipeline's
    ``tokenizer_2``/``tokenizer_3``). transformers 5 rebuilds T5's tokenizer from the vocabulary
    in ``tokenizer.json`` with its own pre-tokenizer and decoder (the ones written here) and
    would add 100 ``<extra_id_N>`` sentinels: ``extra_ids`` is 0.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = t5_pieces()
    tokenizer = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", T5_EOS],
        pair=["$A", T5_EOS, "$B", T5_EOS],
        special_tokens=[(T5_EOS, 1)],
    )
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (T5_PAD, T5_EOS, T5_UNK)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "T5Tokenizer",
            "eos_token": T5_EOS,
            "unk_token": T5_UNK,
            "pad_token": T5_PAD,
            "extra_ids": 0,
            "additional_special_tokens": [],
            "model_max_length": MODEL_MAX_LENGTH,
            "clean_up_tokenization_spaces": True,
        },
    )
    return len(pieces)


def _prefix_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges that join each word, in byte-level characters, from its first character on.

    BPE applies the lowest-ranked merge first, so the order decides which words end up one
    token. Words that start with ``Ġ`` (a space) come first: their merges all start with ``Ġ``,
    so in a word after a space they win over any other, and every such word is one token. The
    rest follow in the order given; one may be split where an earlier word's merge applies
    inside it (``three``'s ``th`` in ``with``).
    """
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in sorted(words, key=lambda w: not w.startswith("Ġ")):
        for i in range(1, len(word)):
            pair = (word[:i], word[i])
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
    return merges


def qwen_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The Qwen BPE's ``vocab.json`` (tokens to ids) and merges, special tokens not included.

    Every byte is a token (in GPT-2's byte-to-character table), then each merge's joined
    token: the common words after a space (each one token), the chat template's roles (each
    one token), the common words at the start of a text and the template's blank line
    (``\\n\\n``).
    """
    table = byte_unicode_table()
    space = table[ord(" ")]
    newline = table[ord("\n")]
    words = [space + w for w in COMMON_WORDS if len(w) > 1]
    words += [w for w in (*QWEN_CHAT_WORDS, *COMMON_WORDS) if len(w) > 1]
    merges = [(newline, newline), *_prefix_merges(words)]
    tokens = [table[b] for b in range(256)] + [a + b for a, b in merges]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise RuntimeError("the Qwen vocabulary has a token twice")
    return vocab, merges


def qwen_special_tokens() -> list[tuple[str, bool]]:
    """The added tokens after the vocabulary, in id order, with whether each is special.

    As in Qwen3: ``<|endoftext|>`` (also the pad token), ``<|im_start|>``, ``<|im_end|>``,
    then ``<think>`` and ``</think>``, added but not special (decoding keeps them).
    """
    return [
        (QWEN_ENDOFTEXT, True),
        (QWEN_IM_START, True),
        (QWEN_IM_END, True),
        (QWEN_THINK, False),
        (QWEN_END_THINK, False),
    ]


def write_qwen_tokenizer(folder: Path) -> int:
    """Write a Qwen2-style byte-level BPE tokenizer with Qwen3's chat template into ``folder``;
    return its vocab size (special tokens included).

    Loads with ``transformers.Qwen2TokenizerFast.from_pretrained(folder)``; its
    ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
    enable_thinking=False)`` renders ``<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>
    assistant\\n<think>\\n\\n</think>\\n\\n``.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = qwen_vocabulary()
    tokenizer = Tokenizer(
        BPE(
            vocab=dict(vocab),
            merges=list(merges),
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    special = qwen_special_tokens()
    added_tokens_decoder: dict[str, dict[str, object]] = {}
    for token, is_special in special:
        added = AddedToken(token, special=is_special, normalized=False)
        if is_special:
            tokenizer.add_special_tokens([added])
        else:
            tokenizer.add_tokens([added])
        added_tokens_decoder[str(tokenizer.token_to_id(token))] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": is_special,
        }
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(folder / "vocab.json", vocab)
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "added_tokens_decoder": added_tokens_decoder,
            "additional_special_tokens": [QWEN_IM_START, QWEN_IM_END],
            "bos_token": None,
            "eos_token": QWEN_IM_END,
            "pad_token": QWEN_ENDOFTEXT,
            "unk_token": None,
            "errors": "replace",
            "split_special_tokens": False,
            "add_prefix_space": False,
            "model_max_length": MODEL_MAX_LENGTH,
            "clean_up_tokenization_spaces": False,
            "chat_template": QWEN3_CHAT_TEMPLATE,
        },
    )
    return len(vocab) + len(special)


def check_tokenizer_size(tokenizer: Sized, expected: int, what: str) -> None:
    """Raise unless a loaded tokenizer has the vocabulary that was written.

    transformers 5 silently builds a tiny vocabulary of its special tokens when it misses or
    misreads the files; a model built on that would still run, on the wrong ids.
    """
    size = len(tokenizer)
    if size != expected:
        raise RuntimeError(f"{what} has {size} tokens, expected {expected}")
