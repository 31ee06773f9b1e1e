"""The LLM judge: the paper's five criteria, 1-5 with behavioural anchors, blind to the agent.

The judge sees the transcript ("Customer:" / "Assistant:") and the customer's scenario details, never
which agent produced it or the flowchart. It must answer one JSON object; the reply is validated with
pydantic and, when malformed (not JSON, a missing criterion, a score outside 1-5), the judge is asked
again with the validation problem quoted, up to `max_attempts` times. Graceful handling is capped at 3
when the user posed no challenge (the scenario says so, or the judge says so when the scenario cannot).

Any backend can judge (`engine.backends.get_backend`); a second judge re-scores the same transcripts
and `compare_judges` reports per-criterion agreement and mean difference.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.backends.base import Backend, ChatRequest, Message, Sampling, Usage
from engine.errors import BackendError, BackendResponseError

CRITERIA: tuple[str, ...] = ("task_success", "information_accuracy", "consistency", "graceful_handling",
                             "naturalness")
NO_CHALLENGE_CAP = 3
FAILURE_AT = 3  # task success at or below this is a failed conversation

RUBRIC = """\
Score the assistant on five criteria, each an integer from 1 to 5:

task_success: 5 = carried the customer through the whole procedure to a clear end state (done, \
declined, or handed over); 3 = got through the middle stages but the conversation fizzled out; \
1 = no meaningful progress.
information_accuracy: 5 = every detail the customer gave was used correctly; 3 = minor slips; \
1 = fabricated details or ignored what the customer said.
consistency: 5 = no contradictions and no repeated questions; 3 = an occasional repeat or \
contradiction; 1 = contradicts itself repeatedly.
graceful_handling: 5 = adapts smoothly to changes of mind, ambiguity and unexpected requests; \
3 = copes but awkwardly; 1 = any deviation breaks it. If the customer posed no such challenge, \
give at most 3.
naturalness: 5 = indistinguishable from a skilled human agent; 3 = serviceable but stiff; \
1 = mechanical or robotic.
"""

OUTPUT_FORMAT = """\
Answer with ONLY this JSON object, no other text:
{"task_success": <1-5>, "information_accuracy": <1-5>, "consistency": <1-5>, \
"graceful_handling": <1-5>, "naturalness": <1-5>, "user_posed_challenge": <true|false>, \
"rationale": "<one or two sentences>"}"""


class Verdict(BaseModel):
    """What the judge must return."""

    model_config = ConfigDict(extra="forbid")
    task_success: int = Field(ge=1, le=5, description="1-5, see RUBRIC.")
    information_accuracy: int = Field(ge=1, le=5, description="1-5, see RUBRIC.")
    consistency: int = Field(ge=1, le=5, description="1-5, see RUBRIC.")
    graceful_handling: int = Field(ge=1, le=5, description="1-5, see RUBRIC; at most 3 without a challenge.")
    naturalness: int = Field(ge=1, le=5, description="1-5, see RUBRIC.")
    user_posed_challenge: bool = Field(False, description="The customer changed their mind, was ambiguous, ...")
    rationale: str = Field("", description="The judge's short reason.")

    @field_validator(*CRITERIA, mode="before")
    @classmethod
    def _whole(cls, v: object) -> object:
        # "4" and 4.0 are fine; 4.5 or "four" are not
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    def scores(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in CRITERIA}


class Judgement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge: str = Field(description="backend:model that judged.")
    scores: dict[str, int] | None = Field(description="Criterion → 1-5 after the cap; None when the judge failed.")
    raw_scores: dict[str, int] | None = Field(None, description="Scores as the judge gave them (before the cap).")
    capped: bool = Field(False, description="Graceful handling was capped at 3 (no challenge).")
    rationale: str = ""
    attempts: int = Field(description="Calls made, retries included.")
    error: str | None = Field(None, description="Why the judge failed after every attempt.")
    usage: Usage = Field(default_factory=Usage)


class Judge:
    def __init__(self, backend: Backend, max_attempts: int = 3, max_tokens: int = 400):
        self.backend = backend
        self.max_attempts = max_attempts
        self.sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
        self.name = f"{getattr(backend, 'name', '?')}:{getattr(backend, 'model', '') or '?'}"

    async def judge(self, transcript: Sequence[Message], scenario_details: dict[str, object] | None = None,
                    challenged: bool | None = None) -> Judgement:
        """Score one conversation. `challenged` is what the scenario says (None: let the judge decide)."""
        messages = [Message(role="user", content=judge_prompt(transcript, scenario_details))]
        usage = Usage()
        problem = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                result = await self.backend.complete(ChatRequest(system=SYSTEM, messages=messages,
                                                                 sampling=self.sampling))
            except BackendError as e:
                problem = str(e)
                continue
            usage = usage + result.usage
            try:
                verdict = parse_verdict(result.text)
            except BackendResponseError as e:
                problem = str(e)
                messages = [*messages, Message(role="assistant", content=result.text or "(empty)"),
                            Message(role="user", content=f"That reply was not valid: {e}. {OUTPUT_FORMAT}")]
                continue
            return _judgement(self.name, verdict, challenged, attempt, usage)
        return Judgement(judge=self.name, scores=None, attempts=self.max_attempts, usage=usage,
                         error=f"no valid verdict after {self.max_attempts} attempts; last problem: {problem}")


SYSTEM = ("You are an impartial quality reviewer of customer-service conversations. You do not know "
          "which system produced a conversation; judge only what is on the page.")


def judge_prompt(transcript: Sequence[Message], scenario_details: dict[str, object] | None = None) -> str:
    lines = [f"{'Customer' if m.role == 'user' else 'Assistant'}: {m.content}"
             for m in transcript if m.role != "system"]
    details = "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in (scenario_details or {}).items())
    parts = [RUBRIC]
    if details:
        parts.append("What the customer wanted and knew (for judging accuracy):\n" + details)
    parts += ["The conversation:\n" + "\n".join(lines), OUTPUT_FORMAT]
    return "\n\n".join(parts)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_verdict(text: str) -> Verdict:
    """The first JSON object in the reply (code fences allowed), validated. Raises BackendResponseError."""
    if not text or not text.strip():
        raise BackendResponseError("the reply was empty")
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    start = candidate.find("{")
    if start < 0:
        raise BackendResponseError("the reply contains no JSON object")
    try:
        obj, _ = json.JSONDecoder().raw_decode(candidate[start:])
    except json.JSONDecodeError as e:
        raise BackendResponseError(f"the JSON does not parse ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict):
        raise BackendResponseError("the JSON is not an object")
    try:
        return Verdict.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise BackendResponseError(f"{where}: {err['msg']}") from None


def _judgement(name: str, verdict: Verdict, challenged: bool | None, attempts: int, usage: Usage) -> Judgement:
    raw = verdict.scores()
    scores = dict(raw)
    posed = verdict.user_posed_challenge if challenged is None else challenged
    capped = not posed and scores["graceful_handling"] > NO_CHALLENGE_CAP
    if capped:
        scores["graceful_handling"] = NO_CHALLENGE_CAP
    return Judgement(judge=name, scores=scores, raw_scores=raw, capped=capped, rationale=verdict.rationale,
                     attempts=attempts, usage=usage)


# ----------------------------------------------------------------------------------------------
# two judges


class JudgeAgreement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    criterion: str
    n: int = Field(description="Conversations both judges scored.")
    exact: float | None = Field(description="Share with identical scores.")
    within_one: float | None = Field(description="Share whose scores differ by at most 1.")
    mean_diff: float | None = Field(description="Mean of (first judge - second judge).")
    spearman: float | None = Field(description="Rank correlation (None when a judge gave constant scores).")


def compare_judges(first: Sequence[Judgement], second: Sequence[Judgement]) -> list[JudgeAgreement]:
    from scipy.stats import spearmanr

    out = []
    for c in CRITERIA:
        pairs = [(a.scores[c], b.scores[c]) for a, b in zip(first, second, strict=True) if a.scores and b.scores]
        if not pairs:
            out.append(JudgeAgreement(criterion=c, n=0, exact=None, within_one=None, mean_diff=None, spearman=None))
            continue
        x = np.array([p[0] for p in pairs], dtype=float)
        y = np.array([p[1] for p in pairs], dtype=float)
        rho = None
        if len(pairs) > 2 and x.std() > 0 and y.std() > 0:
            rho = float(spearmanr(x, y).statistic)
        out.append(JudgeAgreement(criterion=c, n=len(pairs), exact=float(np.mean(x == y)),
                                  within_one=float(np.mean(np.abs(x - y) <= 1)), mean_diff=float(np.mean(x - y)),
                                  spearman=rho))
    return out
