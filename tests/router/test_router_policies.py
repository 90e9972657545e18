"""Every registered policy serves a request end to end through the router."""

import openai
import pytest
from router_http import MODEL, get_json, workers

from l4_sglang.policy.registry import POLICIES
from l4_sglang.router import BackgroundRouter, RouterSettings


@pytest.fixture(scope="module")
def pair():
    with workers(2) as ws:
        yield ws


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_serves_a_chat(pair, name):
    settings = RouterSettings(worker_urls=tuple(w.url for w in pair), port=0, policy=name, seed=1)
    with BackgroundRouter(settings) as router:
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=30)
        out = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Hello from {name}"}], max_tokens=6
        )
        assert out.usage.completion_tokens == 6 and out.choices[0].message.content
        stages = get_json(router.url + "/l4/stages")
        assert stages["policy"] == name
        if name in ("l4", "static_buckets"):
            assert sorted(w for s in stages["stages"] for w in s["workers"]) == sorted(w.url for w in pair)
        else:
            assert stages["stages"] == []
