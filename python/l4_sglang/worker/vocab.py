"""The emulated worker's vocabulary: which tokenizer reads and writes its text, which ids it draws.

Issue 17 item 7: paired with a model's tokenizer (32,000 ids), workers that
drew ids from the built-in 128,256-id vocabulary emitted ids that tokenizer
has not got, and every streamed chunk decoded to "". So the worker takes the
tokenizer it is given (`--tokenizer-path`: the router's own `HFTokenizer`, so
both decode alike; else the built-in one, `--vocab-size` to shrink it) and
draws generated ids inside [0, size), never a special id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from l4_sglang.text import builtin
from l4_sglang.text.tokens import BuiltinTokenizer, HFTokenizer, Tokenizer

MIN_VOCAB_SIZE = 512


@dataclass(frozen=True, eq=False)
class Vocab:
    tok: Tokenizer
    size: int
    specials: frozenset[int] = field(default_factory=frozenset)
    eos_id: int | None = None
    names: dict[int, str] = field(default_factory=dict)
    """Printable names of special ids (the rest are decoded)."""

    @cached_property
    def _drawn(self) -> list[int] | None:
        """Ids generated text draws from; None: the built-in generator, untouched."""
        if isinstance(self.tok, BuiltinTokenizer):
            if self.size >= builtin.VOCAB_SIZE:
                return None
            # Letter pieces only: whole ASCII tokens, so any cut of the stream decodes cleanly.
            return list(range(builtin.LETTER_BASE, self.size))
        return [i for i in range(self.size) if i not in self.specials]

    def picker(self) -> Callable[[int], int]:
        """The engine's token picker: 64-bit hash -> generated id."""
        if self._drawn is None:
            from l4_sglang.worker.engine import pick_token  # here: the engine's users import this module

            return pick_token
        return self.pick

    def pick(self, h: int) -> int:
        """The generated id for hash `h` (EOS once in 128,256 draws, as the built-in picker)."""
        drawn = self._drawn
        assert drawn is not None
        if self.eos_id is not None and h % builtin.VOCAB_SIZE == builtin.EOS_ID:
            return self.eos_id
        return drawn[(h >> 20) % len(drawn)]

    def token_name(self, token_id: int) -> str:
        name = self.names.get(token_id)
        return name if name is not None else self.tok.decode([token_id])


BUILTIN = Vocab(
    BuiltinTokenizer(),
    builtin.VOCAB_SIZE,
    frozenset(range(builtin.SPECIAL_BASE, builtin.VOCAB_SIZE)),
    builtin.EOS_ID,
    {i: builtin.token_name(i) for i in range(builtin.SPECIAL_BASE, builtin.VOCAB_SIZE)},
)


def load_vocab(tokenizer_path: str | None = None, vocab_size: int | None = None) -> Vocab:
    """The built-in vocabulary (its first `vocab_size` ids), or the tokenizer at `tokenizer_path`."""
    if tokenizer_path is None:
        if vocab_size is None or vocab_size >= builtin.VOCAB_SIZE:
            return BUILTIN
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"invalid vocab_size: must be >= {MIN_VOCAB_SIZE}, got {vocab_size}")
        eos = builtin.EOS_ID if vocab_size > builtin.EOS_ID else None
        return Vocab(BUILTIN.tok, vocab_size, frozenset(), eos)
    tok = HFTokenizer(tokenizer_path)
    raw = tok.raw
    size = raw.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None:
        size = min(size, vocab_size)
    added = raw.get_added_tokens_decoder()
    specials = frozenset(i for i, t in added.items() if t.special)
    eos = raw.token_to_id(tok.eos_token) if tok.eos_token else None
    return Vocab(tok, size, specials, eos, {i: added[i].content for i in specials})
