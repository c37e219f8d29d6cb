"""Qwen2.5-VL models built from a config, with random weights: no download.

``write_model(folder, texts, shape)`` writes a model folder that ``medgrit finetune`` takes as
``model_name_or_path``: a byte-level BPE tokenizer trained on the spot (``tokenizers``) on
``texts`` (a dataset's own questions and answers) with Qwen's special tokens and BiRD's
``<ref>``/``<box>`` tags, a PIL ``Qwen2VLImageProcessorPil`` config, and the model's config and
weights. ``shape="tiny"`` (hidden size 64, two layers, a two-block vision tower) trains on a CPU
in seconds, for tests; ``shape="3b"`` has Qwen2.5-VL-3B-Instruct's published dimensions, for
throughput benchmarks, its vocabulary of 151,936 and its LM head tied to the input embeddings:
the model's embedding matrix is the real one's, rows past the trained tokenizer's last id never
read from text. Needs the ``train`` extra.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medgrit.core.vlm import SPECIAL_TOKENS

EXTRA_TOKENS = (
    "<|vision_pad|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)

# (text config, vision config) of each shape; "3b" follows Qwen2.5-VL-3B-Instruct's config.json.
SHAPES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
        ),
    ),
    "3b": (
        dict(
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [16, 24, 24],
            },
        ),
        dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
        ),
    ),
}


# The model's vocabulary (None: the tokenizer's size) and whether its LM head is tied to the input
# embeddings, per shape; Qwen2.5-VL-3B-Instruct's config.json has 151936 and true.
EMBEDDINGS: dict[str, tuple[int | None, bool]] = {"tiny": (None, False), "3b": (151936, True)}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``, with the special tokens
    a Qwen2-VL-family model needs (``<|im_end|>`` ends a turn; ``<|endoftext|>`` pads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [*SPECIAL_TOKENS, *EXTRA_TOKENS]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=specials,
    )


def model_config(
    tokenizer: Any, shape: str = "tiny", vocab: int | None = None, tied: bool | None = None
) -> Any:
    """A ``Qwen2_5_VLConfig`` of ``shape`` whose special token ids are ``tokenizer``'s.

    ``vocab`` (the model's vocabulary, at least the tokenizer's size) and ``tied`` (LM head tied
    to the input embeddings) default to the shape's (:data:`EMBEDDINGS`)."""
    from transformers import Qwen2_5_VLConfig

    text, vision = SHAPES[shape]
    shape_vocab, shape_tied = EMBEDDINGS[shape]
    vocab = vocab or shape_vocab or len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"vocab {vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(
            text,
            vocab_size=vocab,
            max_position_embeddings=32768,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=shape_tied if tied is None else tied,
    )


def write_model(
    folder: Path,
    texts: Iterable[str],
    shape: str = "tiny",
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    seed: int = 0,
    vocab_size: int = 2000,
    model_vocab: int | None = None,
    tied: bool | None = None,
    dtype: Any = None,
    device: str | None = None,
) -> Path:
    """Write tokenizer, image processor and a randomly initialised model to ``folder``.

    ``vocab_size`` is the tokenizer's; ``model_vocab`` and ``tied`` override the shape's
    embeddings (:func:`model_config`). ``dtype`` (e.g. ``torch.bfloat16``) is the saved weights'
    (default fp32); ``device`` is where the weights are drawn ("cuda" initialises the 3B shape
    in seconds instead of a minute)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(str(folder))
    Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels).save_pretrained(
        str(folder)
    )
    torch.manual_seed(seed)
    config = model_config(tokenizer, shape, model_vocab, tied)
    with torch.device(device or "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model = model.to("cpu", dtype)  # saved from host memory, whatever drew the weights
    model.generation_config = GenerationConfig(
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
    )
    model.save_pretrained(str(folder))
    return folder
