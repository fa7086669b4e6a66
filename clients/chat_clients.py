"""The OpenAI Python SDK's chat completions and the Anthropic Python SDK's messages against a
Keyplane endpoint, each with a function tool, as a user would call them.

Run by dataplane/tests/clients_gemini.rs with clients/.venv/bin/python (clients/install):

    chat_clients.py openai BASE_URL API_KEY MODEL       (BASE_URL ends in /v1)
    chat_clients.py anthropic BASE_URL API_KEY MODEL    (BASE_URL is the server's root)

For each of non-stream and stream it offers one tool (`get_weather`), expects the model to
call it, runs the "tool" (a fixed answer naming the arguments it got) and sends the conversation
back with the call and its result, expecting text. It prints one JSON object:

    {"non_stream": TURNS, "stream": TURNS}

where TURNS is {"call": {"id", "name", "arguments"}, "tool_output": str, "text": str,
"stop_reasons": [turn 1, turn 2], "usage": [{"input", "output"} of turn 1, of turn 2]}.
"arguments" is the call's arguments as a JSON object. Any error exits non-zero.
"""

import json
import sys

QUESTION = "What is the weather in Zurich?"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def run_tool(args: dict) -> str:
    """The tool's answer: it names what it was called with, so the test can find it upstream."""
    return json.dumps({"city": args.get("city"), "temperature_c": 21, "marker": "tool-result-7"})


def openai_turns(client, model: str, stream: bool) -> dict:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city", "parameters": SCHEMA}}]
    messages = [
        {"role": "system", "content": "Answer with the tool."},
        {"role": "user", "content": QUESTION},
    ]
    out = {"stop_reasons": [], "usage": []}

    def ask():
        if not stream:
            r = client.chat.completions.create(model=model, messages=messages, tools=tools)
            c = r.choices[0]
            calls = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
                     for t in (c.message.tool_calls or [])]
            return c.message.content or "", calls, c.finish_reason, r.usage
        text, calls, finish, usage = "", {}, None, None
        with client.chat.completions.create(model=model, messages=messages, tools=tools,
                                            stream=True,
                                            stream_options={"include_usage": True}) as s:
            for chunk in s:
                if chunk.usage:
                    usage = chunk.usage
                for c in chunk.choices:
                    if c.delta.content:
                        text += c.delta.content
                    for t in c.delta.tool_calls or []:
                        call = calls.setdefault(t.index, {"id": None, "name": "", "arguments": ""})
                        if t.id:
                            call["id"] = t.id
                        if t.function and t.function.name:
                            call["name"] += t.function.name
                        if t.function and t.function.arguments:
                            call["arguments"] += t.function.arguments
                    if c.finish_reason:
                        finish = c.finish_reason
        return text, [calls[i] for i in sorted(calls)], finish, usage

    _, calls, finish, usage = ask()
    out["stop_reasons"].append(finish)
    out["usage"].append({"input": usage.prompt_tokens, "output": usage.completion_tokens} if usage else None)
    if len(calls) != 1:
        raise SystemExit(f"expected one tool call, got {calls!r}")
    call = calls[0]
    args = json.loads(call["arguments"])
    tool_output = run_tool(args)
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call["id"], "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": tool_output},
    ]
    text, _, finish, usage = ask()
    out["stop_reasons"].append(finish)
    out["usage"].append({"input": usage.prompt_tokens, "output": usage.completion_tokens} if usage else None)
    out["call"] = {"id": call["id"], "name": call["name"], "arguments": args}
    out["tool_output"] = tool_output
    out["text"] = text
    return out


def anthropic_turns(client, model: str, stream: bool) -> dict:
    tools = [{"name": "get_weather", "description": "Current weather for a city",
              "input_schema": SCHEMA}]
    messages = [{"role": "user", "content": QUESTION}]
    out = {"stop_reasons": [], "usage": []}

    def ask():
        params = dict(model=model, max_tokens=1024, system="Answer with the tool.",
                      messages=messages, tools=tools)
        if stream:
            with client.messages.stream(**params) as s:
                for _ in s:
                    pass
                return s.get_final_message()
        return client.messages.create(**params)

    first = ask()
    out["stop_reasons"].append(first.stop_reason)
    out["usage"].append({"input": first.usage.input_tokens, "output": first.usage.output_tokens})
    calls = [b for b in first.content if b.type == "tool_use"]
    if len(calls) != 1:
        raise SystemExit(f"expected one tool_use block, got {first.content!r}")
    call = calls[0]
    tool_output = run_tool(call.input)
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": tool_output}]},
    ]
    second = ask()
    out["stop_reasons"].append(second.stop_reason)
    out["usage"].append({"input": second.usage.input_tokens, "output": second.usage.output_tokens})
    out["call"] = {"id": call.id, "name": call.name, "arguments": call.input}
    out["tool_output"] = tool_output
    out["text"] = "".join(b.text for b in second.content if b.type == "text")
    return out


def main() -> None:
    sdk, base_url, api_key, model = sys.argv[1:5]
    if sdk == "openai":
        import openai
        # No retries: a failure must reach the test, not be hidden by a second try.
        client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20.0)
        turns = openai_turns
    elif sdk == "anthropic":
        import anthropic
        client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=20.0)
        turns = anthropic_turns
    else:
        raise SystemExit(f"unknown SDK {sdk!r}")
    result = {
        "non_stream": turns(client, model, stream=False),
        "stream": turns(client, model, stream=True),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the SDKs' errors have no common base class
        raise SystemExit(f"{type(e).__name__}: {e!r}")
