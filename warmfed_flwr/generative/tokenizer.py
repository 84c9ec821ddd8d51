"""The tiny foundation's tokenizer: a byte-level CLIP BPE whose merges make each vocabulary word one token."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

MAX_TOKENS = 32
VOCABULARY = (
    "a an the of in on with and or by at to from this that is photo photograph picture image drawing sketch "
    "painting handwritten written printed digit number letter style styled font rendered render blurry clean "
    "black white gray grey red green blue yellow color colored colorful background dark light small large "
    "zero one two three four five six seven eight nine "
    "real clipart infograph quickdraw product art cartoon photorealistic realistic pencil ink watercolor "
    "backpack bike bicycle calculator headphones keyboard laptop monitor mouse mug projector "
    "dog elephant giraffe guitar horse house person cat car bird airplane truck ship "
    "tumor normal tissue patch histology slide stained cell cells"
).split()
"""Words that become single tokens; any other word is spelled out in byte-level tokens (never unknown)."""


def _bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Deterministic BPE training: merge the most frequent adjacent pair (ties: smallest pair) until words are whole.

    tokenizers' BpeTrainer breaks count ties by token id instead, which yields other merges (and token ids).
    """
    pieces = [[*word[:-1], word[-1] + "</w>"] for word in sorted(set(words)) if word]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in pieces:
            for pair in zip(symbols, symbols[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for index, symbols in enumerate(pieces):
            merged, position = [], 0
            while position < len(symbols):
                if tuple(symbols[position:position + 2]) == best:
                    merged.append(best[0] + best[1])
                    position += 2
                else:
                    merged.append(symbols[position])
                    position += 1
            pieces[index] = merged


def class_words(class_names: Iterable[str]) -> list[str]:
    """Every lower-case ASCII word of ``class_names`` ('Tennis_racket' -> 'tennis', 'racket'): what the tiny
    foundation's tokenizer makes single tokens, so a class keeps its tokens, and their trained embeddings, from the
    class stage to the style stage."""
    return [word for name in class_names for word in re.findall(r"[a-z]+", name.lower())]


def build_tokenizer(words: list[str] | None = None, max_length: int = MAX_TOKENS) -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer whose merges make each of ``words`` (lower-case ASCII) one token.

    Its vocab.json + merges.txt are written here (deterministically) and loaded as a CLIPTokenizer. Every other
    word is spelled out in byte-level pieces, all in the vocabulary, so no text maps to the unknown token. It
    round-trips through ``save_pretrained``/``from_pretrained``.
    """
    words = [w.lower() for w in (words or VOCABULARY) if w.isascii() and w.isalpha()]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(char + "</w>" for char in alphabet)]
    merges = _bpe_merges(words)
    tokens += [left + right for left, right in merges]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    with tempfile.TemporaryDirectory(prefix="warmfed-tokenizer-") as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = "\n".join(f"{left} {right}" for left, right in merges)
        (Path(folder) / "merges.txt").write_text(f"#version: 0.2\n{lines}\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=max_length)
