"""A built-in, deterministic tokenizer with Llama 3's vocabulary size (128256).

No data files and no model download: the vocabulary is arithmetic, so the
emulated worker and the router count the same tokens for the same text.

Vocabulary (ids):
  0..255            raw bytes (UTF-8 fallback for anything else)
  256..             letter pieces: an optional leading space, then 1 to 3 ASCII
                    letters, all lowercase or with the first one capitalised
                    (" the", "Hel", "lo", " qu")
  then              digit pieces (an optional leading space, 1 to 3 digits),
                    " " + one ASCII punctuation character,
                    single code points of common scripts (Latin-1 and
                    Latin Extended, Greek, Cyrillic, Hebrew, Arabic, Devanagari,
                    Thai, general punctuation, CJK symbols and kana, CJK
                    ideographs, Hangul syllables, full-width forms)
  up to 127999      unused ids, which decode as aliases of " xyz"-style pieces
  128000..128255    special tokens (Llama 3 names); they decode to "" as
                    SGLang's default skip_special_tokens does.

Counting: English prose comes out at about 3 characters per token (Llama 3's
BPE gives about 4): a word of up to 3 letters is one token, longer words are
cut every 3 letters. CJK ideographs and Hangul syllables are one token each;
other characters cost their UTF-8 bytes.

Round trip: decode(encode(text)) == text for every string, except that a lone
surrogate (which UTF-8 cannot hold) comes back as U+FFFD characters. Nothing
raises on any input.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from functools import cache

VOCAB_SIZE = 128256
BOS_ID = 128000
EOS_ID = 128001
START_HEADER_ID = 128006
END_HEADER_ID = 128007
EOT_ID = 128009
SPECIAL_BASE = 128000

_LETTERS = string.ascii_lowercase
_PIECES_PER_CLASS = 26 + 26**2 + 26**3  # lowercase strings of 1 to 3 letters
LETTER_BASE = 256
# Four classes: (leading space or not) x (lowercase or capitalised).
_DIGIT_BASE = LETTER_BASE + 4 * _PIECES_PER_CLASS
_DIGITS_PER_CLASS = 10 + 100 + 1000
_PUNCT = "".join(c for c in string.punctuation)
_PUNCT_BASE = _DIGIT_BASE + 2 * _DIGITS_PER_CLASS
_CODEPOINT_BASE = _PUNCT_BASE + len(_PUNCT)
_CODEPOINT_RANGES = (
    (0x00A1, 0x024F),  # Latin-1 supplement, Latin Extended-A and -B
    (0x0370, 0x052F),  # Greek, Cyrillic
    (0x0590, 0x06FF),  # Hebrew, Arabic
    (0x0900, 0x097F),  # Devanagari
    (0x0E00, 0x0E7F),  # Thai
    (0x2000, 0x206F),  # general punctuation
    (0x3000, 0x30FF),  # CJK symbols, hiragana, katakana
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0xFF00, 0xFFEF),  # half- and full-width forms
)
_UNUSED_BASE = _CODEPOINT_BASE + sum(hi - lo + 1 for lo, hi in _CODEPOINT_RANGES)
assert _UNUSED_BASE < SPECIAL_BASE

# Generated text draws from " xyz"-style pieces (leading space, lowercase): each
# is a word of its own, so the text re-encodes to exactly the same ids.
WORD_PIECE_BASE = LETTER_BASE + 2 * _PIECES_PER_CLASS
WORD_PIECE_COUNT = _PIECES_PER_CLASS

_SPECIAL_NAMES = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
}

# One match per token, except the catch-all `.`, which may need several bytes.
_SPLIT = re.compile(r" ?[A-Za-z][a-z]{0,2}| ?[0-9]{1,3}| [!-/:-@\[-`{-~]|.", re.DOTALL)


def _lowercase_pieces() -> list[str]:
    pieces = list(_LETTERS)
    pieces += [a + b for a in _LETTERS for b in _LETTERS]
    pieces += [a + b + c for a in _LETTERS for b in _LETTERS for c in _LETTERS]
    return pieces


def _digit_pieces() -> list[str]:
    return [f"{n:0{width}d}" for width in (1, 2, 3) for n in range(10**width)]


@cache
def _tables() -> tuple[dict[str, int], list[bytes]]:
    """(piece -> id, id -> bytes), built once on first use (about 0.1 s)."""
    to_id: dict[str, int] = {}
    to_bytes: list[bytes] = [b""] * VOCAB_SIZE
    for i in range(256):
        to_bytes[i] = bytes([i])
    lower = _lowercase_pieces()
    for cls, (space, capital) in enumerate(((False, False), (False, True), (True, False), (True, True))):
        base = LETTER_BASE + cls * _PIECES_PER_CLASS
        for j, p in enumerate(lower):
            text = (" " if space else "") + (p.capitalize() if capital else p)
            to_bytes[base + j] = text.encode()
            to_id[text] = base + j
    for cls, space in enumerate((False, True)):
        base = _DIGIT_BASE + cls * _DIGITS_PER_CLASS
        for j, p in enumerate(_digit_pieces()):
            text = (" " if space else "") + p
            to_bytes[base + j] = text.encode()
            to_id[text] = base + j
    for j, c in enumerate(_PUNCT):
        to_bytes[_PUNCT_BASE + j] = (" " + c).encode()
        to_id[" " + c] = _PUNCT_BASE + j
    next_id = _CODEPOINT_BASE
    for lo, hi in _CODEPOINT_RANGES:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            to_bytes[next_id] = ch.encode()
            to_id[ch] = next_id
            next_id += 1
    for i in range(_UNUSED_BASE, SPECIAL_BASE):
        to_bytes[i] = to_bytes[WORD_PIECE_BASE + (i - _UNUSED_BASE) % WORD_PIECE_COUNT]
    return to_id, to_bytes


def encode(text: str) -> list[int]:
    """Token ids of `text` (no BOS is added)."""
    to_id, _ = _tables()
    ids: list[int] = []
    for piece in _SPLIT.findall(text):
        found = to_id.get(piece)
        if found is not None:
            ids.append(found)
        else:
            ids.extend(piece.encode("utf-8", "surrogatepass"))
    return ids


def decode(ids: Iterable[int]) -> str:
    """Text of `ids`; special and out-of-range ids decode to nothing."""
    return decode_bytes(ids).decode("utf-8", "replace")


def decode_bytes(ids: Iterable[int]) -> bytes:
    _, to_bytes = _tables()
    return b"".join(to_bytes[i] if 0 <= i < VOCAB_SIZE else b"" for i in ids)


def count_tokens(text: str) -> int:
    return len(encode(text))


def word_piece(h: int) -> int:
    """A " xyz"-style piece chosen by the 64-bit value `h` (for generated text)."""
    return WORD_PIECE_BASE + h % WORD_PIECE_COUNT


def token_name(token_id: int) -> str:
    """Printable name of one id (special tokens by their Llama 3 names)."""
    if token_id >= SPECIAL_BASE:
        return _SPECIAL_NAMES.get(token_id, f"<|reserved_special_token_{token_id - SPECIAL_BASE}|>")
    return decode([token_id])


def chat_prompt_ids(messages: Sequence[tuple[str, str]]) -> list[int]:
    """Llama 3 chat template over (role, content) pairs, ending with the assistant header."""
    ids = [BOS_ID]
    for role, content in messages:
        ids += [START_HEADER_ID, *encode(role), END_HEADER_ID, *encode("\n\n" + content), EOT_ID]
    ids += [START_HEADER_ID, *encode("assistant"), END_HEADER_ID, *encode("\n\n")]
    return ids
