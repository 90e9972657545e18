"""The openai SDK feature matrix of issue 17 (logprobs, n=2, tools, JSON modes, echo, batched
prompts), shared by test_openai_features.py (emulated workers, exact answers) and
test_openai_real.py (an external router and real SGLang worker, the checkable part)."""

from __future__ import annotations

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
}
# The prompts' words: plain English for the built-in tokenizer; `w<id>` words for the word-level
# tokenizer that the GPU job gives real SGLang (tests/router/word_tokenizer.py), which knows no other.
ENGLISH = dict(
    chat="What is the weather in Paris?",
    hello="Hello",
    echo="Echo me",
    one="one",
    two="two two",
    three="three",
)
WORDS = dict(
    chat="w101 w102 w103 w104", hello="w201", echo="w301 w302", one="w401", two="w501 w502", three="w601"
)


def messages(words: dict[str, str] = ENGLISH) -> list[dict]:
    return [{"role": "user", "content": words["chat"]}]


def cases(words: dict[str, str] = ENGLISH) -> dict[str, tuple[str, dict, int]]:
    """name -> (route, extra arguments, choices expected); each is sent streamed and not."""
    w = words
    return {
        "completion logprobs": ("completions", {"prompt": w["hello"], "logprobs": 3}, 1),
        "completion n=2": ("completions", {"prompt": w["hello"], "n": 2}, 2),
        "completion echo": ("completions", {"prompt": w["echo"], "echo": True}, 1),
        "completion echo+logprobs": ("completions", {"prompt": w["echo"], "echo": True, "logprobs": 1}, 1),
        # SGLang takes a list of strings or a list of token-id lists, and refuses (400) a list that
        # mixes them (its `prompt` field's type): the real matrix then checks the router's refusal.
        "batched prompts": ("completions", {"prompt": [w["one"], w["two"], w["three"]]}, 3),
        "batched token ids": ("completions", {"prompt": [[1, 2, 3], [4, 5]]}, 2),
        "batched mixed prompts": ("completions", {"prompt": [w["one"], w["two"], [1, 2, 3]]}, 3),
        "batched prompts n=2": ("completions", {"prompt": [w["one"], w["two"]], "n": 2}, 4),
        "chat logprobs": ("chat", {"logprobs": True, "top_logprobs": 4}, 1),
        "chat n=2": ("chat", {"n": 2}, 2),
        "chat tools": ("chat", {"tools": TOOLS, "tool_choice": "auto"}, 1),
        "chat json_object": ("chat", {"response_format": {"type": "json_object"}}, 1),
        "chat json_schema": ("chat", {"response_format": SCHEMA}, 1),
    }


def collect_stream(stream, route: str):
    """(texts, finish reasons, logprob token counts, usage) of a streamed answer, by choice index."""
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    tokens: dict[int, int] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            piece = (c.delta.content if route == "chat" else c.text) or ""
            texts[c.index] = texts.get(c.index, "") + piece
            finish[c.index] = c.finish_reason or finish.get(c.index)
            if c.logprobs is not None:
                got = c.logprobs.content if route == "chat" else c.logprobs.tokens
                tokens[c.index] = tokens.get(c.index, 0) + len(got or [])
    return texts, finish, tokens, usage
