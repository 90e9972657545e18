"""Prefix cache of KV blocks, keyed by block hashes, evicted least recently used.

A block key stands for a whole prefix (the keys are chained), so a request hits
the leading run of its blocks that is cached. The cache lives in the KV pool's
free space, as SGLang's radix cache does: it never blocks an admission, because
the engine evicts it down to whatever the running requests leave free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

BLOCK_SIZE = 512


def token_block_keys(ids: Sequence[int], block_size: int = BLOCK_SIZE) -> list[int]:
    """One chained key per full block of `ids`: equal keys mean equal prefixes."""
    keys: list[int] = []
    key = 0
    for start in range(0, len(ids) - block_size + 1, block_size):
        key = hash((key, tuple(ids[start : start + block_size])))
        keys.append(key)
    return keys


def hash_id_blocks(
    hash_ids: Sequence[int], prompt_tokens: int, block_size: int = BLOCK_SIZE
) -> list[tuple[Hashable, int]]:
    """(key, tokens) per block of a prompt described by trace hash ids (Mooncake style).

    The trace's ids are already chained; the last block may be partial.
    """
    blocks: list[tuple[Hashable, int]] = []
    for i, hid in enumerate(hash_ids):
        size = min(block_size, prompt_tokens - i * block_size)
        if size <= 0:
            break
        blocks.append((("hash_id", hid), size))
    return blocks


class PrefixCache:
    def __init__(self) -> None:
        self._blocks: OrderedDict[Hashable, int] = OrderedDict()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, blocks: Sequence[tuple[Hashable, int]]) -> int:
        """Tokens of the leading cached run of `blocks`; marks them recently used."""
        hit = 0
        for key, _ in blocks:
            if key not in self._blocks:
                break
            hit += 1
        # Touch the deepest block first so that a prefix outlives its extensions.
        for key, _ in reversed(blocks[:hit]):
            self._blocks.move_to_end(key)
        return sum(size for _, size in blocks[:hit])

    def insert(self, blocks: Sequence[tuple[Hashable, int]]) -> None:
        for key, size in reversed(blocks):
            if key in self._blocks:
                self._blocks.move_to_end(key)
            else:
                self._blocks[key] = size
                self.tokens += size

    def evict_to(self, limit_tokens: int) -> None:
        while self.tokens > max(limit_tokens, 0) and self._blocks:
            _, size = self._blocks.popitem(last=False)
            self.tokens -= size

    def clear(self) -> None:
        self._blocks.clear()
        self.tokens = 0
