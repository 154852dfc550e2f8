"""Build a small CLIP-format BPE tokenizer in which every given word is one token.

Stable Diffusion pipelines load their tokenizer from a folder holding ``vocab.json`` and
``merges.txt`` in OpenAI CLIP's byte-level BPE format. The ``tiny`` and ``toy`` models need such a
tokenizer without downloading CLIP's 49k-word vocabulary, so this module trains BPE merges on a
word list: merges are learned greedily from the words themselves, so applying them in rank order
(what the tokenizer does) rebuilds every listed word as a single token, and any other text still
tokenizes, character by character.

With ``closed=True`` (the toy's tokenizer) the folder also declares its word list
(``tokenizer_config.json``, key :data:`WORD_LIST_KEY`): a *closed* vocabulary, whose other words
the model never learned and attnprobe refuses (:mod:`probe.models.vocabulary`).
``save_pretrained`` keeps the key.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"
WORD_LIST_KEY = "attnprobe_words"
"""``tokenizer_config.json`` key listing a closed vocabulary's words (absent: any word)."""


def _byte_alphabet() -> list[str]:
    """The 256 printable characters CLIP maps bytes to (GPT-2's ``bytes_to_unicode``)."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is a single symbol.

    Args:
        words: lower-case ASCII words (duplicates ignored).

    Returns:
        The merges in rank order, as pairs of symbols.
    """
    seqs = {w: [*w[:-1], w[-1] + END_OF_WORD] for w in sorted(set(words)) if w}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for seq in seqs.values():
            pairs.update(itertools.pairwise(seq))
        if not pairs:
            return merges
        best = max(sorted(pairs), key=lambda p: pairs[p])  # most frequent, then first by name
        merges.append(best)
        for w, seq in seqs.items():
            seqs[w] = _apply_merge(seq, best)


def _apply_merge(seq: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def write_clip_tokenizer(
    words: list[str], folder: str | Path, max_length: int = 77, closed: bool = False
) -> Path:
    """Write a CLIP-format tokenizer folder whose vocabulary holds ``words`` as whole tokens.

    Args:
        words: the words that must each be one token (lower-case ASCII).
        folder: where to write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``.
        max_length: the text encoder's context length (77 for every SD 1.x/2.x model).
        closed: declare ``words`` as the whole vocabulary (:data:`WORD_LIST_KEY`), so that a
            prompt with another word is refused: the toy's, whose text encoder is trained on
            these words only. Default ``False``: any word is taken (``tiny``, random weights).

    Returns:
        The folder.

    Example:
        >>> tok = load_clip_tokenizer(write_clip_tokenizer(["giraffe"], "/tmp/tok"))
        >>> tok.tokenize("a giraffe")
        ['a</w>', 'giraffe</w>']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab_list = alphabet + [c + END_OF_WORD for c in alphabet]
    merges = learn_merges([w.lower() for w in words])
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            vocab_list.append(a + b)
            seen.add(a + b)
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    if closed:
        config[WORD_LIST_KEY] = sorted({w.lower() for w in words if w})
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS})
    )
    return folder


def load_clip_tokenizer(folder: str | Path, max_length: int = 77) -> CLIPTokenizer:
    """Load a tokenizer folder written by :func:`write_clip_tokenizer` (or any CLIP one)."""
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)
