"""Tokenizers: prompt ids in, text out, the same on every leg of a request (router and emulated worker).

Two kinds, one interface (`Tokenizer`):

- `BuiltinTokenizer` (no `--tokenizer-path`): the emulated worker's own
  arithmetic tokenizer (`l4_sglang.text.builtin`), so the router and the
  emulated workers count the same tokens. Text prompts get BOS first; chats use
  the Llama 3 template, exactly as the emulated worker builds them.
- `HFTokenizer` (`--tokenizer-path DIR|tokenizer.json`): the `tokenizers`
  library on the model's `tokenizer.json`. Chats are rendered with the
  `chat_template` of `tokenizer_config.json` by jinja2 (sandboxed) when both
  are there; otherwise with the plain template `PLAIN_CHAT_TEMPLATE`
  ("<role>: <content>" lines, then "assistant:"), with the tokenizer's own
  special tokens added.

Decoding is incremental (`TextDecoder`): a character whose bytes span several
tokens is held back until complete, so a stream never shows a broken one and
its pieces add up to the decoded whole.
"""

from __future__ import annotations

import codecs
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l4_sglang.text import builtin

PLAIN_CHAT_TEMPLATE = "{role}: {content}\n"
PLAIN_CHAT_PROMPT = "assistant:"


class TokenizerError(ValueError):
    """The tokenizer files cannot be loaded (named in the message)."""


class TextDecoder(ABC):
    """Decodes one request's generated ids as they arrive."""

    @abstractmethod
    def feed(self, ids: Sequence[int]) -> str:
        """Text completed by the ids added since the last call (every id so far is passed)."""

    @abstractmethod
    def text(self) -> str:
        """Everything decoded so far (held-back bytes excluded)."""

    @abstractmethod
    def flush(self) -> str:
        """At the end: whatever was held back, broken characters as U+FFFD."""


class Tokenizer(ABC):
    name: str

    @abstractmethod
    def encode_prompt(self, text: str) -> list[int]:
        """A text prompt's ids, with the special tokens the model expects (BOS)."""

    @abstractmethod
    def chat_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """A chat's prompt ids, (role, content) turns, ending where the assistant speaks."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens skipped."""

    @abstractmethod
    def decoder(self) -> TextDecoder: ...


class _ByteDecoder(TextDecoder):
    def __init__(self, to_bytes) -> None:
        self._to_bytes = to_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._seen = 0
        self._text: list[str] = []

    def feed(self, ids: Sequence[int]) -> str:
        new = self._utf8.decode(self._to_bytes(ids[self._seen :]))
        self._seen = len(ids)
        if new:
            self._text.append(new)
        return new

    def text(self) -> str:
        return "".join(self._text)

    def flush(self) -> str:
        rest = self._utf8.decode(b"", final=True)
        if rest:
            self._text.append(rest)
        return rest


class BuiltinTokenizer(Tokenizer):
    name = "builtin"

    def encode_prompt(self, text: str) -> list[int]:
        return [builtin.BOS_ID, *builtin.encode(text)]

    def chat_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        return builtin.chat_prompt_ids(messages)

    def decode(self, ids: Sequence[int]) -> str:
        return builtin.decode(ids)

    def decoder(self) -> TextDecoder:
        return _ByteDecoder(builtin.decode_bytes)


class _OffsetDecoder(TextDecoder):
    """The usual incremental detokenizer for BPE tokenizers (prefix and read offsets)."""

    def __init__(self, decode) -> None:
        self._decode = decode
        self._prefix = 0
        self._read = 0
        self._ids: Sequence[int] = []
        self._text: list[str] = []

    def feed(self, ids: Sequence[int]) -> str:
        self._ids = ids
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            self._text.append(delta)
            return delta
        return ""

    def text(self) -> str:
        return "".join(self._text)

    def flush(self) -> str:
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        delta = new_text[len(prefix_text) :]
        if delta:
            self._text.append(delta)
        return delta


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class HFTokenizer(Tokenizer):
    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise TokenizerError(
                "--tokenizer-path needs the `tokenizers` package (pip install tokenizers)"
            ) from None
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise TokenizerError(f"invalid tokenizer_path: no tokenizer.json at {file}")
        try:
            self._tok = _HF.from_file(str(file))
        except Exception as e:
            raise TokenizerError(f"invalid tokenizer_path: {file} does not load ({e})") from None
        self.name = str(path)
        config: dict = {}
        config_file = file.parent / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except (OSError, ValueError) as e:
                raise TokenizerError(f"invalid tokenizer_config.json at {config_file}: {e}") from None
        self._bos = _token_text(config.get("bos_token"))
        self._eos = _token_text(config.get("eos_token"))
        self._template = self._compile(config.get("chat_template"))

    @staticmethod
    def _compile(raw: Any):
        if isinstance(raw, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
            raw = named.get("default") or next(iter(named.values()), None)
        if not isinstance(raw, str):
            return None
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            return None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message):
            raise TokenizerError(f"chat template: {message}")

        env.globals["raise_exception"] = raise_exception
        return env.from_string(raw)

    @property
    def raw(self):
        """The `tokenizers` object (the emulated worker reads its size and special ids)."""
        return self._tok

    @property
    def eos_token(self) -> str | None:
        return self._eos

    @property
    def templated(self) -> bool:
        """Chats go through the model's chat_template (else the plain one)."""
        return self._template is not None

    def encode_prompt(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=True).ids

    def chat_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        turns = [{"role": r, "content": c} for r, c in messages]
        if self._template is not None:
            text = self._template.render(
                messages=turns,
                add_generation_prompt=True,
                bos_token=self._bos or "",
                eos_token=self._eos or "",
            )
            return self._tok.encode(text, add_special_tokens=False).ids
        text = "".join(PLAIN_CHAT_TEMPLATE.format(role=r, content=c) for r, c in messages)
        return self._tok.encode(text + PLAIN_CHAT_PROMPT, add_special_tokens=True).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def decoder(self) -> TextDecoder:
        return _OffsetDecoder(self.decode)


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """The built-in tokenizer for None, else the `tokenizers` one at `path`."""
    if path is None:
        return BuiltinTokenizer()
    return HFTokenizer(path)


class OutputText:
    """A request's output text as its ids grow, cut before a matched stop string at the end.

    `update` returns the whole text so far; a stream sends what it adds. When a
    stop string is cut back, the text may get shorter than what was sent (the
    worker's streams behave alike): the caller sends nothing more then.
    """

    def __init__(self, tokenizer: Tokenizer, trim_stop: bool = True) -> None:
        self._decoder = tokenizer.decoder()
        self._trim = trim_stop
        self._ids = 0
        self._flushed = False

    def update(self, ids: Sequence[int], finish_reason: dict | None) -> str:
        if len(ids) > self._ids:
            self._decoder.feed(ids)
            self._ids = len(ids)
        if finish_reason is None:
            return self._decoder.text()
        if not self._flushed:
            self._decoder.flush()
            self._flushed = True
        text = self._decoder.text()
        matched = finish_reason.get("matched")
        if self._trim and finish_reason.get("type") == "stop" and isinstance(matched, str) and matched:
            cut = text.find(matched)
            if cut >= 0:
                return text[:cut]
        return text
