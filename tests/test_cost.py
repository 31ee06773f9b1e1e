"""The cost model with the paper's inputs, and `subterra cost`."""

from __future__ import annotations

import json

import pytest

from engine.backends.base import Usage
from engine.cli import main
from engine.evaluate.cost import (
    CostInputs,
    api_usd,
    blended_ratio,
    break_even_conversations,
    price_table,
    self_hosted_usd,
)


def test_paper_inputs_give_65x_per_token():
    t = price_table()
    # $2.50/h ÷ 3600 s ÷ 15,000 tok/s × 1e6 = $0.0463/M; ÷ 3,000 tok/s → $0.2315/M
    assert t.self_input_per_m == pytest.approx(2.5 / 3600 / 15_000 * 1e6)
    assert round(t.self_input_per_m, 2) == 0.05
    assert round(t.self_output_per_m, 2) == 0.23
    assert t.input_ratio == pytest.approx(64.8)
    assert t.output_ratio == pytest.approx(64.8)
    assert t.per_token_ratio == pytest.approx(64.8)
    assert round(t.per_token_ratio) == 65


def test_ratio_depends_on_the_mix_when_speeds_and_prices_disagree():
    t = price_table(CostInputs(prefill_tps=10_000))
    assert t.input_ratio == pytest.approx(3 / (2.5 / 3600 / 10_000 * 1e6))
    only_in = blended_ratio(t, 1_000_000, 0)
    only_out = blended_ratio(t, 0, 1_000_000)
    assert only_in == pytest.approx(t.input_ratio) and only_out == pytest.approx(t.output_ratio)
    assert min(only_in, only_out) < blended_ratio(t, 500, 500) < max(only_in, only_out)


def test_per_conversation_costs_and_break_even():
    t = price_table()
    u = Usage(input_tokens=40_000, output_tokens=2_000)
    assert self_hosted_usd(u, t) == pytest.approx((40_000 * t.self_input_per_m + 2_000 * t.self_output_per_m) / 1e6)
    assert api_usd(u, t) == pytest.approx((40_000 * 3 + 2_000 * 15) / 1e6)
    # the dated price table wins for a known model (claude-haiku-4-5: $1/$5)
    assert api_usd(u, t, "claude-haiku-4-5") == pytest.approx((40_000 * 1 + 2_000 * 5) / 1e6)
    assert api_usd(u, t, "some-unknown-model") == pytest.approx(api_usd(u, t))
    assert t.compile_cost == pytest.approx(40 + 8 * 2.5)
    assert break_even_conversations(60.0, 0.133, 0.001) == 455  # the paper: within 500 conversations
    assert break_even_conversations(60.0, 0.001, 0.002) is None


def test_cost_cli_json_and_table(capsys):
    assert main(["cost", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["per_token_ratio"] == pytest.approx(64.8)
    assert main(["cost", "--gpu-hourly", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_token_ratio"] == pytest.approx(32.4)
    assert main(["cost"]) == 0
    assert "64.8x per token" in capsys.readouterr().out


def test_cost_cli_rejects_bad_numbers_with_the_flag_name(capsys):
    assert main(["cost", "--decode-tps", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: --decode-tps: Input should be greater than 0"
