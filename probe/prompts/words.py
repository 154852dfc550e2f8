"""Find a word's token positions in a prompt exactly as the text encoder sees it.

CLIP tokenizers mark the last token of each word with ``</w>``; a word may be several tokens,
appear twice, or fall past the 77-token context (diffusers truncates it, with a warning).
SentencePiece tokenizers (T5, Flux's joint text) mark the *first* token of each word with ``▁``
and have no start token: ``["▁a", "▁red", "▁car", "</s>"]``; both conventions are read.
"""

from __future__ import annotations

import warnings
from typing import Any

END = "</w>"
START = "\u2581"  # SentencePiece's word-start mark, "▁"


def prompt_tokens(tokenizer: Any, prompt: str) -> list[str]:
    """The token strings the text encoder reads: ``[BOS, ..., EOS]``, truncated like diffusers.

    Padding is not included; position ``i`` here is position ``i`` of the encoder's sequence.
    A tokenizer without a start token (T5) gives ``[..., EOS]``.
    """
    limit = tokenizer.model_max_length
    head = [] if tokenizer.bos_token is None else [tokenizer.bos_token]
    special = len(head) + 1
    body = tokenizer.tokenize(prompt)
    if len(body) > limit - special:
        warnings.warn(
            f"the prompt has {len(body) + special} tokens; the text encoder reads {limit}, so "
            f"{len(body) + special - limit} are cut off (as diffusers does): {prompt[:60]!r}...",
            stacklevel=2,
        )
        body = body[: limit - special]
    return [*head, *body, tokenizer.eos_token]


def split_words(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Group token positions into words: ``[(word, [positions]), ...]`` (BOS/EOS left out)."""
    if _sentencepiece(tokens):
        return _split_sentencepiece(tokens)
    words: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for pos, tok in enumerate(tokens[1:-1], start=1):
        current.append(pos)
        if tok.endswith(END):
            words.append(("".join(tokens[i] for i in current).replace(END, ""), current))
            current = []
    if current:
        words.append(("".join(tokens[i] for i in current).replace(END, ""), current))
    return words


def _sentencepiece(tokens: list[str]) -> bool:
    return any(t.startswith(START) for t in tokens) and not any(t.endswith(END) for t in tokens)


def _split_sentencepiece(tokens: list[str]) -> list[tuple[str, list[int]]]:
    """Words of SentencePiece tokens: a word starts at a ``▁`` token; special tokens
    (``</s>``, ``<pad>``) are no word."""
    groups: list[list[int]] = []
    for pos, tok in enumerate(tokens):
        if len(tok) > 2 and tok.startswith("<") and tok.endswith(">"):
            groups.append([])  # a special token ends the word before it
        elif tok.startswith(START) or not groups or not groups[-1]:
            groups.append([pos])
        else:
            groups[-1].append(pos)
    words = [("".join(tokens[i] for i in g).replace(START, ""), g) for g in groups if g]
    return [(w, g) for w, g in words if w]


def find_word(
    tokens: list[str], word: str, occurrence: int | str | None = None, context: int | None = None
) -> list[int]:
    """Token positions of ``word`` (one or more words, e.g. ``"traffic light"``) in ``tokens``.

    Args:
        tokens: the encoder's token strings, ``[BOS, ..., EOS]`` (see :func:`prompt_tokens`).
        word: the word(s) to look up, matched case-insensitively on whole words.
        occurrence: which occurrence when the word appears more than once (0-based), or
            ``"all"`` for every one; ``None`` requires the word to be unique.
        context: the encoder's context length, to tell a cut-off prompt in errors.

    Returns:
        Sorted positions in the encoder's token sequence (BOS is position 0).

    Raises:
        KeyError: the word is not there or is ambiguous; the message lists the prompt's words
            and the way out.

    Example:
        >>> find_word(prompt_tokens(pipe.tokenizer, "a red car"), "red")
        [2]
    """
    words = split_words(tokens)
    query = word.lower().split()
    n = len(query)
    hits = [
        [p for _, ps in words[i : i + n] for p in ps]
        for i in range(len(words) - n + 1)
        if [w for w, _ in words[i : i + n]] == query
    ]
    if not hits:
        listed = " ".join(w for w, _ in words)
        cut = " (the prompt filled the encoder's context: words past it were cut off)"
        full = context is not None and len(tokens) >= context
        raise KeyError(
            f"word {word!r} is not in the prompt: its words are {listed!r}" + (cut if full else "")
        )
    if occurrence == "all":
        return sorted(p for hit in hits for p in hit)
    if occurrence is None:
        if len(hits) > 1:
            raise KeyError(
                f"word {word!r} appears {len(hits)} times in the prompt: pass occurrence=0.."
                f"{len(hits) - 1} or occurrence='all'"
            )
        return hits[0]
    if not isinstance(occurrence, int) or not 0 <= occurrence < len(hits):
        raise KeyError(f"occurrence {occurrence!r} of {word!r}: it appears {len(hits)} time(s)")
    return hits[occurrence]


def word_positions(
    tokenizer: Any, prompt: str, word: str, occurrence: int | str | None = None
) -> list[int]:
    """Token positions of ``word`` in ``prompt`` as ``tokenizer`` encodes it.

    Raises:
        KeyError: as :func:`find_word`; a word cut off past the context length says so.
    """
    tokens = prompt_tokens(tokenizer, prompt)
    try:
        return find_word(tokens, word, occurrence, tokenizer.model_max_length)
    except KeyError:
        untruncated = ["", *tokenizer.tokenize(prompt), ""]
        if len(untruncated) > len(tokens) and _has(untruncated, word):
            raise KeyError(
                f"word {word!r} is past the text encoder's {tokenizer.model_max_length}-token "
                f"context in {prompt[:60]!r}...: diffusers cuts it off; shorten the prompt"
            ) from None
        raise


def _has(tokens: list[str], word: str) -> bool:
    try:
        find_word(tokens, word, "all")
    except KeyError:
        return False
    return True
