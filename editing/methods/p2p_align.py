"""Prompt-to-Prompt's token bookkeeping: which source token each target token reads, and when.

Semantics of the authors' ``seq_aligner.py`` and ``ptp_utils.py`` (google/prompt-to-prompt),
written anew (see docs/editing.md, "Prompt-to-Prompt as published"):

- :func:`word_spans`: a prompt's words are its space-separated pieces; a word owns the tokens
  whose decoded text fills its length (``get_word_inds``).
- :func:`replacement_mapper`: word swap. The two prompts must have the same number of words;
  a swapped word whose token counts agree maps token to token, otherwise every source token of
  the word reaches every target token with weight ``1/len(target tokens)``.
- :func:`refinement_mapper`: global alignment of the token ids (match 1, mismatch −1, gap 0);
  a target token without a source token is new (alpha 0: it keeps its own map).
- :func:`cross_alphas`: ``cross_replace_steps`` turned into ``N + 1`` rows of per-token alphas.

    M = replacement_mapper(tok, "a red car", "a blue car")   # [77, 77]: target n reads
    new = base @ M                                            # Σ_w base[..., w] · M[w, n]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from editing.methods.p2p_options import DEFAULT_KEY, CrossSteps, Window
from probe.prompts.words import prompt_tokens

SwapTail = Literal["authors", "shifted"]
_PUNCTUATION = ".,;:!?"


def word_spans(tokenizer: Any, prompt: str) -> list[tuple[str, list[int]]]:
    """The prompt's words (split on whitespace) with the encoder positions of their tokens.

    A word owns tokens, in order, until their decoded text is as long as the word (the
    authors' rule: ``"road."`` owns ``r o a d .``). BOS is position 0.

    Example:
        >>> word_spans(tok, "a teal car")   # a tokenizer without "teal"
        [('a', [1]), ('teal', [2, 3, 4, 5]), ('car', [6])]
    """
    tokens = prompt_tokens(tokenizer, prompt)[1:-1]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    words = prompt.split()
    spans: list[list[int]] = [[] for _ in words]
    w, filled = 0, 0
    for pos, token_id in enumerate(ids, start=1):
        if w >= len(words):
            break
        spans[w].append(pos)
        filled += len(tokenizer.decode([token_id]).strip())
        if filled >= len(words[w]):
            w, filled = w + 1, 0
    return list(zip(words, spans, strict=True))


def word_positions(tokenizer: Any, prompt: str, word: str) -> list[int]:
    """Encoder positions of every occurrence of ``word`` in ``prompt`` (``[]`` when absent).

    A prompt word matches when it equals ``word`` ignoring case, or ignoring trailing
    punctuation (``"car."`` matches ``car``: then the tokens of the punctuation are left out);
    the authors compare the exact string.
    """
    query = word.strip().lower()
    found: list[int] = []
    for w, span in word_spans(tokenizer, prompt):
        if w.lower() == query:
            found += span
        elif w.lower().rstrip(_PUNCTUATION) == query:
            ids = tokenizer.convert_tokens_to_ids(prompt_tokens(tokenizer, prompt))
            while span and not tokenizer.decode([ids[span[-1]]]).strip().strip(_PUNCTUATION):
                span = span[:-1]
            found += span
    return found


def replacement_mapper(
    tokenizer: Any, source: str, target: str, tail: SwapTail = "authors"
) -> Tensor:
    """Word swap's mapper ``[L, L]``: entry ``[w, n]`` is how much target token ``n`` reads
    source token ``w``'s map (``L`` = the encoder's context, 77).

    Args:
        tokenizer: the pipeline's tokenizer.
        source, target: prompts with the same number of words.
        tail: the tokens after the last swapped word. ``"authors"``: target position ``j``
            reads source position ``j``, as the published ``get_replacement_mapper_`` does
            (when a swapped word changes the token count this reads the wrong source token:
            off by the difference); ``"shifted"``: the source token it lines up with.

    Raises:
        ValueError: the word counts differ (the message suggests ``mode='refine'``), or an
            unknown ``tail``.
    """
    if tail not in ("authors", "shifted"):
        raise ValueError(f"swap_tail={tail!r}: use 'authors' or 'shifted'")
    src, tgt = word_spans(tokenizer, source), word_spans(tokenizer, target)
    if len(src) != len(tgt):
        raise ValueError(
            f"word swap needs prompts with the same number of words: {source!r} has "
            f"{len(src)}, {target!r} has {len(tgt)}; use mode='refine'"
        )
    swaps = [(s, t) for (ws, s), (wt, t) in zip(src, tgt, strict=True) if ws != wt and s and t]
    length = tokenizer.model_max_length
    mapper = torch.zeros(length, length)
    i = j = 0
    while i < length and j < length:
        if swaps and swaps[0][0][0] == i:
            s, t = swaps.pop(0)
            if len(s) == len(t):
                mapper[s, t] = 1.0
            else:
                mapper[torch.tensor(s)[:, None], torch.tensor(t)[None, :]] = 1.0 / len(t)
            i, j = i + len(s), j + len(t)
            continue
        mapper[j if not swaps and tail == "authors" else i, j] = 1.0
        i, j = i + 1, j + 1
    return mapper


def global_alignment(x: Sequence[Any], y: Sequence[Any]) -> list[int]:
    """For each position of ``y``, the position of ``x`` aligned with it, or -1 (new).

    Needleman–Wunsch with match 1, mismatch −1, gap 0; on ties the trace prefers a gap in
    ``x`` (a new ``y`` token), then a gap in ``y``, then the diagonal, as the authors' code.
    """
    rows, cols = len(x) + 1, len(y) + 1
    score = [[0] * cols for _ in range(rows)]
    trace = [[0] * cols for _ in range(rows)]  # 1 left (new y), 2 up (x dropped), 3 diagonal
    for j in range(1, cols):
        trace[0][j] = 1
    for i in range(1, rows):
        trace[i][0] = 2
        for j in range(1, cols):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    mapped = [-1] * len(y)
    i, j = len(x), len(y)
    while i > 0 or j > 0:
        move = trace[i][j]
        if move == 3:
            i, j = i - 1, j - 1
            mapped[j] = i
        elif move == 1:
            j -= 1
        else:
            i -= 1
    return mapped


def refinement_mapper(tokenizer: Any, source: str, target: str) -> tuple[Tensor, Tensor]:
    """Refinement's mapper and alphas, both ``[L]``.

    The token ids of both prompts (BOS and EOS included) are aligned globally
    (:func:`global_alignment`); ``mapper[n]`` is the source position target token ``n`` reads
    (-1: new) and ``alphas[n]`` is 1 where it reads one, 0 for new tokens. Positions past the
    target's EOS read the same position of the source (alpha 1), as in the authors' code.
    """
    length = tokenizer.model_max_length
    ids = [tokenizer.convert_tokens_to_ids(prompt_tokens(tokenizer, p)) for p in (source, target)]
    aligned = global_alignment(ids[0], ids[1])
    mapper = torch.arange(length)
    mapper[: len(aligned)] = torch.tensor(aligned)
    return mapper, (mapper >= 0).float()


def cross_alphas(
    schedule: CrossSteps,
    num_steps: int,
    positions: Callable[[str], list[int]],
    length: int,
) -> Tensor:
    """``cross_replace_steps`` as per-step, per-token alphas ``[num_steps + 1, length]``.

    A window ``f`` is ``(0, f)``; ``(start, end)`` sets rows ``int(start·(N+1))`` to
    ``int(end·(N+1)) − 1`` to 1 (N + 1 rows, as ``get_time_words_attention_alpha``; step ``i``
    reads row ``i``). A dict sets every token from ``default_`` (absent: every row) and then each
    word's tokens from its own window; a word the target does not have is skipped, as in the
    authors' code (:class:`~editing.methods.p2p.PromptToPrompt` refuses a word no target has).

    Args:
        schedule: see :func:`editing.methods.p2p_options.parse_cross_steps`.
        num_steps: N, the steps of the run.
        positions: word → its token positions in the target prompt.
        length: tokens per prompt (77).

    Example:
        >>> cross_alphas(0.8, 4, lambda w: [], 77)[:, 0].tolist()   # int(0.8 · 5) = 4 rows
        [1.0, 1.0, 1.0, 1.0, 0.0]
    """
    rows = num_steps + 1
    alphas = torch.zeros(rows, length)
    per_word = schedule if isinstance(schedule, dict) else {DEFAULT_KEY: schedule}
    _set_window(alphas, per_word.get(DEFAULT_KEY, (0.0, 1.0)), list(range(length)))
    for word, window in per_word.items():
        if word == DEFAULT_KEY:
            continue
        found = positions(word)
        if found:
            _set_window(alphas, window, found)
    return alphas


def _set_window(alphas: Tensor, window: Window, columns: list[int]) -> None:
    start, end = (0.0, window) if isinstance(window, float | int) else window
    rows = alphas.shape[0]
    alphas[:, columns] = 0.0
    alphas[int(start * rows) : int(end * rows), columns] = 1.0


def equalizer(
    tokenizer: Any, prompt: str, weights: dict[str, float], length: int | None = None
) -> Tensor:
    """Reweight's per-token factors ``[L]``: 1, and each weighted word's tokens its factor.

    Raises:
        KeyError: a weighted word that is not in the prompt (the message lists its words).
    """
    scale = torch.ones(length or tokenizer.model_max_length)
    for word, factor in weights.items():
        found = word_positions(tokenizer, prompt, word)
        if not found:
            listed = " ".join(w for w, _ in word_spans(tokenizer, prompt))
            raise KeyError(
                f"word {word!r} is not in the prompt {prompt!r}: its words are {listed!r}"
            )
        scale[found] = factor
    return scale
