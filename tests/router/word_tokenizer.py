"""A word-level Hugging Face tokenizer that needs no download, and a ShareGPT-shaped prompt file.

Every id is one word, `w<id>` (specials aside), so any id sequence decodes to text that encodes back
to the same ids; `transformers.AutoTokenizer`, SGLang and the router's `--tokenizer-path` all load
the folder. The bench_serving test gives it to the emulated workers, the router and
`sglang.bench_serving`; docs/gpu/openai_matrix.sh writes one of Llama 3's size (128,256 ids, its
special ids) into the random-weight model folder, so real SGLang serves text and its OpenAI
endpoints without a model download.

    python tests/router/word_tokenizer.py DIR [VOCAB_SIZE] [--sharegpt FILE N]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

LLAMA3_VOCAB = 128256
LLAMA3_SPECIALS = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128009: "<|eot_id|>"}
SMALL_SPECIALS = {0: "<s>", 1: "</s>", 2: "<unk>", 3: "<pad>"}
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def specials_of(vocab_size: int) -> dict[int, str]:
    if vocab_size >= LLAMA3_VOCAB:
        names = {i: f"<|reserved_special_token_{i - 128000}|>" for i in range(128000, LLAMA3_VOCAB)}
        return {**names, **LLAMA3_SPECIALS}
    return dict(SMALL_SPECIALS)


def write_word_tokenizer(folder: str | Path, vocab_size: int = 4000) -> Path:
    """tokenizer.json and tokenizer_config.json (with a chat template) in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = specials_of(vocab_size)
    vocab = {specials.get(i, f"w{i}"): i for i in range(vocab_size)}
    bos, eos = (128000, 128001) if vocab_size >= LLAMA3_VOCAB else (0, 1)
    unk = "<unk>" if "<unk>" in vocab else specials[bos]
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with single spaces
    tok.add_special_tokens(list(specials.values()))
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials[bos],
        "eos_token": specials[eos],
        "unk_token": unk,
        "pad_token": specials[eos],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": 131072,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def write_sharegpt(path: str | Path, n: int = 64, vocab_size: int = 4000, seed: int = 0) -> Path:
    """`n` two-turn conversations of `w<id>` words, for bench_serving's random dataset
    (`--dataset-path`; without one it downloads ShareGPT)."""
    rng = random.Random(seed)
    top = min(vocab_size, 128000)

    def words(k: int) -> str:
        return " ".join(f"w{rng.randrange(16, top)}" for _ in range(k))

    rows = [
        {
            "conversations": [
                {"from": "human", "value": words(rng.randint(8, 96))},
                {"from": "gpt", "value": words(64)},
            ]
        }
        for _ in range(n)
    ]
    path = Path(path)
    path.write_text(json.dumps(rows))
    return path


def main(argv: list[str]) -> int:
    folder = argv[0]
    size = int(argv[1]) if len(argv) > 1 and not argv[1].startswith("--") else 4000
    write_word_tokenizer(folder, size)
    if "--sharegpt" in argv:
        i = argv.index("--sharegpt")
        write_sharegpt(argv[i + 1], int(argv[i + 2]), size)
    print(f"word tokenizer of {size} ids in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
