"""The google-genai Python SDK against a Keyplane endpoint, as a user would call it.

Run by dataplane/tests/clients_gemini.rs with clients/.venv/bin/python (clients/install):

    genai_client.py BASE_URL API_KEY MODEL API_VERSION chat
    genai_client.py BASE_URL API_KEY MODEL API_VERSION embed

The client is `genai.Client(api_key=..., http_options=HttpOptions(base_url=BASE_URL,
api_version=API_VERSION))`; API_VERSION "default" leaves the SDK's own (v1).

chat: for each of `generate_content` and `generate_content_stream` it offers one function
(`get_weather`), expects the model to call it, runs the "tool" (a fixed answer naming the
arguments it got) and sends the conversation back (the model's content as received, so its
thought signature goes back too, and a function response), expecting text; then it counts the
tokens of a prompt with `count_tokens`. It prints one JSON object:

    {"non_stream": TURNS, "stream": TURNS, "count_tokens": int}

where TURNS is {"call": {"name", "args", "id", "thought_signature"}, "tool_output": str,
"text": str, "finish_reasons": [..], "usage": [usage of turn 1, usage of turn 2]} and a
stream's TURNS also has "chunks": [number of chunks of turn 1, of turn 2].

embed: `embed_content` of two texts; prints {"embeddings": [[floats], [floats]]}.

Any error exits non-zero with the SDK's message on stderr.
"""

import base64
import json
import sys

from google import genai
from google.genai import errors, types

WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Current weather for a city",
    parameters_json_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)

QUESTION = types.Content(role="user", parts=[types.Part(text="What is the weather in Zurich?")])


def run_tool(args: dict) -> dict:
    """The tool's answer: it names what it was called with, so the test can find it upstream."""
    return {"city": args.get("city"), "temperature_c": 21, "marker": "tool-result-7"}


def usage(u) -> dict:
    if u is None:
        return {}
    return {
        "prompt": u.prompt_token_count,
        "candidates": u.candidates_token_count,
        "thoughts": u.thoughts_token_count,
        "cached": u.cached_content_token_count,
        "total": u.total_token_count,
    }


def streamed(client, model, contents, config):
    """generate_content_stream: the model's parts joined, the last finish reason and usage."""
    parts, finish, last_usage, chunks = [], None, None, 0
    for chunk in client.models.generate_content_stream(model=model, contents=contents, config=config):
        chunks += 1
        if chunk.candidates:
            cand = chunk.candidates[0]
            if cand.content and cand.content.parts:
                parts.extend(cand.content.parts)
            if cand.finish_reason:
                finish = cand.finish_reason
        if chunk.usage_metadata:
            last_usage = chunk.usage_metadata
    return types.Content(role="model", parts=parts), finish, last_usage, chunks


def turns(client, model: str, stream: bool) -> dict:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        system_instruction="Answer with the tool.",
    )
    contents = [QUESTION]
    out = {"finish_reasons": [], "usage": []}
    if stream:
        first, finish, u, n1 = streamed(client, model, contents, config)
    else:
        r = client.models.generate_content(model=model, contents=contents, config=config)
        first, finish, u = r.candidates[0].content, r.candidates[0].finish_reason, r.usage_metadata
    out["finish_reasons"].append(str(finish.value if finish else None))
    out["usage"].append(usage(u))
    calls = [p for p in first.parts if p.function_call]
    if len(calls) != 1:
        raise SystemExit(f"expected one function call, got {first!r}")
    call = calls[0]
    result = run_tool(call.function_call.args or {})
    tool_output = json.dumps(result)
    contents = [
        QUESTION,
        first,
        types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
            id=call.function_call.id, name=call.function_call.name, response=result))]),
    ]
    if stream:
        second, finish, u, n2 = streamed(client, model, contents, config)
        out["chunks"] = [n1, n2]
    else:
        r = client.models.generate_content(model=model, contents=contents, config=config)
        second, finish, u = r.candidates[0].content, r.candidates[0].finish_reason, r.usage_metadata
    out["finish_reasons"].append(str(finish.value if finish else None))
    out["usage"].append(usage(u))
    signature = call.thought_signature
    out["call"] = {
        "name": call.function_call.name,
        "args": call.function_call.args,
        "id": call.function_call.id,
        "thought_signature": base64.b64encode(signature).decode() if signature else None,
    }
    out["tool_output"] = tool_output
    out["text"] = "".join(p.text or "" for p in second.parts if not p.thought)
    return out


def main() -> None:
    base_url, api_key, model, api_version, mode = sys.argv[1:6]
    options = types.HttpOptions(base_url=base_url, timeout=20_000)
    if api_version != "default":
        options.api_version = api_version
    client = genai.Client(api_key=api_key, http_options=options)
    if mode == "chat":
        result = {
            "non_stream": turns(client, model, stream=False),
            "stream": turns(client, model, stream=True),
            "count_tokens": client.models.count_tokens(
                model=model, contents="How many tokens is this?").total_tokens,
        }
    elif mode == "embed":
        r = client.models.embed_content(model=model, contents=["hello", "world"])
        result = {"embeddings": [e.values for e in r.embeddings]}
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except errors.APIError as e:
        raise SystemExit(f"google-genai error: {e!r}")
