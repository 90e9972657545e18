"""Made-up log probabilities in SGLang's OpenAI shapes: the emulated worker has no model.

Values are a pure function of (token id, position in the output), so a stream
and a plain answer of the same request carry the same numbers, and the
chosen token always heads its own top list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Name = Callable[[int], str]


def token_logprob(token_id: int, position: int) -> float:
    return -((token_id * 31 + position * 17) % 500) / 100.0  # in (-5, 0]


def top(token_id: int, position: int, k: int, vocab_size: int) -> list[tuple[int, float]]:
    """The k most likely ids at `position` (the chosen one first), with falling logprobs."""
    best = token_logprob(token_id, position)
    return [((token_id + j * 7919) % vocab_size, best - 0.5 * j) for j in range(k)]


def completion(ids: Sequence[int], start: int, k: int, offset: int, name: Name, vocab_size: int) -> dict:
    """/v1/completions `logprobs` for output ids `ids` (the first at output position `start`);
    `offset`: characters of the choice's text before them (for `text_offset`)."""
    tokens, values, tops, offsets = [], [], [], []
    for i, t in enumerate(ids):
        pos = start + i
        text = name(t)
        tokens.append(text)
        values.append(token_logprob(t, pos))
        tops.append({name(a): lp for a, lp in top(t, pos, k, vocab_size)})
        offsets.append(offset)
        offset += len(text)
    return {"text_offset": offsets, "token_logprobs": values, "tokens": tokens, "top_logprobs": tops}


def chat(ids: Sequence[int], start: int, k: int, name: Name, vocab_size: int) -> dict:
    """/v1/chat/completions `logprobs` ({"content": [...]}) for output ids `ids`."""

    def entry(t: int, lp: float) -> dict:
        text = name(t)
        return {"token": text, "bytes": list(text.encode("utf-8")), "logprob": lp}

    content = []
    for i, t in enumerate(ids):
        pos = start + i
        item = entry(t, token_logprob(t, pos))
        item["top_logprobs"] = [entry(a, lp) for a, lp in top(t, pos, k, vocab_size)]
        content.append(item)
    return {"content": content}
