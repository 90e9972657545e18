"""Malformed trace files raise ValueError naming the line and the field or column."""

from __future__ import annotations

import pytest

from l4_sglang.workload import load_azure, load_mooncake
from l4_sglang.workload.azure import parse_timestamp

GOOD_JSON = '{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}'
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
GOOD_ROW = "2023-11-16 18:17:03.9799600,4808,10"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"timestamp": 0, "input_length": 10', r":2: bad JSON"),
        ('{"timestamp": 0, "output_length": 5}', r":2: missing field 'input_length'"),
        ('{"input_length": 1, "output_length": 5}', r":2: missing field 'timestamp'"),
        ('{"timestamp": 0, "input_length": -3, "output_length": 5}', r":2: field 'input_length'"),
        ('{"timestamp": 0, "input_length": 3, "output_length": 1.5}', r":2: field 'output_length'"),
        ('{"timestamp": -1, "input_length": 3, "output_length": 1}', r":2: field 'timestamp'"),
        ('{"timestamp": 0, "input_length": 3, "output_length": 1, "hash_ids": 7}', r":2: field 'hash_ids'"),
        ("[1, 2]", r":2: expected a JSON object"),
    ],
)
def test_mooncake_malformed(tmp_path, bad, message):
    path = tmp_path / "t.jsonl"
    path.write_text(f"{GOOD_JSON}\n{bad}\n{GOOD_JSON}\n")
    with pytest.raises(ValueError, match=message):
        load_mooncake(path)


def test_mooncake_skips_blank_lines_and_needs_no_hashes(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(f'{GOOD_JSON}\n\n{{"timestamp": 3000, "input_length": 1, "output_length": 2}}\n')
    t = load_mooncake(path, seed=0)
    assert len(t) == 2 and t[1].hash_ids == () and t.duration_s == 6.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.1,5\n", r"missing column\(s\) GeneratedTokens"),
        (f"{HEADER}\n{GOOD_ROW}\n2023-11-16 18:17:04.1,-5,3\n", r":3: column 'ContextTokens' must be >= 0"),
        (f"{HEADER}\n{GOOD_ROW}\n2023-11-16 18:17:04.1,5,x\n", r":3: column 'GeneratedTokens'"),
        (f"{HEADER}\n{GOOD_ROW}\n2023-11-16 18:17:04.1,5\n", r":3: column 'GeneratedTokens'"),
        (f"{HEADER}\n{GOOD_ROW}\nyesterday,5,3\n", r":3: column 'TIMESTAMP'"),
    ],
)
def test_azure_malformed(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_azure(path)


def test_parse_timestamp_fractions():
    base = parse_timestamp("2023-11-16 18:17:03")
    assert parse_timestamp("2023-11-16 18:17:03.9799600") - base == pytest.approx(0.97996)
    assert parse_timestamp("2023-11-16T18:17:03.5") - base == pytest.approx(0.5)
    assert parse_timestamp("2023-11-16 18:17:04.123456789") - base == pytest.approx(1.123456789)
