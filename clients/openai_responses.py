"""The OpenAI Python SDK's Responses API against a Keyplane endpoint, as a user would call it.

Run by dataplane/tests/clients.rs with clients/.venv/bin/python (clients/install):

    openai_responses.py BASE_URL API_KEY MODEL

For each of non-stream and stream (`stream=True`), it sends a request offering one function
tool, expects the model to call it, runs the "tool" (a fixed answer naming the arguments it got),
and sends the conversation back with the call and a `function_call_output`, expecting text. It
prints one JSON object on stdout for the test to assert on:

    {"non_stream": TURNS, "stream": TURNS}

where TURNS is {"call": {"name", "arguments", "call_id", "status"}, "tool_output": str,
"text": str, "usage": [usage of turn 1, usage of turn 2], "response_ids": [...],
"statuses": [...]}, and a stream's TURNS also has "events": [[event types of turn 1],
[... of turn 2]] and "sequence_numbers_ok": whether every event's sequence_number counted up
from 0. Any error (an HTTP error, a stream that ends without response.completed, no function
call) exits non-zero with the SDK's message on stderr.
"""

import json
import sys

import openai

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}

QUESTION = [
    {
        "role": "developer",
        "content": "Answer with the tool.",
    },
    {
        "role": "user",
        "content": [{"type": "input_text", "text": "What is the weather in Zurich?"}],
    },
]


def run_tool(arguments: str) -> str:
    """The tool's answer: it names what it was called with, so the test can find it upstream."""
    args = json.loads(arguments)
    return json.dumps({"city": args.get("city"), "temperature_c": 21, "marker": "tool-result-7"})


def usage(response) -> dict:
    u = response.usage
    return {
        "input_tokens": u.input_tokens,
        "cached_tokens": u.input_tokens_details.cached_tokens,
        "output_tokens": u.output_tokens,
        "reasoning_tokens": u.output_tokens_details.reasoning_tokens,
        "total_tokens": u.total_tokens,
    }


def function_call(response):
    calls = [item for item in response.output if item.type == "function_call"]
    if len(calls) != 1:
        raise SystemExit(f"expected one function_call, got {response.output!r}")
    return calls[0]


def create_streamed(client, **params):
    """responses.create(stream=True): every event's type, and the response of response.completed."""
    events = []
    completed = None
    with client.responses.create(stream=True, **params) as stream:
        for event in stream:
            events.append((event.type, event.sequence_number))
            if event.type == "response.completed":
                completed = event.response
            elif event.type in ("response.failed", "error", "response.incomplete"):
                raise SystemExit(f"stream ended with {event.type}: {event!r}")
    if completed is None:
        raise SystemExit(f"the stream ended without response.completed: {events!r}")
    return completed, events


def turns(client, model: str, stream: bool) -> dict:
    params = {"model": model, "input": QUESTION, "tools": [TOOL], "store": False}
    events = []
    if stream:
        first, first_events = create_streamed(client, **params)
        events.append(first_events)
    else:
        first = client.responses.create(**params)
    call = function_call(first)
    tool_output = run_tool(call.arguments)
    params["input"] = QUESTION + [
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": tool_output},
    ]
    if stream:
        second, second_events = create_streamed(client, **params)
        events.append(second_events)
    else:
        second = client.responses.create(**params)
    out = {
        "call": {
            "name": call.name,
            "arguments": call.arguments,
            "call_id": call.call_id,
            "status": call.status,
        },
        "tool_output": tool_output,
        "text": second.output_text,
        "usage": [usage(first), usage(second)],
        "response_ids": [first.id, second.id],
        "statuses": [first.status, second.status],
    }
    if stream:
        out["events"] = [[kind for kind, _ in turn] for turn in events]
        out["sequence_numbers_ok"] = all(
            [seq for _, seq in turn] == list(range(len(turn))) for turn in events
        )
    return out


def main() -> None:
    base_url, api_key, model = sys.argv[1:4]
    # No retries: a failure must reach the test, not be hidden by a second try.
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20.0)
    result = {
        "non_stream": turns(client, model, stream=False),
        "stream": turns(client, model, stream=True),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except openai.APIError as e:
        raise SystemExit(f"OpenAI SDK error: {e!r}")
