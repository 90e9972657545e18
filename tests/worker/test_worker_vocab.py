"""The emulated worker draws ids inside the vocabulary it is given, and its streamed and plain
answers read the same (issue 17 item 7)."""

import json

import pytest
from http_helpers import post_json, timed_sse
from tokenizers import Tokenizer, models, pre_tokenizers

from l4_sglang.router import BackgroundRouter, RouterSettings
from l4_sglang.worker.server import BackgroundWorker, WorkerSettings
from l4_sglang.worker.vocab import load_vocab

MODEL = "meta-llama/Meta-Llama-3-8B"

BODY = {"text": "Tell me a long story", "sampling_params": {"max_new_tokens": 200, "ignore_eos": True}}


def _stream_text(url: str, path: str, body: dict) -> tuple[str, list[int]]:
    payloads = [p for _, p in timed_sse(url + path, {**body, "stream": True})]
    events = [json.loads(p) for p in payloads if p != "[DONE]"]
    if path == "/generate":
        return events[-1]["text"], events[-1]["output_ids"]
    return "".join(e["choices"][0]["text"] for e in events if e["choices"]), []


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A word-level tokenizer of 4,000 ids, four of them special."""
    words = [f"w{i}" for i in range(3996)]
    vocab = {w: i for i, w in enumerate(["<s>", "</s>", "<unk>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>", "<unk>", "<pad>"])
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return str(folder)


def test_a_small_builtin_vocabulary():
    with BackgroundWorker(WorkerSettings(port=0, time_scale=0.01, vocab_size=2000)) as w:
        plain = post_json(w.url + "/generate", BODY)
        assert plain["output_ids"] and max(plain["output_ids"]) < 2000
        text, ids = _stream_text(w.url, "/generate", BODY)
        assert (text, ids) == (plain["text"], plain["output_ids"]) and text.strip()


def test_a_model_tokenizer_paired_with_the_router(hf_tokenizer):
    vocab = load_vocab(hf_tokenizer)
    assert vocab.size == 4000 and vocab.specials == {0, 1, 2, 3} and vocab.eos_id == 1
    settings = WorkerSettings(port=0, time_scale=0.01, tokenizer_path=hf_tokenizer)
    with (
        BackgroundWorker(settings) as w,
        BackgroundRouter(RouterSettings(worker_urls=(w.url,), port=0, tokenizer_path=hf_tokenizer)) as r,
    ):
        body = {"text": "w1 w2 w3", "sampling_params": {"max_new_tokens": 100, "ignore_eos": True}}
        plain = post_json(w.url + "/generate", body)
        assert all(4 <= i < 4000 for i in plain["output_ids"])
        assert plain["text"].split() == [f"w{i - 4}" for i in plain["output_ids"]]
        assert _stream_text(w.url, "/generate", body) == (plain["text"], plain["output_ids"])
        # Through the router: plain (the worker's text) and streamed (the router's decoding) agree.
        completion = {"model": MODEL, "prompt": "w1 w2 w3", "max_tokens": 100, "ignore_eos": True}
        via = post_json(r.url + "/v1/completions", completion)["choices"][0]["text"]
        assert via == plain["text"] and _stream_text(r.url, "/v1/completions", completion)[0] == via


def test_a_chat_without_max_tokens_runs_up_to_the_context_as_sglang():
    from l4_sglang.worker import openai_api
    from l4_sglang.worker.protocol import Limits

    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}
    inp = openai_api.parse_chat(body, Limits(context_length=64))
    prompt = len(inp.prompts[0])
    assert 0 < prompt < 63 and inp.params.max_new_tokens == 64 - prompt - 1
    capped = openai_api.parse_chat({**body, "max_tokens": 5}, Limits(context_length=64))
    assert capped.params.max_new_tokens == 5


def test_the_host_latency_probe_speaks_a_small_vocabulary(hf_tokenizer):
    # The start-up probe (--host-latency auto) sends prompt ids: inside the tokenizer's 4,000, or a 400.
    import asyncio

    from l4_sglang.worker import host_latency

    settings = WorkerSettings(port=0, time_scale=0.01, tokenizer_path=hf_tokenizer)
    assert asyncio.run(host_latency.measure(settings, samples=3)) >= 0.0
