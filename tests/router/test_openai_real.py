"""The openai SDK feature matrix through the router against a worker asked directly, checking what
holds on real SGLang (issue 17's bar): the same status, response shape, choice count and indices,
finish reasons and usage; logprobs present with the requested top-k count; tool calls and JSON
answers that parse (JSON only where the worker runs a grammar backend); and, for greedy requests
(temperature 0, each pair sent on a flushed cache), the same text and the same text streamed.
Sampled requests (n=2) are not compared word for word.

Against an external fleet (docs/gpu/openai_matrix.sh on a GPU host, real SGLang behind
`python -m l4_sglang.launch --num-instances 1`):

    L4_OPENAI_ROUTER_URL=http://127.0.0.1:30000 L4_OPENAI_WORKER_URL=http://127.0.0.1:PORT \
        python -m pytest tests/router/test_openai_real.py

(L4_OPENAI_RESULTS=FILE: one JSON line per case, what each side answered). Each case is first sent
once to the worker directly, unchecked (a warm-up: on the first run of a GPU host, real SGLang's
first echo+logprobs request held its scheduler ~94 s, its /health failed meanwhile and the router
rightly ejected its one worker, so the next cases got the router's 503 while the worker answered),
and before each pair of requests the router is waited for until it counts the worker healthy.
Without those variables
the same checks run against an emulated worker and router with the word-level tokenizer the GPU
job gives SGLang, so this module runs in CI too.
"""

from __future__ import annotations

import json
import os
import time

import openai
import pytest
from http_helpers import call
from openai_cases import WORDS, cases, collect_stream, messages

CASES = cases(WORDS)
MESSAGES = messages(WORDS)
MAX_TOKENS = 8
FINISH = {"length", "stop", "tool_calls"}
READY_S = 150
"""How long the router is waited for to count the worker healthy again (after a stall)."""
WARM_UP_TIMEOUT_S = 300


class Target:
    def __init__(self, router: str, worker: str) -> None:
        self.router, self.worker = router.rstrip("/"), worker.rstrip("/")
        models = json.loads(call("GET", self.worker + "/v1/models", timeout=60)[2])
        self.model = models["data"][0]["id"]
        info = {}
        for path in ("/get_server_info", "/server_info"):
            status, _, text = call("GET", self.worker + path, timeout=60)
            if status == 200:
                info = json.loads(text)
                break
        self.grammar = info.get("grammar_backend") not in (None, "none")
        self.results = []
        self.flushes = True
        self.waits = True

    def ready(self) -> float:
        """Wait until the router counts the worker healthy (it ejects one whose /health fails, as
        SGLang's does while its scheduler is held); the seconds waited. After one wait that never
        ends (READY_S), no more are tried: the cases then meet the router as it is."""
        began = time.monotonic()
        while self.waits and time.monotonic() - began < READY_S:
            status, _, text = call("GET", self.router + "/workers", timeout=60)
            if status != 200:
                return 0.0  # no such view: nothing to wait for
            workers = json.loads(text).get("workers") or []
            if any(w.get("url", "").rstrip("/") == self.worker and w.get("healthy") for w in workers):
                return round(time.monotonic() - began, 1)
            time.sleep(0.5)
        self.waits = False
        return round(time.monotonic() - began, 1)

    def warm_up(self) -> None:
        """Each case once to the worker directly, unchecked: what a first request compiles or
        loads (SGLang: its first echo+logprobs) happens here, not inside a comparison."""
        for case, (route, extra, _) in CASES.items():
            began = time.monotonic()
            client = self.client(self.worker).with_options(timeout=WARM_UP_TIMEOUT_S)
            args = {"model": self.model, "max_tokens": MAX_TOKENS, **extra}
            try:
                if route == "chat":
                    client.chat.completions.create(messages=MESSAGES, **args)
                else:
                    client.completions.create(**args)
                outcome = "ok"
            except openai.APIError as e:
                outcome = f"{type(e).__name__}: {str(e)[:200]}"
            self.results.append(
                {"case": case, "warm_up": True, "worker": outcome, "s": round(time.monotonic() - began, 1)}
            )
        self.results.append({"case": "warm-up", "warm_up": True, "router_ready_after_s": self.ready()})

    def client(self, url: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)

    def flush(self) -> bool:
        """Flush the worker's cache through the router (SGLang refuses while a request runs), so
        that the two requests of a greedy comparison compute alike; after one that never
        succeeds (2 s of retries), no more are tried."""
        for _ in range(20 if self.flushes else 0):
            if call("POST", self.router + "/flush_cache", timeout=60)[0] == 200:
                return True
            time.sleep(0.1)
        self.flushes = False
        return False


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    router, worker = os.environ.get("L4_OPENAI_ROUTER_URL"), os.environ.get("L4_OPENAI_WORKER_URL")
    if router and worker:
        t = Target(router, worker)
        t.warm_up()
        yield t
    else:
        from word_tokenizer import write_word_tokenizer

        from l4_sglang.router import BackgroundRouter, RouterSettings
        from l4_sglang.worker.server import BackgroundWorker, WorkerSettings

        tok = str(write_word_tokenizer(tmp_path_factory.mktemp("tok"), 4000))
        with (
            BackgroundWorker(WorkerSettings(port=0, time_scale=0.05, tokenizer_path=tok)) as w,
            BackgroundRouter(RouterSettings(worker_urls=(w.url,), port=0, tokenizer_path=tok)) as r,
        ):
            t = Target(r.url, w.url)
            t.warm_up()
            yield t
    path = os.environ.get("L4_OPENAI_RESULTS")
    if path:
        with open(path, "a") as f:
            for row in t.results:
                f.write(json.dumps(row) + "\n")


def greedy(extra: dict) -> bool:
    return "n" not in extra


def create(t: Target, url: str, route: str, extra: dict, **kw):
    """(response, None) or (None, (status, error body)); temperature 0 unless sampled (n > 1)."""
    client = t.client(url)
    args = {"model": t.model, "max_tokens": MAX_TOKENS, **extra, **kw}
    if greedy(extra):
        args["temperature"] = 0
    try:
        if route == "chat":
            return client.chat.completions.create(messages=MESSAGES, **args), None
        return client.completions.create(**args), None
    except openai.APIStatusError as e:
        return None, (e.status_code, e.body)


def texts(resp) -> dict[int, str]:
    return {c.index: (c.message.content if hasattr(c, "message") else c.text) or "" for c in resp.choices}


def check_logprobs(route: str, extra: dict, resp) -> None:
    if route == "completions" and extra.get("logprobs") is not None:
        k = extra["logprobs"]
        for c in resp.choices:
            lp = c.logprobs
            assert lp is not None and lp.tokens, c
            assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
            if not extra.get("echo"):
                assert len(lp.tokens) <= MAX_TOKENS
            # A dict keyed by token text: two top tokens that decode alike (specials) share a key.
            tops = [top for top in lp.top_logprobs if top is not None]
            assert tops and all(1 <= len(top) <= k for top in tops) and any(len(top) == k for top in tops)
    if route == "chat" and extra.get("logprobs"):
        k = extra["top_logprobs"]
        for c in resp.choices:
            content = c.logprobs.content
            assert content and len(content) <= MAX_TOKENS
            assert all(len(tok.top_logprobs) == k for tok in content)


@pytest.mark.parametrize("case", CASES)
def test_a_feature_answers_as_the_worker_does(target, case):
    t = target
    route, extra, choices = CASES[case]
    waited = t.ready()
    t.flush()
    via, via_err = create(t, t.router, route, extra)
    t.flush()
    direct, direct_err = create(t, t.worker, route, extra)
    row = {
        "case": case,
        "stream": False,
        "router": via_err or "ok",
        "worker": direct_err or "ok",
        "waited_s": waited,
    }
    t.results.append(row)
    if direct_err is not None:
        # The worker refuses it (e.g. JSON mode without a grammar backend): so must the router.
        assert via_err is not None and via_err[0] == direct_err[0], (via_err, direct_err)
        return
    assert via_err is None, via_err
    row.update(
        choices=len(via.choices),
        finish=[c.finish_reason for c in via.choices],
        usage=via.usage.model_dump(),
        texts_equal=texts(via) == texts(direct),
    )
    assert sorted(c.index for c in via.choices) == list(range(choices))
    assert len(direct.choices) == choices
    finish = {c.index: c.finish_reason for c in via.choices}
    direct_finish = {c.index: c.finish_reason for c in direct.choices}
    if not set(direct_finish.values()) <= FINISH:
        # The worker ended it otherwise (an abort: JSON mode without a grammar backend): so must the router.
        assert set(finish.values()) == set(direct_finish.values()), (finish, direct_finish)
        return
    assert set(finish.values()) <= FINISH, finish
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens
    assert 0 < via.usage.completion_tokens <= MAX_TOKENS * choices
    check_logprobs(route, extra, via)
    if extra.get("echo"):
        assert all(text.startswith(extra["prompt"]) for text in texts(via).values())
    if route == "chat":
        for c in via.choices:
            for call_ in c.message.tool_calls or []:
                assert call_.function.name and isinstance(json.loads(call_.function.arguments or "{}"), dict)
        if "response_format" in extra and t.grammar:
            assert all(isinstance(json.loads(text), dict) for text in texts(via).values())
    if greedy(extra):
        assert finish == direct_finish
        assert via.usage == direct.usage
        assert texts(via) == texts(direct)


@pytest.mark.parametrize("case", CASES)
def test_a_feature_streams_what_it_answers(target, case):
    t = target
    route, extra, choices = CASES[case]
    waited = t.ready()
    t.flush()
    whole, whole_err = create(t, t.router, route, extra)
    t.flush()
    got: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    tokens: dict[int, int] = {}
    usage = None
    try:
        stream, err = create(t, t.router, route, extra, stream=True, stream_options={"include_usage": True})
        if err is None:
            got, finish, tokens, usage = collect_stream(stream, route)
    except openai.APIError as e:
        err = (getattr(e, "status_code", None), str(e))
    t.results.append(
        {"case": case, "stream": True, "router": err or "ok", "finish": finish, "waited_s": waited}
    )
    if whole_err is not None:
        assert err is not None, "streamed but refused unstreamed"
        return
    whole_finish = {c.index: c.finish_reason for c in whole.choices}
    if not set(whole_finish.values()) <= FINISH:
        # Ended otherwise unstreamed (an abort): streamed, an error event or the same finish.
        assert err is not None or set(finish.values()) == set(whole_finish.values()), (finish, whole_finish)
        return
    assert err is None, err
    assert sorted(got) == list(range(choices))
    assert set(finish.values()) <= FINISH, finish
    assert usage is not None and 0 < usage.completion_tokens <= MAX_TOKENS * choices
    if extra.get("logprobs") and not extra.get("echo"):
        assert all(0 < n <= MAX_TOKENS for n in tokens.values()) and len(tokens) == choices
    if greedy(extra):
        assert got == texts(whole)
        assert finish == whole_finish
        assert usage.completion_tokens == whole.usage.completion_tokens


def test_plain_requests_take_the_router_path_and_features_pass_through(target):
    t = target
    body = {"model": t.model, "prompt": WORDS["hello"], "max_tokens": 2}
    status, headers, text = call("POST", t.router + "/v1/completions", body, timeout=120)
    assert status == 200 and "x-l4-passthrough" not in headers, text
    status, headers, text = call("POST", t.router + "/v1/completions", {**body, "logprobs": 1}, timeout=120)
    assert status == 200 and headers["x-l4-passthrough"] == "logprobs", text


@pytest.mark.parametrize("path", ["/v1/models", "/get_model_info", "/get_server_info", "/health_generate"])
def test_sglang_endpoints_answer_through_the_router(target, path):
    t = target
    status, _, text = call("GET", t.router + path, timeout=120)
    assert status == 200, text
    if path == "/v1/models":
        assert t.model in [m["id"] for m in json.loads(text)["data"]]
    if path == "/get_model_info":
        direct = json.loads(call("GET", t.worker + path, timeout=60)[2])
        assert json.loads(text)["model_path"] == direct["model_path"]


@pytest.mark.skipif(bool(os.environ.get("L4_OPENAI_ROUTER_URL")), reason="emulated fleet only")
def test_a_case_waits_for_the_router_to_take_its_worker_back(tmp_path):
    """What the first GPU run met: the router ejected its one worker (SGLang's /health failed while
    a first echo+logprobs request held its scheduler), and the next cases got the router's 503
    while the worker itself answered. `Target.ready` waits for the router to take it back."""
    from word_tokenizer import write_word_tokenizer

    from l4_sglang.router import BackgroundRouter, RouterSettings
    from l4_sglang.worker.server import BackgroundWorker, WorkerSettings

    tok = str(write_word_tokenizer(tmp_path, 4000))
    with BackgroundWorker(WorkerSettings(port=0, time_scale=0.05, tokenizer_path=tok)) as w:
        settings = RouterSettings(
            worker_urls=(w.url,), port=0, tokenizer_path=tok, load_poll_interval=0.2, recovery_threshold=2
        )
        with BackgroundRouter(settings) as r:
            t = Target(r.url, w.url)
            route, extra, _ = CASES["chat logprobs"]
            r.call(lambda: r.router.pool.report_failure(w.url, "held by a long request"))
            _, err = create(t, t.router, route, extra)
            assert err is not None and err[0] == 503, err  # what the matrix saw
            assert 0 < t.ready() < READY_S
            via, err = create(t, t.router, route, extra)
            assert err is None and len(via.choices) == 1, err
