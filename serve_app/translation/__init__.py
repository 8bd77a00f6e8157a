"""Other APIs on the sites' chat completions: OpenAI's Responses and Anthropic's Messages.

The sites serve chat completions (Ray Serve LLM serves neither of the two
others). The gateway translates: `responses.py` and `messages.py` are pure
functions from a request to a chat request and from the chat answer, whole
or chunk by chunk, to the API's own answer or event stream, in the
vendors' own types (events read and written by serve_app/sse.py);
`service.py` runs one request through the gateway's request path (placed,
limited, metered, in the ledger under the caller's route) and keeps the
Responses API's stored conversations.
"""
