"""Calls the gateway with the official OpenAI, Anthropic and Google GenAI Python SDKs.

Usage: clients.py BASE_URL CLIENT_KEY CHAT_GROUP RESPONSES_GROUP ANTHROPIC_GROUP GEMINI_GROUP:
each SDK family calls its own group. Prints one JSON line per call: {"call", "text", "chunks"},
where chunks counts the pieces of text a stream delivered.
"""

import json
import sys

import anthropic
import openai
from google import genai
from google.genai import types

base_url, key = sys.argv[1], sys.argv[2]
chat_group, responses_group, anthropic_group, gemini_group = sys.argv[3:7]
PROMPT = "Say hello"


def report(call, text, chunks=1):
    print(json.dumps({"call": call, "text": text, "chunks": chunks}), flush=True)


openai_client = openai.OpenAI(api_key=key, base_url=base_url + "/v1", max_retries=0)
completion = openai_client.chat.completions.create(model=chat_group, messages=[{"role": "user", "content": PROMPT}])
report("openai.chat", completion.choices[0].message.content)
pieces = []
for chunk in openai_client.chat.completions.create(
    model=chat_group, messages=[{"role": "user", "content": PROMPT}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
report("openai.chat.stream", "".join(pieces), len(pieces))

response = openai_client.responses.create(model=responses_group, input=PROMPT)
report("openai.responses", response.output_text)
pieces = []
for event in openai_client.responses.create(model=responses_group, input=PROMPT, stream=True):
    if event.type == "response.output_text.delta":
        pieces.append(event.delta)
report("openai.responses.stream", "".join(pieces), len(pieces))

anthropic_client = anthropic.Anthropic(api_key=key, base_url=base_url, max_retries=0)
message = anthropic_client.messages.create(
    model=anthropic_group, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
)
report("anthropic.messages", "".join(block.text for block in message.content if block.type == "text"))
pieces = []
with anthropic_client.messages.stream(
    model=anthropic_group, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
) as stream:
    for text in stream.text_stream:
        pieces.append(text)
report("anthropic.messages.stream", "".join(pieces), len(pieces))

google_client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base_url))
result = google_client.models.generate_content(model=gemini_group, contents=PROMPT)
report("google.generate_content", result.text)
pieces = []
for chunk in google_client.models.generate_content_stream(model=gemini_group, contents=PROMPT):
    if chunk.text:
        pieces.append(chunk.text)
report("google.generate_content_stream", "".join(pieces), len(pieces))

models = [model.id for model in openai_client.models.list()]
report("openai.models", ",".join(sorted(models)))
