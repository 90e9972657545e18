"""/l4/stages explains the L4 policy: what its first layout waits for, when it last decided and why."""

import openai
from router_http import MODEL, get_json, poll, workers

from l4_sglang.router.app import BackgroundRouter, RouterSettings

ARRIVALS = 3


def test_stages_says_what_l4_waits_for_then_why_it_decided():
    with (
        workers(2) as ws,
        BackgroundRouter(
            RouterSettings(
                worker_urls=tuple(w.url for w in ws),
                port=0,
                policy="l4",
                policy_overrides={"min_arrivals": ARRIVALS, "refine_interval_s": 0.05},
                tick_interval=0.05,
            )
        ) as router,
    ):
        url = router.url
        first = get_json(url + "/l4/stages")
        assert first["policy"] == "l4"
        assert first["waiting_for"] == f"{ARRIVALS} arrivals before the first layout (seen 0)"
        assert first["last_refinement"] is None

        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        for _ in range(ARRIVALS):
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        found = poll(lambda: (s := get_json(url + "/l4/stages"))["last_refinement"] and s, timeout=10)
        assert found["waiting_for"] is None
        last = found["last_refinement"]
        # The first DP run has no layout in place to compare with: it is applied, and says so.
        # Every prompt alike: the DP proposes the one stage in place, and the cost it predicts is that one's.
        assert last["applied"] is False and last["reason"] == "kept: the DP proposes the layout in place"
        assert last["current_cost"] == last["proposed_cost"] and last["gain"] == 0.0
        assert isinstance(last["proposed_cost"], float) and last["proposed_cost"] >= 0
        assert 0 <= last["at"] <= found["now"]
        assert found["stages"], found


def test_stages_of_another_policy_has_no_l4_fields():
    with (
        workers(1) as ws,
        BackgroundRouter(RouterSettings(worker_urls=(ws[0].url,), port=0, policy="least_load")) as router,
    ):
        body = get_json(router.url + "/l4/stages")
        assert body == {"policy": "least_load", "stages": []}
