"""A Llama-2-style BPE tokenizer with byte fallback, trained in a moment on a few texts.

llama.cpp's converter accepts it as 'llama'. A ByteLevel BPE trained here would be refused:
convert_hf_to_gguf.py only knows the pre-tokenizers of published models (it hashes their output).
Shared by the runtime and integration fixtures and by benchmarks/gpu_e2e.py; needs only `tokenizers`.
"""

from __future__ import annotations

import json
from typing import Any

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_llama_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Train a BPE on `texts`, then rebuild it Llama-2 style: specials, 256 byte tokens, byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    draft.train_from_iterator(texts, trainer)
    learned = json.loads(draft.to_str())["model"]
    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, *(f"<0x{b:02X}>" for b in range(256)), *learned["vocab"]]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok
