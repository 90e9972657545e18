"""The built-in tokenizer: round trips, plausible counts, no crash on any input."""

import random

from hypothesis import given
from hypothesis import strategies as st

from l4_sglang.text import builtin
from l4_sglang.worker.engine import Request, SamplingParams
from l4_sglang.worker.protocol import TextStream

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. In 2024, revenue grew by 15% to $3.2 billion, "
    "according to the company's annual report; analysts had expected less. "
)


@given(st.text())
def test_any_text_round_trips(text):
    ids = builtin.encode(text)
    assert all(0 <= i < builtin.VOCAB_SIZE for i in ids)
    assert builtin.decode(ids) == text


@given(st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1))
def test_lone_surrogates_do_not_crash(text):
    assert set(builtin.decode(builtin.encode(text))) == {"\ufffd"}


@given(st.lists(st.integers(min_value=-5, max_value=builtin.VOCAB_SIZE + 5)))
def test_any_ids_decode(ids):
    assert isinstance(builtin.decode(ids), str)


def test_english_counts_about_three_characters_per_token():
    text = ENGLISH * 20
    chars_per_token = len(text) / builtin.count_tokens(text)
    assert 2.5 <= chars_per_token <= 4.5
    assert builtin.encode(" the") == [builtin.encode(" the")[0]]  # a short word is one token
    assert len(builtin.encode("日本語")) == 3


def test_generated_pieces_re_encode_to_the_same_ids():
    rng = random.Random(0)
    ids = [builtin.word_piece(rng.getrandbits(64)) for _ in range(500)]
    assert builtin.encode(builtin.decode(ids)) == ids


def test_special_tokens_and_chat_template():
    assert builtin.decode([builtin.BOS_ID, builtin.EOS_ID, builtin.EOT_ID]) == ""
    assert builtin.token_name(builtin.EOT_ID) == "<|eot_id|>"
    ids = builtin.chat_prompt_ids([("user", "hi")])
    assert ids[0] == builtin.BOS_ID and ids.count(builtin.START_HEADER_ID) == 2
    assert builtin.decode(ids) == "user\n\nhiassistant\n\n"


def test_text_stream_holds_back_a_character_split_across_tokens():
    ids = builtin.encode("ok 🙂!")
    req = Request("r", [1], SamplingParams(max_new_tokens=len(ids)))
    stream = TextStream()
    seen = []
    for i in ids:
        req.output_ids.append(i)
        seen.append(stream.update(req))
    assert seen == ["ok", "ok ", "ok ", "ok ", "ok ", "ok 🙂", "ok 🙂!"]
    assert all("\ufffd" not in s for s in seen)
