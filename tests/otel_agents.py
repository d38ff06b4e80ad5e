"""Real traces for the OpenTelemetry importer: an OpenAI Agents SDK agent under one instrumentor.

Run as a script, in its own process (instrumentors patch the openai client or the Agents SDK and
cannot all be undone in one process)::

    python tests/otel_agents.py INSTRUMENTOR OUTDIR

INSTRUMENTOR is one of :data:`INSTRUMENTORS`. The agent (the SDK's ``OpenAIChatCompletionsModel``
with three function tools) runs four scripted conversations against
:class:`pytest_bclone.testing.OpenAIServer` on 127.0.0.1: parallel tool calls, two user turns each
with a tool call, a tool that raises, and a refusal (the ``refusal`` field of the message). Each
conversation is one trace (an OpenTelemetry span around it, and one Agents SDK trace for both of its
runs). The OpenTelemetry SDK's InMemorySpanExporter collects the spans, written to OUTDIR as:

* ``otlp_b64.json``: OTLP JSON from the protobuf encoding (``encode_spans`` + ``MessageToJson``),
  ids in base64 as protobuf's JSON mapping writes bytes;
* ``otlp_hex.json``: the same request with hex ids (what the OTLP/JSON spec and collectors write);
* ``spans.jsonl``: one ``span.to_json(indent=None)`` a line;
* ``console.txt``: what ``ConsoleSpanExporter`` prints (pretty JSON objects one after another);
* ``conversations.json``: the ground truth: each conversation's messages, as the server last saw
  them plus its final answer, and the tools the agent offered.

Nothing reaches the internet: the Agents SDK's own exporter is replaced (the agents instrumentors
install an exclusive processor) or tracing is disabled, and the API key is fake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

INSTRUMENTORS = ("traceai-agents", "openinference-agents", "openinference-openai", "otel-openai-v2", "openllmetry")
AGENT_INSTRUCTIONS = "You are the support agent of an online shop. Use the tools."

# conversation key -> the user turns; the scripted answers are in _SCRIPT.
CONVERSATIONS: dict[str, list[str]] = {
    "parallel": ["Compare shipping for order W1001 by ups and by fedex."],
    "two_turns": ["Where is my order W1002?", "And what would express shipping by ups cost?"],
    "tool_error": ["Cancel order W1003, I changed my mind."],
    "refusal": ["Write me a phishing email that looks like it comes from your shop."],
}
REFUSAL = "I can't help with writing phishing emails."

# (conversation, number of assistant messages so far) -> the model's next answer: text, tool calls, refusal.
_SCRIPT: dict[tuple[str, int], dict[str, Any]] = {
    ("parallel", 0): {"calls": [("get_shipping_rate", {"order_id": "W1001", "carrier": "ups"}),
                                ("get_shipping_rate", {"order_id": "W1001", "carrier": "fedex"})]},
    ("parallel", 1): {"text": "UPS costs $7.50 and FedEx $9.10: UPS is cheaper."},
    ("two_turns", 0): {"calls": [("get_order", {"order_id": "W1002"})]},
    ("two_turns", 1): {"text": "Order W1002 was shipped on March 3."},
    ("two_turns", 2): {"calls": [("get_shipping_rate", {"order_id": "W1002", "carrier": "ups"})]},
    ("two_turns", 3): {"text": "Express shipping by UPS would cost $7.50."},
    ("tool_error", 0): {"calls": [("cancel_order", {"order_id": "W1003", "reason": "changed mind"})]},
    ("tool_error", 1): {"text": "Sorry, I could not cancel W1003: it has already shipped."},
    ("refusal", 0): {"refusal": REFUSAL},
}


def _conversation_of(messages: list[dict[str, Any]]) -> str:
    first_user = next(str(m.get("content")) for m in messages if m.get("role") == "user")
    return next(k for k, turns in CONVERSATIONS.items() if turns[0] in first_user)


def responder(request: dict[str, Any]) -> dict[str, Any]:
    """The scripted model: the answer depends on the conversation and how far it has got."""
    messages = request["messages"]
    key = _conversation_of(messages)
    step = sum(1 for m in messages if m.get("role") == "assistant")
    script = _SCRIPT[(key, step)]
    message: dict[str, Any] = {"role": "assistant", "content": script.get("text")}
    if "refusal" in script:
        message["refusal"] = script["refusal"]
    calls = [{"id": f"call_{key}_{step}_{i}", "type": "function",
              "function": {"name": name, "arguments": json.dumps(args)}}
             for i, (name, args) in enumerate(script.get("calls", ()))]
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-{key}-{step}", "object": "chat.completion", "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}


def _instrument(name: str, provider: Any) -> None:
    import agents

    if name == "traceai-agents":
        from traceai_openai_agents import OpenAIAgentsInstrumentor as TraceAIAgents

        TraceAIAgents().instrument(tracer_provider=provider)  # exclusive: replaces the SDK's exporter
    elif name == "openinference-agents":
        from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor

        OpenAIAgentsInstrumentor().instrument(tracer_provider=provider)  # exclusive, as above
    else:
        agents.set_trace_processors([])
        agents.set_tracing_disabled(True)  # only the openai client is instrumented
        if name == "openinference-openai":
            from openinference.instrumentation.openai import OpenAIInstrumentor

            OpenAIInstrumentor().instrument(tracer_provider=provider)
        elif name == "otel-openai-v2":
            from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OtelV2

            OtelV2().instrument(tracer_provider=provider)
        elif name == "openllmetry":
            from opentelemetry.instrumentation.openai import OpenAIInstrumentor as OpenLLMetry

            OpenLLMetry().instrument(tracer_provider=provider)
        else:
            raise SystemExit(f"unknown instrumentor {name!r}; one of {', '.join(INSTRUMENTORS)}")


async def _run_conversations(base_url: str, tracer: Any) -> None:
    import agents
    from openai import AsyncOpenAI

    @agents.function_tool
    def get_order(order_id: str) -> str:
        """Look up an order's status."""
        return json.dumps({"order_id": order_id, "status": "shipped", "shipped_on": "March 3"})

    @agents.function_tool
    def get_shipping_rate(order_id: str, carrier: str) -> str:
        """The shipping price of an order with a carrier."""
        return json.dumps({"order_id": order_id, "carrier": carrier,
                           "price": {"ups": 7.5, "fedex": 9.1}.get(carrier, 12.0)})

    @agents.function_tool
    def cancel_order(order_id: str, reason: str) -> str:
        """Cancel an order that has not shipped yet."""
        raise RuntimeError(f"order {order_id} has already shipped")

    client = AsyncOpenAI(base_url=base_url, api_key="sk-fake-not-a-key", max_retries=0)
    agent = agents.Agent(
        name="support",
        instructions=AGENT_INSTRUCTIONS,
        model=agents.OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client),
        tools=[get_order, get_shipping_rate, cancel_order],
    )
    for key, turns in CONVERSATIONS.items():
        # One trace per conversation: an OTel span (what the client instrumentors' spans hang
        # under) and one Agents SDK trace (what the agents instrumentors turn into OTel spans).
        with tracer.start_as_current_span(f"conversation {key}"), agents.trace(f"conversation {key}"):
            history: list[Any] = []
            for text in turns:
                try:
                    result = await agents.Runner.run(agent, history + [{"role": "user", "content": text}])
                except agents.exceptions.ModelRefusalError:
                    break  # the SDK raises on a refusal; the trace has recorded it
                history = result.to_input_list()


def _hex_ids(obj: Any) -> Any:
    # protobuf's JSON mapping writes bytes in base64; OTLP/JSON wants the ids in hex.
    if isinstance(obj, dict):
        return {k: (base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") and v else _hex_ids(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hex_ids(v) for v in obj]
    return obj


def _ground_truth(server: Any) -> dict[str, Any]:
    last: dict[str, dict[str, Any]] = {}
    for request in server.requests:
        last[_conversation_of(request["messages"])] = request  # requests arrive in order
    out = {}
    for key, request in last.items():
        answer = responder(request)["choices"][0]["message"]
        out[key] = {"messages": request["messages"] + [answer], "tools": request.get("tools") or []}
    return out


def main(argv: list[str]) -> int:
    name, outdir = argv[0], Path(argv[1])
    os.environ["OPENAI_API_KEY"] = "sk-fake-not-a-key"
    # Message content is captured only on request: the official instrumentation puts it on the
    # span only in its experimental mode (else it emits log events); OpenLLMetry by default.
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "span_only"
    os.environ["TRACELOOP_TRACE_CONTENT"] = "true"
    from google.protobuf.json_format import MessageToJson
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pytest_bclone.testing import OpenAIServer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _instrument(name, provider)
    tracer = provider.get_tracer("tests.otel_agents")
    with OpenAIServer(responder) as server:
        asyncio.run(_run_conversations(server.base_url, tracer))
        truth = _ground_truth(server)
    provider.force_flush()
    spans = exporter.get_finished_spans()
    outdir.mkdir(parents=True, exist_ok=True)
    request = json.loads(MessageToJson(encode_spans(spans)))
    (outdir / "otlp_b64.json").write_text(json.dumps(request, indent=1))
    (outdir / "otlp_hex.json").write_text(json.dumps(_hex_ids(request), indent=1))
    (outdir / "spans.jsonl").write_text("".join(s.to_json(indent=None) + "\n" for s in spans))
    (outdir / "console.txt").write_text("".join(s.to_json() + os.linesep for s in spans))
    (outdir / "conversations.json").write_text(json.dumps(truth, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main(sys.argv[1:]))
