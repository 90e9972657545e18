"""Router pieces without HTTP: load parsers (on real SGLang samples), URLs, tokenizers, text stitching."""

import json
from pathlib import Path

import pytest

from l4_sglang.router.generation import prefix_hashes
from l4_sglang.router.native import BadRequest, check_ids
from l4_sglang.router.workers import (
    BadWorkerUrl,
    Load,
    normalize_url,
    parse_get_load,
    parse_metrics,
    parse_v1_loads,
)
from l4_sglang.text import builtin
from l4_sglang.text.tokens import (
    PLAIN_CHAT_PROMPT,
    BuiltinTokenizer,
    HFTokenizer,
    OutputText,
    TokenizerError,
)
from l4_sglang.worker import protocol

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "gpu" / "samples"


def test_v1_loads_sums_ranks():
    body = {
        "loads": [
            {"num_running_reqs": 3, "num_waiting_reqs": 1, "num_used_tokens": 900,
             "num_waiting_uncached_tokens": 40, "max_total_num_tokens": 1000},
            {"num_running_reqs": 2, "num_waiting_reqs": 0, "num_used_tokens": 100,
             "max_total_num_tokens": 1000},
        ]
    }  # fmt: skip
    assert parse_v1_loads(body) == Load(5, 1, 1000, 40, 2000)
    with pytest.raises((KeyError, TypeError, ValueError)):
        parse_v1_loads({"loads": [{"num_running_reqs": "x"}]})


def test_get_load_of_older_sglang():
    body = [{"dp_rank": 0, "num_reqs": 5, "num_waiting_reqs": 2, "num_tokens": 700, "ts_tic": 1.0}]
    assert parse_get_load(body) == Load(3, 2, 700, 0, 0)


def test_metrics_of_a_real_sglang_server():
    path = SAMPLES / "metrics.txt"
    assert path.is_file(), f"{path} missing: ../shared must sit beside the repo, as in CI"
    assert parse_metrics(path.read_text()) == Load(0, 0, 5, 0, 423494)
    text = (
        'sglang:num_running_reqs{tp_rank="0"} 4.0\nsglang:num_running_reqs{tp_rank="1"} 4.0\n'
        'sglang:num_queue_reqs{tp_rank="0"} 2.0\nsglang:num_used_tokens{tp_rank="0"} 77.0\n'
    )
    assert parse_metrics(text) == Load(4, 2, 77, 0, 0)  # tensor-parallel ranks repeat rank 0
    with pytest.raises(ValueError):
        parse_metrics("# nothing here\nother_metric 1\n")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://127.0.0.1:30001", "http://127.0.0.1:30001"),
        ("http://127.0.0.1:30001/", "http://127.0.0.1:30001"),
        ("127.0.0.1:30001", "http://127.0.0.1:30001"),
        ("https://gpu-3.example:8443", "https://gpu-3.example:8443"),
        ("http://[::1]:30001", "http://[::1]:30001"),
        ("ftp://host:1", BadWorkerUrl),
        ("http://host:99999", BadWorkerUrl),
        ("http://host:1/?x=1", BadWorkerUrl),
        ("", BadWorkerUrl),
        (None, BadWorkerUrl),
    ],
)
def test_worker_urls(raw, expected):
    if expected is BadWorkerUrl:
        with pytest.raises(BadWorkerUrl):
            normalize_url(raw)
    else:
        assert normalize_url(raw) == expected


def test_builtin_tokenizer_counts_as_the_emulated_worker():
    tok = BuiltinTokenizer()
    assert tok.encode_prompt("Hello, world") == protocol.text_ids("Hello, world")
    turns = [("system", "Be kind."), ("user", "Hi!")]
    assert tok.chat_ids(turns) == builtin.chat_prompt_ids(turns)


def test_incremental_decoding_holds_back_split_characters():
    tok = BuiltinTokenizer()
    ids = builtin.encode("naïve 日本 ok")
    ids = [*ids, builtin.EOS_ID]
    dec = tok.decoder()
    pieces = [dec.feed(ids[: i + 1]) for i in range(len(ids))]
    pieces.append(dec.flush())
    assert "".join(pieces) == "naïve 日本 ok"
    assert all("\ufffd" not in p for p in pieces)


def test_output_text_cuts_a_matched_stop_string():
    tok = BuiltinTokenizer()
    ids = builtin.encode(" one two three four")
    out = OutputText(tok)
    assert out.update(ids, None) == " one two three four"
    assert out.update(ids, {"type": "stop", "matched": " three"}) == " one two"
    assert (
        OutputText(tok, trim_stop=False).update(ids, {"type": "stop", "matched": " three"}).endswith("four")
    )


def test_prefix_hashes_are_per_block_and_chained():
    a = list(range(2000))
    b = [*range(512), *range(5000, 6500)]
    ha, hb = prefix_hashes(a), prefix_hashes(b)
    assert len(ha) == 3 and ha[0] == hb[0] and ha[1] != hb[1]
    assert prefix_hashes(a[:100]) == ()
    assert prefix_hashes(a, [7, 8, 9]) == (7, 8, 9)


def _hf_dir(tmp_path, template=None):
    import tokenizers

    words = "hello world user assistant system : you are kind hi there".split()  # noqa: SIM905
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tok.save(str(tmp_path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}}
    if template is not None:
        config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def test_hf_tokenizer_with_a_chat_template(tmp_path):
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    tok = HFTokenizer(_hf_dir(tmp_path, template))
    assert tok.templated
    assert tok.encode_prompt("hello world") == [1, 3, 4]
    ids = tok.chat_ids([("system", "you are kind"), ("user", "hi there")])
    assert ids == [1, 7, 8, 9, 10, 11, 5, 8, 12, 13, 6, 8]
    assert tok.decode([3, 4, 2]) == "hello world"
    dec = tok.decoder()
    seq = [3, 4, 12, 13]
    text = "".join(dec.feed(seq[: i + 1]) for i in range(len(seq))) + dec.flush()
    assert text == tok.decode(seq) == "hello world hi there"


def test_hf_tokenizer_without_a_template_uses_the_plain_one(tmp_path):
    tok = HFTokenizer(_hf_dir(tmp_path))
    assert not tok.templated
    ids = tok.chat_ids([("user", "hi"), ("assistant", "hello")])
    assert ids == tok.encode_prompt("user: hi\nassistant: hello\n" + PLAIN_CHAT_PROMPT)
    assert ids[0] == 1  # the tokenizer's own BOS


def test_hf_tokenizer_path_errors(tmp_path):
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json"):
        HFTokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TokenizerError, match="does not load"):
        HFTokenizer(tmp_path)


@pytest.mark.parametrize("incremental", [False, True])
def test_worker_chunks_cumulative_or_incremental(incremental):
    from router_http import Scripted

    from l4_sglang.router.forwarding import Forwarder
    from l4_sglang.router.generation import GenerationSpec
    from l4_sglang.router.legs import Leg
    from l4_sglang.router.metrics import RouterMetrics

    fwd = Forwarder(Scripted(), None, BuiltinTokenizer(), RouterMetrics(), lambda: None, lambda: 0.0)
    gen = fwd.new(GenerationSpec(prompt_ids=[1, 2], max_new_tokens=4), 0.0)
    gen.legs = 1
    leg = Leg(worker="w", rid=gen.rid)
    ids = [11, 12, 13, 14]
    seen = []
    for n in range(1, 5):
        out = ids[n - 1 : n] if incremental else ids[:n]
        finish = {"type": "length", "length": 4} if n == 4 else None
        chunk = {"output_ids": out, "meta_info": {"completion_tokens": n, "finish_reason": finish}}
        seen += fwd._absorb(gen, leg, json.dumps(chunk).encode())
    assert seen == ids and gen.output_ids == ids and leg.incremental is incremental
    assert gen.finish_reason == {"type": "length", "length": 4}


def test_policy_clock_runs_in_model_seconds_under_a_worker_time_scale():
    from l4_sglang.router.app import Router, RouterSettings

    settings = RouterSettings(
        worker_urls=("http://127.0.0.1:1",), policy="round_robin", worker_time_scale=0.25
    )
    router = Router(settings)
    router.now = lambda: 10.0  # a fixed real clock
    assert router.policy_now() == 40.0
    with pytest.raises(ValueError, match="worker_time_scale"):
        RouterSettings(worker_time_scale=0.0)


def test_stages_json_has_no_infinity():
    from l4_sglang.router.web_io import finite_or_none

    assert finite_or_none(float("inf")) is None
    assert finite_or_none(1.5) == 1.5
    assert finite_or_none(None) is None


@pytest.mark.parametrize(
    "ids, ok",
    [
        ([0, 5, 2**31 - 1], True),
        (list(range(10_000)), True),
        ([1, True], False),
        ([1, 2.0], False),
        ([1, -1], False),
        ([1, 2**31], False),
        ([1, "2"], False),
        ([1, None], False),
        ([], False),
    ],
)
def test_token_ids_are_checked(ids, ok):
    if ok:
        assert check_ids(ids, "input_ids") is ids
    else:
        with pytest.raises(BadRequest, match="input_ids"):
            check_ids(ids, "input_ids")


def test_router_metrics_are_prometheus_text_that_prometheus_client_parses():
    import math

    from prometheus_client.parser import text_string_to_metric_families

    from l4_sglang.policy.base import LayoutView, StageView
    from l4_sglang.router.metrics import RouterMetrics

    m = RouterMetrics()
    m.on_response("/generate", 200)
    m.on_response("/generate", 200)
    m.on_response("/v1/completions", 503)
    m.on_ttft("/generate", 0.02)
    m.on_added_latency("/generate", 0.0003)
    m.on_migration("failover")
    m.on_leg('http://w"1')  # a label value that needs escaping
    m.generated_tokens += 4
    layout = LayoutView(
        (StageView(0.0, 512.0, ("a",)), StageView(512.0, math.inf, ("b", "c"))), predicted_mean_e2e_s=1.5,
        updated_at=0.0,
    )  # fmt: skip
    text = m.render(layout, {}, {"a": True, "b": False})
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("l4_router_requests_total", (("route", "/generate"), ("status", "200")))] == 2
    assert samples[("l4_router_requests_total", (("route", "/v1/completions"), ("status", "503")))] == 1
    assert samples[("l4_router_ttft_seconds_bucket", (("le", "0.025"), ("route", "/generate")))] == 1
    assert samples[("l4_router_ttft_seconds_bucket", (("le", "0.01"), ("route", "/generate")))] == 0
    assert samples[("l4_router_ttft_seconds_count", (("route", "/generate"),))] == 1
    added = ("l4_router_added_latency_seconds_bucket", (("le", "0.0005"), ("route", "/generate")))
    assert samples[added] == 1
    assert samples[("l4_router_migrations_total", (("reason", "failover"),))] == 1
    assert samples[("l4_router_worker_legs_total", (("worker", 'http://w"1'),))] == 1
    assert samples[("l4_router_generation_tokens_total", ())] == 4
    assert samples[("l4_router_stages", ())] == 2
    assert samples[("l4_router_stage_upper_tokens", (("stage", "1"),))] == math.inf
    assert samples[("l4_router_stage_workers", (("stage", "1"),))] == 2
    assert samples[("l4_router_predicted_mean_e2e_seconds", ())] == 1.5
    assert samples[("l4_router_worker_healthy", (("worker", "b"),))] == 0
    # A second router in the same process counts apart (its own registry).
    assert "l4_router_requests_total{" not in RouterMetrics().render(None, {}, {})
