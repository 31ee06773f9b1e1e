"""What a conversation costs: an API's per-token price vs self-hosting a model on a rented GPU.

Self-hosting price per million tokens = GPU dollars per second ÷ tokens per second × 10^6, separately
for prefill (input tokens) and decode (output tokens):

    self_in  = gpu_hourly / 3600 / prefill_tps × 1e6
    self_out = gpu_hourly / 3600 / decode_tps  × 1e6

With the paper's inputs (an A100 at $2.50/h, vLLM at batch 64 doing ~15,000 prefill and ~3,000 decode
tokens/s): self_in = $0.0463/M and self_out = $0.2315/M (the paper rounds them to $0.05 and $0.23).
Against $3/M in and $15/M out: 3 / 0.0463 = 64.8 and 15 / 0.2315 = 64.8. Both ratios are the same
because the API's out:in price ratio (5) equals the GPU's prefill:decode speed ratio (5), so any mix of
input and output tokens is 64.8x cheaper: that is the paper's "~65x per token". (The paper's rounded
$0.05/$0.23 would give 60x/65x; the 65x comes from the unrounded figures.) In general the blended ratio
depends on the token mix; `per_token_ratio` reports it for a 1:1 mix and `blended_ratio` for any mix.

Per-conversation cost multiplies measured tokens by the agent's prices: a compiled (self-hosted) agent
pays the self-hosting rates, an API-backed agent the API table (`engine.backends.pricing`, per model, dated) or
the configured API prices. The one-time compile cost (data generation + GPU hours of training) divided
by the per-conversation saving gives the break-even number of conversations.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from engine.backends.base import Usage
from engine.backends.pricing import cost_usd
from engine.errors import StoreError

PAPER_GPU_HOURLY = 2.50
PAPER_PREFILL_TPS = 15_000.0
PAPER_DECODE_TPS = 3_000.0
PAPER_API_INPUT = 3.0
PAPER_API_OUTPUT = 15.0


class CostInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gpu_hourly: float = Field(PAPER_GPU_HOURLY, gt=0, description="Rented GPU price, USD per hour.")
    prefill_tps: float = Field(PAPER_PREFILL_TPS, gt=0, description="Self-hosted prefill throughput, input tokens/s.")
    decode_tps: float = Field(PAPER_DECODE_TPS, gt=0, description="Self-hosted decode throughput, output tokens/s.")
    api_input: float = Field(PAPER_API_INPUT, ge=0, description="API price, USD per million input tokens.")
    api_output: float = Field(PAPER_API_OUTPUT, ge=0, description="API price, USD per million output tokens.")
    data_cost: float = Field(40.0, ge=0, description="One-time cost of generating the training data, USD.")
    train_gpu_hours: float = Field(8.0, ge=0, description="GPU hours of the compile (fine-tuning) run.")


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: CostInputs = Field(description="What the table was computed from.")
    self_input_per_m: float = Field(description="Self-hosted USD per million input tokens.")
    self_output_per_m: float = Field(description="Self-hosted USD per million output tokens.")
    api_input_per_m: float = Field(description="API USD per million input tokens.")
    api_output_per_m: float = Field(description="API USD per million output tokens.")
    input_ratio: float = Field(description="API ÷ self-hosted price for input tokens.")
    output_ratio: float = Field(description="API ÷ self-hosted price for output tokens.")
    per_token_ratio: float = Field(description="API ÷ self-hosted for a 1:1 mix of input and output tokens.")
    compile_cost: float = Field(description="One-time compile cost: data + train_gpu_hours × gpu_hourly, USD.")


def price_table(inputs: CostInputs | None = None) -> PriceTable:
    c = inputs or CostInputs()
    per_second = c.gpu_hourly / 3600.0
    self_in = per_second / c.prefill_tps * 1e6
    self_out = per_second / c.decode_tps * 1e6
    return PriceTable(
        inputs=c, self_input_per_m=self_in, self_output_per_m=self_out,
        api_input_per_m=c.api_input, api_output_per_m=c.api_output,
        input_ratio=_ratio(c.api_input, self_in), output_ratio=_ratio(c.api_output, self_out),
        per_token_ratio=_ratio(c.api_input + c.api_output, self_in + self_out),
        compile_cost=c.data_cost + c.train_gpu_hours * c.gpu_hourly,
    )


def blended_ratio(table: PriceTable, input_tokens: float, output_tokens: float) -> float:
    """API ÷ self-hosted cost for a given mix of tokens."""
    api = input_tokens * table.api_input_per_m + output_tokens * table.api_output_per_m
    own = input_tokens * table.self_input_per_m + output_tokens * table.self_output_per_m
    return _ratio(api, own)


def self_hosted_usd(usage: Usage, table: PriceTable) -> float:
    # cached prompt tokens still go through prefill on our own GPU (no discount assumed)
    tokens_in = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return (tokens_in * table.self_input_per_m + usage.output_tokens * table.self_output_per_m) / 1e6


def api_usd(usage: Usage, table: PriceTable, model: str | None = None) -> float:
    """API cost: the dated price table in `engine.backends.pricing` when it knows the model, else the configured
    prices."""
    if model:
        try:
            known = cost_usd(usage, model)
        except StoreError:  # an unreadable prices.json: fall back to the configured prices
            known = 0.0
        if known > 0:
            return float(known)
    tokens_in = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    return (tokens_in * table.api_input_per_m + usage.output_tokens * table.api_output_per_m) / 1e6


def break_even_conversations(compile_cost: float, api_per_conv: float, self_per_conv: float) -> float | None:
    """Conversations after which compiling has paid for itself (None when it never does)."""
    saving = api_per_conv - self_per_conv
    if saving <= 0:
        return None
    return math.ceil(compile_cost / saving)


def format_table(table: PriceTable) -> str:
    c = table.inputs
    rows = [
        ("GPU", f"${c.gpu_hourly:.2f}/h, prefill {c.prefill_tps:,.0f} tok/s, decode {c.decode_tps:,.0f} tok/s"),
        ("self-hosted", f"${table.self_input_per_m:.4f}/M input, ${table.self_output_per_m:.4f}/M output"),
        ("API", f"${table.api_input_per_m:.2f}/M input, ${table.api_output_per_m:.2f}/M output"),
        ("API ÷ self-hosted", f"{table.input_ratio:.1f}x input, {table.output_ratio:.1f}x output, "
                              f"{table.per_token_ratio:.1f}x per token (1:1 mix)"),
        ("compile (one-time)", f"${table.compile_cost:.2f} = data ${c.data_cost:.2f} + "
                               f"{c.train_gpu_hours:g} GPU h × ${c.gpu_hourly:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf
