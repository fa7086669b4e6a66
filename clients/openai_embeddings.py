"""The OpenAI Python SDK's `embeddings.create` against a Keyplane endpoint.

Run by dataplane/tests/clients_gemini.rs with clients/.venv/bin/python (clients/install):

    openai_embeddings.py BASE_URL API_KEY MODEL

It embeds two texts three ways: `encoding_format="float"`; the SDK's default (it asks for
base64 and decodes the vectors itself); and `encoding_format="base64"` (the raw strings). It
prints one JSON object:

    {"float": [[floats], [floats]], "default": [[floats], [floats]], "base64": [str, str],
     "base64_decoded": [[floats], [floats]], "usage": {"prompt_tokens", "total_tokens"},
     "model": str}

where "base64_decoded" reads each base64 string as little-endian f32s, as OpenAI encodes them.

Any error exits non-zero with the SDK's message on stderr.
"""

import base64
import json
import struct
import sys

import openai


def decode(text: str) -> list:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def main() -> None:
    base_url, api_key, model = sys.argv[1:4]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=20.0)
    texts = ["hello", "world"]
    as_float = client.embeddings.create(model=model, input=texts, encoding_format="float")
    default = client.embeddings.create(model=model, input=texts)
    as_base64 = client.embeddings.create(model=model, input=texts, encoding_format="base64")
    print(json.dumps({
        "float": [d.embedding for d in as_float.data],
        "default": [d.embedding for d in default.data],
        "base64": [d.embedding for d in as_base64.data],
        "base64_decoded": [decode(d.embedding) for d in as_base64.data],
        "usage": {"prompt_tokens": as_float.usage.prompt_tokens,
                  "total_tokens": as_float.usage.total_tokens},
        "model": as_float.model,
    }))


if __name__ == "__main__":
    try:
        main()
    except openai.APIError as e:
        raise SystemExit(f"OpenAI SDK error: {e!r}")
