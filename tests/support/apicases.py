"""Requests the engine cannot serve for a reason in the request itself, with
the parameter the API must name: the unit tier sends them to a fake engine
over TCP, the stack tier to llama.cpp through the openai SDK."""

REQUEST_REFUSALS = [
    ({"n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]},
     "messages[0].content[1].type"),
]
