"""The emulated scheduler on a fake clock: chunking, retraction, prefix cache, token streams."""

import math

import pytest

from l4_sglang import CostModel
from l4_sglang.text import builtin
from l4_sglang.worker.engine import Engine, EngineConfig, Phase, Request, SamplingParams, token_hash


@pytest.fixture(scope="module")
def model() -> CostModel:
    return CostModel.load("llama3-8b-h100-default")


def make_engine(model, **overrides) -> Engine:
    cfg = {"max_total_tokens": 1_000_000, "max_running_requests": 256, "chunked_prefill_size": 8192}
    cfg.update(overrides)
    return Engine(EngineConfig(**cfg), model.step_time)


def run(engine: Engine, now: float = 0.0, max_steps: int = 100_000):
    """Plan and apply steps back to back on a fake clock until the engine is idle."""
    steps = []
    for _ in range(max_steps):
        step = engine.plan(now)
        if step is None:
            return steps, now
        now += step.cost_s
        engine.apply(step, now)
        steps.append(step)
    raise AssertionError("the engine did not go idle")


def req(rid, prompt, max_new=16, **params) -> Request:
    ids = prompt if isinstance(prompt, list) else list(range(1, prompt + 1))
    return Request(rid=rid, input_ids=ids, params=SamplingParams(max_new_tokens=max_new, **params))


@pytest.mark.parametrize(("prompt", "chunk"), [(20_000, 8192), (8192, 8192), (8193, 8192), (1000, 128)])
def test_chunked_prefill_takes_ceil_p_over_c_steps(model, prompt, chunk):
    engine = make_engine(model, chunked_prefill_size=chunk)
    engine.add(req("a", prompt, max_new=4), 0.0)
    steps, _ = run(engine)
    prefills = [s for s in steps if s.kind == "prefill"]
    assert len(prefills) == math.ceil(prompt / chunk)
    for i, step in enumerate(prefills):
        n = min(chunk, prompt - i * chunk)
        assert step.batch == [(n, i * chunk)]
        assert step.cost_s == pytest.approx(model.step_time([(n, i * chunk)]))
    decodes = [s for s in steps if s.kind == "decode"]
    # The last prefill chunk samples the first token; each decode reads the KV written before it.
    assert [s.batch for s in decodes] == [[(1, prompt + k)] for k in range(3)]


def test_a_chunked_prompt_admits_nothing_behind_it_until_done(model):
    engine = make_engine(model, chunked_prefill_size=1000)
    engine.add(req("long", 2500), 0.0)
    engine.add(req("short", 10), 0.0)
    steps, _ = run(engine)
    prefills = [[(r.rid, n) for r, n, _ in s.items] for s in steps if s.kind == "prefill"]
    assert prefills[:3] == [[("long", 1000)], [("long", 1000)], [("long", 500), ("short", 10)]]


def test_prefill_goes_before_decode_and_batches_fcfs(model):
    engine = make_engine(model)
    engine.add(req("a", 100, max_new=3), 0.0)
    step = engine.plan(0.0)
    engine.apply(step, step.cost_s)
    engine.add(req("b", 50, max_new=3), step.cost_s)
    engine.add(req("c", 60, max_new=3), step.cost_s)
    step = engine.plan(step.cost_s)
    assert step.kind == "prefill"
    assert [(r.rid, n, ctx) for r, n, ctx in step.items] == [("b", 50, 0), ("c", 60, 0)]


def test_max_running_requests_holds_the_rest_in_the_queue(model):
    engine = make_engine(model, max_running_requests=2)
    for i in range(5):
        engine.add(req(f"r{i}", 10, max_new=5), 0.0)
    step = engine.plan(0.0)
    assert [r.rid for r, _, _ in step.items] == ["r0", "r1"]
    assert engine.load().num_waiting_reqs == 3
    engine.apply(step, step.cost_s)
    steps, _ = run(engine, step.cost_s)
    assert max(len(s.items) for s in steps) == 2
    assert engine.idle


def test_retraction_when_kv_runs_out_and_tokens_do_not_change(model):
    # 3 requests of 100-token prompts and 100 new tokens need 600 KV slots; give them 400.
    prompts = {f"r{i}": [7 + i] * 100 for i in range(3)}
    roomy, tight = make_engine(model), make_engine(model, max_total_tokens=400)
    for engine in (roomy, tight):
        reqs = [req(rid, p, max_new=100, ignore_eos=True) for rid, p in prompts.items()]
        for r in reqs:
            engine.add(r, 0.0)
        run(engine)
        engine.reqs = reqs
    assert tight.stats.retractions >= 1
    assert sum(r.num_retractions for r in tight.reqs) == tight.stats.retractions
    for a, b in zip(roomy.reqs, tight.reqs, strict=True):
        assert b.finish_reason == {"type": "length", "length": 100}
        assert a.output_ids == b.output_ids  # retraction recomputes, it does not resample
    assert tight.used_tokens == 0


def test_retraction_picks_the_most_recently_admitted(model):
    engine = make_engine(model, max_total_tokens=60)
    first, second = (
        req("first", 20, max_new=100, ignore_eos=True),
        req("second", 20, max_new=100, ignore_eos=True),
    )
    engine.add(first, 0.0)
    engine.add(second, 0.0)
    now = 0.0
    while second.num_retractions == 0 and first.num_retractions == 0:
        step = engine.plan(now)
        now += step.cost_s
        engine.apply(step, now)
    assert second.num_retractions == 1 and first.num_retractions == 0
    assert engine.waiting[0] is second and second.phase is Phase.WAITING


def test_a_request_that_outgrows_the_kv_is_aborted_not_stuck(model):
    engine = make_engine(model, max_total_tokens=50)
    r = req("big", 40, max_new=100, ignore_eos=True)
    engine.add(r, 0.0)
    run(engine)
    assert r.finish_reason["type"] == "abort"
    assert engine.admissible(49) is None and engine.admissible(50) is not None
    with pytest.raises(ValueError, match="does not fit in the KV cache"):
        engine.add(req("huge", 50), 0.0)


def test_prefix_cache_hits_on_a_repeated_prompt(model):
    engine = make_engine(model)
    prompt = list(range(1, 2049))  # 4 blocks of 512
    a = req("a", prompt, max_new=2)
    engine.add(a, 0.0)
    run(engine)
    assert a.cached_tokens == 0
    b = req("b", prompt, max_new=2)
    engine.add(b, 1.0)
    step = engine.plan(1.0)
    # Every block hits, but the last token is always computed (it yields the logits).
    assert step.batch == [(1, 2047)]
    engine.apply(step, 1.0 + step.cost_s)
    run(engine, 2.0)
    assert b.cached_tokens == 2047
    c = req("c", prompt[:1024] + [5] * 1024, max_new=2)
    engine.add(c, 3.0)
    assert engine.plan(3.0).batch == [(1024, 1024)]


def test_prefix_cache_by_trace_hash_ids(model):
    engine = make_engine(model)
    a = Request("a", [1] * 1300, SamplingParams(max_new_tokens=1), hash_ids=[11, 12, 13])
    engine.add(a, 0.0)
    run(engine)
    b = Request("b", [2] * 1300, SamplingParams(max_new_tokens=1), hash_ids=[11, 12, 99])
    engine.add(b, 1.0)
    assert engine.plan(1.0).batch == [(1300 - 1024, 1024)]


def test_prefix_cache_lives_in_free_kv_and_flushes_only_when_idle(model):
    engine = make_engine(model, max_total_tokens=3000)
    engine.add(req("a", list(range(1, 2049)), max_new=1), 0.0)
    run(engine)
    assert engine.cache.tokens == 2048
    engine.add(req("b", [9] * 2500, max_new=10), 1.0)
    step = engine.plan(1.0)
    assert engine.cache.tokens + engine.used_tokens <= 3000
    assert engine.flush_cache() is False
    engine.apply(step, 2.0)
    run(engine, 2.0)
    assert engine.flush_cache() is True and engine.cache.tokens == 0


def test_resumed_request_continues_the_same_stream(model):
    prompt = builtin.encode("The emulated worker resumes a migrated request exactly.")
    engine = make_engine(model)
    whole = req("whole", prompt, max_new=50, ignore_eos=True)
    engine.add(whole, 0.0)
    run(engine)
    other = make_engine(model)  # another worker with the same seed
    rest = req("rest", prompt + whole.output_ids[:20], max_new=30, ignore_eos=True)
    other.add(rest, 0.0)
    run(other)
    assert whole.output_ids[:20] + rest.output_ids == whole.output_ids
    seeded = make_engine(model, seed=1)
    again = req("again", prompt, max_new=50, ignore_eos=True)
    seeded.add(again, 0.0)
    run(seeded)
    assert again.output_ids != whole.output_ids


def test_token_hash_depends_on_every_input():
    base = token_hash(0, 10, 1, 2, 3)
    assert base == token_hash(0, 10, 1, 2, 3)
    assert (
        len({base, token_hash(1, 10, 1, 2, 3), token_hash(0, 11, 1, 2, 3), token_hash(0, 10, 9, 2, 3)}) == 4
    )


def test_stop_conditions(model):
    eos_at_three = iter([5, 6, builtin.EOS_ID, 8, 9])
    engine = Engine(
        EngineConfig(1000, 8, 512),
        model.step_time,
        token_picker=lambda h: next(eos_at_three, builtin.EOS_ID),
    )
    r = req("eos", 5, max_new=10)
    engine.add(r, 0.0)
    run(engine)
    assert r.output_ids == [5, 6, builtin.EOS_ID]
    assert r.finish_reason == {"type": "stop", "matched": builtin.EOS_ID}

    engine = make_engine(model)
    free = req("free", 5, max_new=40, ignore_eos=True)
    engine.add(free, 0.0)
    run(engine)
    ids = free.output_ids
    for name, params, expect_len, reason in [
        ("stop_id", {"stop_token_ids": frozenset({ids[4]})}, 5, {"type": "stop", "matched": ids[4]}),
        ("min_new", {"stop_token_ids": frozenset({ids[4]}), "min_new_tokens": 6}, 40, None),
        (
            "stop_str",
            {"stop": (builtin.decode(ids[6:8]),)},
            8,
            {"type": "stop", "matched": builtin.decode(ids[6:8])},
        ),
        ("length", {}, 40, {"type": "length", "length": 40}),
    ]:
        r = req(name, 5, max_new=40, **params)
        engine.add(r, 0.0)
        run(engine)
        assert len(r.output_ids) == expect_len, name
        assert r.finish_reason == (reason or {"type": "length", "length": 40}), name


def test_zero_new_tokens_finishes_after_prefill(model):
    engine = make_engine(model)
    r = req("zero", 30, max_new=0)
    engine.add(r, 0.0)
    steps, _ = run(engine)
    assert [s.kind for s in steps] == ["prefill"]
    assert r.output_ids == [] and r.finish_reason == {"type": "length", "length": 0}


def test_abort_frees_kv_in_any_phase(model):
    engine = make_engine(model, chunked_prefill_size=100)
    a, b, c = req("a", 50, max_new=100), req("b", 500, max_new=100), req("c", 50, max_new=100)
    for r in (a, b, c):
        engine.add(r, 0.0)
    step = engine.plan(0.0)  # a fully, b partly
    engine.apply(step, step.cost_s)
    assert a.phase is Phase.RUNNING and b.phase is Phase.PREFILL and c.phase is Phase.WAITING
    step = engine.plan(1.0)
    for r in (a, b, c):
        assert engine.abort(r.rid, 1.0) is r
        assert r.finish_reason["type"] == "abort"
    engine.apply(step, 2.0)  # the step in flight skips what was aborted
    assert engine.used_tokens == 0 and engine.idle and engine.plan(2.0) is None
    assert engine.abort("a", 3.0) is None
    with pytest.raises(ValueError, match="Duplicate"):
        engine.add(req("x", 5), 0.0)
        engine.add(req("x", 5), 0.0)


def test_updates_are_reported_once_per_token_and_on_finish(model):
    seen = []
    engine = Engine(
        EngineConfig(10_000, 8, 512), model.step_time, on_update=lambda r, now: seen.append(r.rid)
    )
    engine.add(req("a", 10, max_new=4), 0.0)
    run(engine)
    assert seen == ["a"] * 4
