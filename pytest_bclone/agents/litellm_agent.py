"""Any litellm model as an agent. The only module of pytest-bclone that imports litellm.

litellm is imported lazily, on the first call or spec check (``import litellm`` costs seconds),
after ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (else it fetches its price map from the network) and
``LITELLM_LOG=ERROR`` (else it logs every call), both only when the user has not set them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from ..cache import ModelCache
from ..errors import ModelAccessError, RetriesExhausted
from ..records import Action, AgentReply, CallStats, State
from ..redact import redact_text, register_environment, register_params
from ..retry import Failure, RetryPolicy, call_with_retries, classify_exception

__all__ = [
    "LitellmAgent", "MalformedResponse", "check_model", "classify_litellm_exception", "describe_litellm_exception",
    "import_litellm",
]

OWN_PARAMS = frozenset({"timeout", "request_timeout", "num_retries", "max_retries"})
"""Parameters the replay engine owns (``--bclone-timeout``, ``--bclone-max-retries``): dropped from
user params so that litellm and the openai SDK never retry behind the engine's back."""

# The provider's usual key variable, for the fix of an authentication error (litellm's prefix -> name).
_KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY", "azure": "AZURE_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY", "mistral": "MISTRAL_API_KEY", "groq": "GROQ_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY", "openrouter": "OPENROUTER_API_KEY", "deepseek": "DEEPSEEK_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY", "cohere": "COHERE_API_KEY",
}


@functools.cache  # once per process: each call looks litellm up, and an import statement costs ~5 us
def import_litellm() -> Any:
    """Import litellm quietly and offline; return the module."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banner on every error
    litellm.telemetry = False
    return litellm


def check_model(model: str, params: Mapping[str, Any] | None = None) -> str | None:
    """``None`` when litellm knows how to route ``model``, else litellm's reason (one line)."""
    litellm = import_litellm()
    params = params or {}
    try:
        litellm.get_llm_provider(
            model=model, custom_llm_provider=params.get("custom_llm_provider"), api_base=params.get("api_base")
        )
    except Exception as exc:  # noqa: BLE001 (litellm raises several types for an unroutable model)
        return describe_litellm_exception(exc)
    return None


class MalformedResponse(Exception):
    """A 200 answer that is not a usable chat completion (no choices, no message)."""


_PREFIX = re.compile(r"^(?:litellm\.)?\w+(?:Error|Exception|Timeout)(?: - |: )")


def _clean(text: str) -> str:
    """Drop litellm's repeated ``litellm.XError: XError: OpenAIException - `` prefixes."""
    previous = None
    while previous != text:
        previous, text = text, _PREFIX.sub("", text, count=1)
    return text


def _is_malformed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(20):  # the cause chain, bounded
        if seen is None:
            break
        if isinstance(seen, (MalformedResponse, json.JSONDecodeError)):
            return True
        seen = seen.__cause__ or seen.__context__
    # litellm reports bodies it cannot convert as a 500 and keeps only the text of the cause
    text = str(exc)
    return "Invalid response object" in text or "'choices' that is not a list" in text


def describe_litellm_exception(exc: BaseException) -> str:
    """``RateLimitError: stub status 429`` rather than litellm's thrice-prefixed first line.

    Secrets are masked: an error body may echo the request's headers or the key it refused."""
    lines = str(exc).strip().splitlines()
    text = _clean(lines[0]) if lines else ""
    line = redact_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    return line if len(line) <= 300 else line[:297] + "..."


def classify_litellm_exception(exc: BaseException) -> Failure:
    """Like :func:`~pytest_bclone.retry.classify_exception`, plus: a malformed body is not retried.

    litellm turns a 200 whose body is not JSON, or has no choices, into an HTTP 500 error; asking
    again would get the same body, so it fails at once with a message that says what it was.
    """
    if _is_malformed(exc):
        return Failure(False, f"malformed response body (not a chat completion): {describe_litellm_exception(exc)}")
    return classify_exception(exc, describe_litellm_exception)


def _message_dict(message: Any) -> dict[str, Any]:
    raw = message.model_dump() if hasattr(message, "model_dump") else dict(message)
    # litellm adds provider bookkeeping (None-valued function_call, provider_specific_fields)
    return {k: v for k, v in raw.items() if v is not None and k != "provider_specific_fields"}


def _litellm_cost(litellm: Any, response: Any) -> float | None:
    """litellm's price of ``response`` in USD, ``None`` when the model is not in its price map."""
    hidden = getattr(response, "_hidden_params", None) or {}
    if "response_cost" in hidden:  # litellm already ran completion_cost while logging the call
        cost = hidden["response_cost"]
        return None if cost is None else float(cost)
    try:
        return float(litellm.completion_cost(completion_response=response))
    except Exception:  # noqa: BLE001 (ModelNotMappedError and friends: price unknown, not a crash)
        return None


class LitellmAgent:
    """An agent that asks a litellm model (``openai/my-ft-model``, ``gpt-4o``, ``hosted_vllm/...``).

    ``params`` are extra litellm arguments (``api_base``, ``api_key``, ``temperature``...), e.g.
    ``--bclone-clone`` with ini ``bclone_clone_params``; litellm's usual environment variables
    (``OPENAI_API_BASE``, ``OPENAI_API_KEY``) apply when they are absent. Each call goes through
    ``cache`` (when given) and ``retry``; ``prices`` maps a model name to USD per million
    (input, output) tokens and overrides litellm's price map. ``role`` (``clone``, ``expert``,
    ``judge``) names the agent in the message that stops the run when the provider refuses it.

    The secrets among ``params`` (``api_key``, authorization headers) and the environment's key
    variables are registered with :mod:`pytest_bclone.redact`, so no message or report shows them.
    """

    def __init__(
        self,
        model: str,
        *,
        params: Mapping[str, Any] | None = None,
        cache: ModelCache | None = None,
        retry: RetryPolicy | None = None,
        prices: Mapping[str, tuple[float, float]] | None = None,
        name: str | None = None,
        role: str | None = None,
    ) -> None:
        self.model = model
        self.name = name or model
        self.role = role
        self.params = {k: v for k, v in (params or {}).items() if k not in OWN_PARAMS}
        self.cache = cache
        self.retry = retry or RetryPolicy()
        self.prices = dict(prices or {})
        self._refused: ModelAccessError | None = None
        register_params(self.params)
        register_environment()

    def request(self, state: State) -> dict[str, Any]:
        """The litellm arguments for ``state`` (the cache key is computed from these)."""
        request: dict[str, Any] = {**self.params, "model": self.model, "messages": list(state.messages)}
        if state.tools:
            request["tools"] = list(state.tools)
        return request

    async def act(self, state: State, *, repeat: int = 0) -> AgentReply:
        """Ask the model (or its recording) for the next action at ``state``.

        A call that fails after every retry is a failed reply, never an exception; only
        :class:`~pytest_bclone.errors.CacheMiss` (cache mode ``none``) and
        :class:`~pytest_bclone.errors.ModelAccessError` (the provider refused the key or does not
        know the model: every call would fail, so the run stops) propagate. Once refused, the agent
        raises the same error at once on every later call, without asking again.
        """
        if self._refused is not None:
            raise self._refused
        request = self.request(state)
        label = f"trajectory {state.trajectory_id!r} step {state.step} repeat {repeat} (model {self.model})"
        try:
            if self.cache is None:
                value, cached = await self._fetch(request, label), False
            else:
                result = await self.cache.cached_call(
                    request, lambda: self._fetch(request, label), repeat=repeat, label=label
                )
                value, cached = result.value, result.cached
        except RetriesExhausted as exc:
            return AgentReply(None, CallStats(latency_s=exc.elapsed_s, retries=exc.retries,
                                              error=redact_text(str(exc))))
        except ModelAccessError as exc:
            self._refused = self.refused(exc)
            raise self._refused from None
        return self._reply(value, cached, label)

    def refused(self, exc: ModelAccessError) -> ModelAccessError:
        """The one message that stops the run: which agent (role, model, endpoint), what the
        provider said, and the fix."""
        role = self.role or "agent"
        option = f"--bclone-{role}" if role in ("clone", "expert", "judge", "user") else "the agent spec"
        params_key = f"bclone_{role}_params" if role in ("clone", "expert", "user") else "the agent's params"
        provider = self.model.partition("/")[0] if "/" in self.model else "openai"
        variable = _KEY_VARIABLES.get(provider, f"{provider.upper()}_API_KEY")
        base = self.params.get("api_base") or self.params.get("base_url")
        where = f" at {base}" if base else ""
        detail = redact_text(exc.detail)
        if exc.status == 404:
            fix = (f"the model or endpoint does not exist: check {option}={self.model}"
                   f"{' and api_base in ' + params_key if role in ('clone', 'expert', 'user') else ''}")
        elif exc.status == 403:
            fix = (f"the key is not allowed to use {self.model}: use a key with access to it "
                   f"(api_key in {params_key} or ${variable}) or another model")
        else:
            fix = (f"the provider refused the credentials or found none: set a valid key in ${variable} or as "
                   f"api_key in {params_key}")
        return ModelAccessError(
            f"the {role} {self.model}{where} cannot be used: {detail}; {fix}, then rerun "
            "(not retried: every call would fail the same way)",
            status=exc.status, detail=detail,
        )

    async def _fetch(self, request: dict[str, Any], label: str) -> dict[str, Any]:
        """One model answer (with retries) as the JSON-able value the cache records."""
        litellm = import_litellm()
        start = time.monotonic()
        # litellm's own timeout is a backstop a little after ours, so the socket is closed even if
        # the engine's asyncio timeout never gets to cancel it.
        arguments = {**request, "timeout": self.retry.timeout + 1.0, "num_retries": 0, "max_retries": 0}

        async def attempt() -> Any:
            response = await litellm.acompletion(**arguments)
            choices = getattr(response, "choices", None)
            if not choices or getattr(choices[0], "message", None) is None:
                raise MalformedResponse(f"the response has no choices (model {getattr(response, 'model', '?')})")
            return response

        response, attempts = await call_with_retries(
            attempt, self.retry, label=label, classify=classify_litellm_exception
        )
        usage = getattr(response, "usage", None)
        return {
            "message": _message_dict(response.choices[0].message),
            "usage": {
                "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
            },
            "response_model": getattr(response, "model", None),
            "litellm_cost_usd": _litellm_cost(litellm, response),
            "latency_s": time.monotonic() - start,
            "attempts": attempts,
        }

    def price(self, response_model: str | None) -> tuple[float, float] | None:
        """The ``--bclone-price`` override for this agent's model, if any."""
        for name in (self.model, response_model, self.model.partition("/")[2]):
            if name and name in self.prices:
                return self.prices[name]
        return None

    def _reply(self, value: Mapping[str, Any], cached: bool, label: str) -> AgentReply:
        message = value.get("message")
        if not isinstance(message, Mapping):
            return AgentReply(None, CallStats(cached=cached, error=f"{label}: recorded answer has no message"))
        usage = value.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        # The override is applied at reply time, so a price given after recording still counts.
        price = self.price(value.get("response_model"))
        if price is not None:
            cost, known = (prompt * price[0] + completion * price[1]) / 1e6, True
        elif value.get("litellm_cost_usd") is not None:
            cost, known = float(value["litellm_cost_usd"]), True
        else:
            cost, known = 0.0, False
        return AgentReply(
            Action.from_message(message),
            CallStats(
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=cost,
                latency_s=0.0 if cached else float(value.get("latency_s", 0.0)),
                retries=0 if cached else max(0, int(value.get("attempts", 1)) - 1),
                cached=cached,
                price_known=known,
            ),
        )

    async def aclose(self) -> None:
        """Close litellm's cached HTTP clients (bound to the event loop that is about to close)."""
        if "litellm" in sys.modules:
            await import_litellm().close_litellm_async_clients()

