"""Fill the model-call cache through a provider's batch API (``--bclone-batch``).

Step-mode replay asks every agent the same kind of question at thousands of recorded states,
none of which depends on another answer: exactly what provider batch APIs serve, at about half
the price of live calls. This module sends a run's cache *misses* through litellm's batch
functions (file upload, batch create, poll with progress, download) and writes each answer into
the :class:`~pytest_bclone.cache.ModelCache` under the same key a live call would use
(:func:`~pytest_bclone.cache.cache_key` of the agent's request and the repeat index). The replay
that follows is then an ordinary run that finds the answers in the cache, so a batch-filled cache
is also replayed by ``--bclone-cache-mode=none``.

What can go wrong, and what happens:

- a line the batch failed (its own HTTP error) or never answered (the batch *expired* part-way,
  or *failed* as a whole) is left out of the cache: the replay after it calls that state live,
  where the retry budget applies and a final failure is counted as a failed call, never scored;
- an interrupted poll (Ctrl-C, a killed CI job) loses nothing: the batch id is kept in
  ``<cache dir>/batches/<id of the request set>.json`` before the first poll, and the next run
  with the same misses resumes that batch instead of submitting (and paying for) it again;
- answers are recorded with ``"batch": true`` and litellm's *batch* price where its price map
  has one, so reports show batch calls at the price they were billed at.

Only agents that make live litellm calls and have a cache take part; the recorded expert and
Python callables are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import TRANSPORT_PARAMS, cache_key
from .errors import AgentError

if TYPE_CHECKING:
    from .agents.litellm_agent import LitellmAgent
    from .records import State

__all__ = ["BATCH_PROVIDERS", "BatchError", "BatchReport", "fill_cache_by_batch"]

BATCH_PROVIDERS = frozenset({"openai", "azure", "hosted_vllm", "litellm_proxy", "mistral", "xai"})
"""litellm providers whose batch API takes OpenAI-format ``/v1/chat/completions`` lines."""

_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchError(AgentError):
    """The batch API could not be used at all (unsupported provider, upload or create refused)."""


@dataclass
class BatchReport:
    """What one agent's batch did: requests sent, answers cached, lines failed or never answered."""

    agent: str
    requests: int = 0
    answered: int = 0
    failed: int = 0
    unanswered: int = 0
    already_cached: int = 0
    batch_ids: list[str] = field(default_factory=list)
    resumed: bool = False
    status: str = "not needed"
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the report."""
        return {"agent": self.agent, "requests": self.requests, "answered": self.answered, "failed": self.failed,
                "unanswered": self.unanswered, "already_cached": self.already_cached,
                "batch_ids": list(self.batch_ids), "resumed": self.resumed, "status": self.status,
                "errors": list(self.errors[:5])}


def _provider(agent: LitellmAgent) -> tuple[str, str]:
    """(model name as the provider knows it, litellm provider)."""
    from .agents.litellm_agent import import_litellm

    litellm = import_litellm()
    model, provider, _key, _base = litellm.get_llm_provider(
        model=agent.model, custom_llm_provider=agent.params.get("custom_llm_provider"),
        api_base=agent.params.get("api_base"))
    return str(model), str(provider)


def _line(custom_id: str, request: Mapping[str, Any], model: str) -> dict[str, Any]:
    body = {k: v for k, v in request.items() if k not in TRANSPORT_PARAMS and k != "custom_llm_provider"}
    body["model"] = model
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _transport(agent: LitellmAgent, provider: str) -> dict[str, Any]:
    """The connection arguments of the agent's calls (api_base, api_key...), for the batch calls."""
    out = {k: v for k, v in agent.params.items() if k in TRANSPORT_PARAMS}
    out["custom_llm_provider"] = provider
    return out


def _value_from_body(body: Mapping[str, Any], agent: LitellmAgent, model: str, provider: str,
                     latency_s: float) -> dict[str, Any] | None:
    """The cache value a live call would have recorded, from one batch output line's body."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return None
    message = choices[0].get("message")
    if not isinstance(message, Mapping):
        return None
    usage = body.get("usage") or {}
    prompt = int(usage.get("prompt_tokens", 0) or 0)
    completion = int(usage.get("completion_tokens", 0) or 0)
    return {
        "message": {k: v for k, v in message.items() if v is not None},
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
        "response_model": body.get("model"),
        "litellm_cost_usd": _batch_cost(model, provider, prompt, completion),
        "latency_s": latency_s,
        "attempts": 1,
        "batch": True,
    }


def _batch_cost(model: str, provider: str, prompt: int, completion: int) -> float | None:
    """litellm's *batch* price of the tokens, None when its price map does not know the model
    (unknown is not free: the report then says the price is unknown)."""
    from .agents.litellm_agent import import_litellm

    litellm = import_litellm()
    try:
        litellm.get_model_info(model=model, custom_llm_provider=provider)
    except Exception:  # noqa: BLE001 (not in the price map)
        return None
    from litellm.cost_calculator import batch_cost_calculator
    from litellm.types.utils import Usage

    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    p, c = batch_cost_calculator(usage, model, provider)
    return float(p + c)


def _state_path(directory: Path, model: str, custom_ids: Sequence[str]) -> Path:
    digest = hashlib.sha256(("\n".join([model, *sorted(custom_ids)])).encode()).hexdigest()[:32]
    return directory / "batches" / f"{digest}.json"


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value), encoding="utf-8")
    os.replace(tmp, path)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


async def _content(litellm: Any, file_id: str, transport: Mapping[str, Any]) -> list[dict[str, Any]]:
    import warnings

    # litellm (pinned version) creates a second ``OpenAIFilesAPI.afile_content`` coroutine inside
    # its call wrapper and drops it unawaited: the download itself completes, but every batch run
    # printed a RuntimeWarning about litellm's internals. Silence exactly that message.
    warnings.filterwarnings("ignore", message="coroutine 'OpenAIFilesAPI.afile_content' was never awaited",
                            category=RuntimeWarning)
    response = await litellm.afile_content(file_id=file_id, **transport)
    raw = getattr(response, "content", None)
    if raw is None and hasattr(response, "read"):
        raw = response.read()
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw or "")
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a garbled line is an unanswered request: the replay calls it live
    return out


async def _run_agent_batch(
    agent: LitellmAgent,
    states: Sequence[tuple[State, int]],
    *,
    poll_interval_s: float,
    max_wait_s: float,
    on_progress: Callable[[str], None] | None,
) -> BatchReport:
    from .agents.litellm_agent import describe_litellm_exception, import_litellm

    report = BatchReport(agent.name)
    cache = agent.cache
    if cache is None or cache.mode in ("off", "none", "all"):
        # off: nothing to fill; none: no calls at all; all: every call is re-recorded live.
        report.status = f"skipped (cache mode {cache.mode if cache else 'off'})"
        return report
    model, provider = _provider(agent)
    if provider not in BATCH_PROVIDERS:
        raise BatchError(
            f"--bclone-batch: the {agent.name!r} agent's provider {provider!r} has no OpenAI-style batch API in "
            f"litellm (supported: {', '.join(sorted(BATCH_PROVIDERS))}); run without --bclone-batch for this agent"
        )
    lines: list[dict[str, Any]] = []
    requests: dict[str, Mapping[str, Any]] = {}
    for state, repeat in states:
        request = agent.request(state)
        key = cache_key(request, repeat)
        if key in requests:
            continue
        if cache.get(key) is not None:
            report.already_cached += 1
            continue
        requests[key] = request
        lines.append(_line(key, request, model))
    report.requests = len(lines)
    if not lines:
        return report
    litellm = import_litellm()
    transport = _transport(agent, provider)
    state_file = _state_path(cache.directory, agent.model, list(requests))
    start = time.monotonic()
    try:
        saved = json.loads(state_file.read_text(encoding="utf-8")) if state_file.exists() else None
    except ValueError:
        saved = None
    try:
        if saved and saved.get("batch_id"):
            batch_id, report.resumed = str(saved["batch_id"]), True
        else:
            payload = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()
            uploaded = await litellm.acreate_file(file=("bclone-batch.jsonl", payload), purpose="batch", **transport)
            batch = await litellm.acreate_batch(completion_window="24h", endpoint="/v1/chat/completions",
                                                input_file_id=_field(uploaded, "id"), **transport)
            batch_id = str(_field(batch, "id"))
            # Kept before the first poll: an interrupted run resumes this batch, never pays twice.
            _write_json(state_file, {"batch_id": batch_id, "model": agent.model, "requests": len(lines),
                                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        report.batch_ids.append(batch_id)
        while True:
            batch = await litellm.aretrieve_batch(batch_id=batch_id, **transport)
            status = str(_field(batch, "status"))
            counts = _field(batch, "request_counts")
            if on_progress is not None:
                done = _field(counts, "completed") if counts is not None else None
                on_progress(f"batch {batch_id} ({agent.name}): {status}"
                            + (f", {done}/{len(lines)} answered" if done is not None else ""))
            if status in _FINAL:
                break
            if time.monotonic() - start > max_wait_s:
                report.status = "still running (resumable)"
                report.unanswered = len(lines)
                report.errors.append(f"batch {batch_id} still {status} after {max_wait_s:g}s; rerun to resume it")
                return report
            await asyncio.sleep(poll_interval_s)
    except BatchError:
        raise
    except Exception as exc:  # noqa: BLE001 (litellm raises many types; the replay then calls live)
        raise BatchError(
            f"--bclone-batch: the batch API of {agent.name!r} failed: {describe_litellm_exception(exc)}; "
            "run without --bclone-batch to call the model live"
        ) from None
    report.status = status
    latency = time.monotonic() - start
    answered: set[str] = set()
    output_id, error_id = _field(batch, "output_file_id"), _field(batch, "error_file_id")
    for record in await _content(litellm, output_id, transport) if output_id else []:
        key = str(record.get("custom_id"))
        response = record.get("response") or {}
        if key not in requests or int(response.get("status_code") or 0) >= 400:
            continue
        value = _value_from_body(response.get("body") or {}, agent, model, provider, latency)
        if value is None:
            report.errors.append(f"{key[:16]}...: batch answer is not a chat completion")
            continue
        cache.put(key, value, request=requests[key], label=f"batch {batch_id}")
        answered.add(key)
    for record in await _content(litellm, error_id, transport) if error_id else []:
        body = (record.get("response") or {}).get("body") or {}
        message = (body.get("error") or {}).get("message") if isinstance(body, Mapping) else None
        report.errors.append(f"{str(record.get('custom_id'))[:16]}...: {message or record.get('error')}")
        report.failed += 1
    report.answered = len(answered)
    report.unanswered = len(lines) - report.answered - report.failed
    state_file.unlink(missing_ok=True)  # the batch is consumed: a later run starts afresh
    return report


async def fill_cache_by_batch(
    agents: Mapping[str, Any],
    states: Sequence[tuple[State, int]],
    *,
    poll_interval_s: float = 5.0,
    max_wait_s: float = 24 * 3600.0,
    on_progress: Callable[[str], None] | None = None,
) -> list[BatchReport]:
    """Send the cache misses of ``states`` (``(state, repeat)`` pairs) for every live litellm agent
    in ``agents`` through its provider's batch API and record the answers in its cache.

    Returns one :class:`BatchReport` per agent that makes live calls. Lines that failed or were
    not answered stay cache misses, so the replay that follows calls them live.
    """
    from .agents.litellm_agent import LitellmAgent

    reports = []
    for agent in agents.values():
        if isinstance(agent, LitellmAgent):
            reports.append(await _run_agent_batch(agent, states, poll_interval_s=poll_interval_s,
                                                  max_wait_s=max_wait_s, on_progress=on_progress))
    return reports
