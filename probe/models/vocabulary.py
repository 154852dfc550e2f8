"""The words a model knows: a closed vocabulary (the toy's) refuses a prompt word it does not hold.

    check_known_words(pipe, ["a white car"])     # toy: UnknownWordError naming 'white'
    known_words(pipe)                            # the toy's words (a frozenset); None: any word
    with allow_unknown_words(pipe):              # opt in, e.g. to see how a word splits
        pipe("a teal car")

A tokenizer written by :func:`probe.models.clip_tokenizer.write_clip_tokenizer` for the toy
declares its word list in ``tokenizer_config.json`` (key ``attnprobe_words``). Its BPE still
spells any other word letter by letter, but the text encoder never saw those letters as a word
in training, so the word comes out as noise: v1 of the toy drew "a white car" as six
random-coloured animals on six seeds. A tokenizer without the key takes any word: every real
CLIP tokenizer (its BPE pieces were all trained), and ``tiny``, whose weights are random anyway
(its unit tests rely on unknown words to exercise words of several tokens).

A *word* is a run of letters or digits, lower-cased as CLIP's tokenizer does; punctuation and
spaces separate words and are never refused.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

from probe.models.clip_tokenizer import WORD_LIST_KEY
from probe.prompts.words import split_words

WORD = re.compile(r"[^\W_]+")
ANY_WORD = "_attnprobe_any_word"  # tokenizer attribute set by allow_unknown_words
GUARDED = "_attnprobe_word_guard"  # text encoder attribute set by refuse_unknown_words
SHOWN = 8  # unknown words named in one message


class UnknownWordError(ValueError):
    """A prompt holds a word that the model's closed vocabulary does not.

    Attributes:
        words: ``{word: first prompt holding it}``, in the order met.
        known: the words the model knows.
    """

    def __init__(
        self, message: str, words: dict[str, str] | None = None, known: frozenset[str] = frozenset()
    ) -> None:
        super().__init__(message)
        self.words = words or {}
        self.known = known


def _tokenizer(model: Any) -> Any:
    return getattr(model, "tokenizer", model)


def known_words(model: Any) -> frozenset[str] | None:
    """The words of a closed vocabulary, or ``None`` when the model takes any word.

    Args:
        model: a pipeline (its ``tokenizer`` is read) or a tokenizer.

    Returns:
        The declared words (the toy: the words it was trained with), or ``None`` for one that
        declares none (real CLIP tokenizers, ``tiny``) or inside :func:`allow_unknown_words`.

    Example:
        >>> "white" in known_words(load_pipeline("toy"))
        False
    """
    tokenizer = _tokenizer(model)
    if getattr(tokenizer, ANY_WORD, False):
        return None
    return _declared(tokenizer)


def _declared(tokenizer: Any) -> frozenset[str] | None:
    """The word list a tokenizer's config declares (``None``: none, it takes any word)."""
    words = getattr(tokenizer, "init_kwargs", {}).get(WORD_LIST_KEY)
    return None if words is None else frozenset(str(w).lower() for w in words)


def prompt_words(prompt: str) -> list[str]:
    """The words of ``prompt`` as the check reads them: lower-cased runs of letters/digits.

    Example:
        >>> prompt_words("A red car, in the park.")
        ['a', 'red', 'car', 'in', 'the', 'park']
    """
    return WORD.findall(prompt.lower())


def unknown_words(model: Any, prompt: str) -> list[str]:
    """The words of ``prompt`` outside the model's closed vocabulary (``[]``: all known, or the
    model takes any word), each once, in prompt order."""
    known = known_words(model)
    if known is None:
        return []
    return list(dict.fromkeys(w for w in prompt_words(prompt) if w not in known))


def check_known_words(model: Any, prompts: str | Iterable[str]) -> None:
    """Refuse prompts with a word the model's closed vocabulary does not hold.

    Call it where prompts enter, before anything is generated or written. A model that takes
    any word (a real checkpoint, ``tiny``) passes every prompt.

    Args:
        model: a pipeline or its tokenizer.
        prompts: one prompt or several.

    Raises:
        UnknownWordError: a ValueError naming each unknown word, the prompt it is in, the words
            the model knows, and the way out.

    Example:
        >>> check_known_words(load_pipeline("toy"), ["a red car", "a white car"])
        Traceback (most recent call last):
        UnknownWordError: prompt 'a white car': the word 'white' is not in this model's ...
    """
    known = known_words(model)
    if known is None:
        return
    texts = [prompts] if isinstance(prompts, str) else list(prompts)
    bad: dict[str, str] = {}
    prompts_with = 0
    for text in texts:
        words = [w for w in prompt_words(text) if w not in known]
        prompts_with += bool(words)
        for word in words:
            bad.setdefault(word, text)
    if bad:
        where = getattr(_tokenizer(model), "name_or_path", "") or "built in memory"
        message = _message(bad, prompts_with, len(texts), known, str(where))
        raise UnknownWordError(message, bad, known)


def _message(bad: dict[str, str], n_bad: int, n: int, known: frozenset[str], where: str) -> str:
    names = [repr(w) for w in bad][:SHOWN] + (["..."] if len(bad) > SHOWN else [])
    one = len(bad) == 1
    if n_bad == 1:
        head = f"prompt {next(iter(bad.values()))!r}: the word{'' if one else 's'} "
        head += f"{', '.join(names)} {'is' if one else 'are'} not in this model's vocabulary"
    else:
        shown = [f"{w!r} (in {p!r})" for w, p in list(bad.items())[:SHOWN]]
        head = f"{n_bad} of {n} prompts have words that are not in this model's vocabulary: "
        head += ", ".join(shown) + (", ..." if len(bad) > SHOWN else "")
    return (
        f"{head}. The model never learned {'it' if one else 'them'}: its tokenizer spells such "
        "a word letter by letter and the image comes out as noise. It knows "
        f"{len(known)} words (tokenizer: {where}): {_grouped(known)}. "
        "Use these words, or a real checkpoint (a diffusers Stable Diffusion folder: "
        "--model <folder>, load_pipeline(<folder>)), which takes any word. To see what this "
        "model makes of the word anyway, call it inside "
        "`with probe.allow_unknown_words(pipe):`."
    )


def _grouped(known: frozenset[str]) -> str:
    """The known words, sorted, grouped by the templates' shared lists (colours, animals):
    ``colours: black, blue; animals: cat; other words: a, car`` (one line, as CLI errors are)."""
    from probe.prompts.templates import shared_lists

    groups, rest = [], set(known)
    for name, words in shared_lists().items():
        mine = sorted(set(words) & rest)
        if mine:
            groups.append(f"{name}: {', '.join(mine)}")
            rest -= set(mine)
    if rest:
        groups.append(f"{'other words' if groups else 'words'}: {', '.join(sorted(rest))}")
    return "; ".join(groups)


@contextlib.contextmanager
def allow_unknown_words(model: Any) -> Iterator[None]:
    """Inside the block the model takes any word (its tokenizer's BPE spells it letter by
    letter), e.g. to test words of several tokens on the toy or to look at what it draws.

    Example:
        >>> with allow_unknown_words(pipe):
        ...     image = pipe("a teal car").images[0]
    """
    tokenizer = _tokenizer(model)
    if tokenizer is None:  # nothing to open
        yield
        return
    before = getattr(tokenizer, ANY_WORD, False)
    setattr(tokenizer, ANY_WORD, True)
    try:
        yield
    finally:
        setattr(tokenizer, ANY_WORD, before)


def refuse_unknown_words(pipe: Any) -> None:
    """Make the pipeline's text encoder refuse token ids that spell an unknown word, so that a
    plain ``pipe("a white car")`` fails as the library's entry points do. A no-op for a model
    that takes any word, or one already guarded.

    The check runs on the ids the encoder is called with (a forward pre-hook), before any
    denoising step; the message shows the prompt as the encoder received it (lower-cased).

    Example:
        >>> refuse_unknown_words(pipe)      # load_pipeline does this for every model
    """
    encoder = getattr(pipe, "text_encoder", None)
    tokenizer = getattr(pipe, "tokenizer", None)
    if encoder is None or _declared(tokenizer) is None or getattr(encoder, GUARDED, False):
        return

    def check(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is None or known_words(tokenizer) is None:
            return
        rows = ids.reshape(-1, ids.shape[-1]).tolist()  # [prompts, tokens]
        check_known_words(tokenizer, [_encoded_text(tokenizer, row) for row in rows])

    encoder.register_forward_pre_hook(check, with_kwargs=True)
    setattr(encoder, GUARDED, True)


def _encoded_text(tokenizer: Any, ids: list[int]) -> str:
    """The words a row of token ids spells, BOS to the first EOS, joined by spaces."""
    body = tokenizer.convert_ids_to_tokens(ids)
    if body and body[0] == tokenizer.bos_token:
        body = body[1:]
    if tokenizer.eos_token in body:  # padding (the end token, or another) follows it
        body = body[: body.index(tokenizer.eos_token)]
    return " ".join(word for word, _ in split_words(["", *body, ""]))
