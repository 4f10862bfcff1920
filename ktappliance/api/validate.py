"""Request bodies: parsed strictly and checked for the shape the OpenAI API
checks, so that nonsense gets a 400 from us instead of generated text or an
engine 500 passed through."""

from __future__ import annotations

import json
import math

from . import errors

MAX_DEPTH = 32
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# name: (low, high) inclusive, as the OpenAI API documents them.
NUMBER_RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "repetition_penalty": (0.0, 10.0),
}
COUNT_RANGES = {"max_tokens": (1, 1 << 20), "max_completion_tokens": (1, 1 << 20), "n": (1, 16),
                "top_k": (0, 1 << 16), "seed": (-(1 << 63), (1 << 63) - 1)}


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def parse_body(raw: bytes) -> dict:
    """JSON that we can also send on: finite numbers, valid UTF-8 text, a sane depth."""
    # The decoder recurses once per level; refuse a deeply nested body before
    # it does (100,000 levels fit in well under a megabyte).
    opened = max(raw.count(b"["), raw.count(b"{"))
    if opened > MAX_DEPTH and _bracket_depth(raw) > MAX_DEPTH:
        raise errors.bad_request(f"malformed JSON: nested deeper than {MAX_DEPTH} levels", "invalid_json")
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite, parse_int=_bounded_int)
    except (ValueError, RecursionError) as exc:
        raise errors.bad_request(f"malformed JSON: {str(exc)[:200]}", "invalid_json") from None
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be a JSON object", "invalid_json")
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise errors.bad_request("malformed JSON: text holds a lone surrogate (not valid Unicode)",
                                 "invalid_json") from None
    return body


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 40:
        raise ValueError(f"number {text[:20]}... is out of range")
    return int(text)


def _bracket_depth(raw: bytes) -> int:
    """Bracket nesting outside strings, in one pass over the bytes."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _bad(message: str, param: str | None = None) -> errors.ApiError:
    err = errors.bad_request(message, "invalid_request")
    err.param = param
    return err


def _unsupported(message: str, param: str) -> errors.ApiError:
    err = errors.bad_request(message, "unsupported_value")
    err.param = param
    return err


def check_shape(body: dict, chat: bool, *, max_n: int = 1, images: bool = False) -> None:
    """The request's shape, and what this engine can do: `n` above what it
    serves, or image parts for a text-only model, are the request's fault
    (400 naming the parameter), not the engine's (a 500 the SDK would retry)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' must be a non-empty array of messages", "messages")
        for index, message in enumerate(messages):
            where = f"messages[{index}]"
            if not isinstance(message, dict):
                raise _bad(f"{where} must be an object with 'role' and 'content'", where)
            role = message.get("role")
            if role not in ROLES:
                raise _bad(f"{where}.role must be one of {', '.join(sorted(ROLES))}", f"{where}.role")
            content = message.get("content")
            if content is None and role == "assistant" and message.get("tool_calls"):
                continue
            if isinstance(content, list):
                if not all(isinstance(part, dict) and isinstance(part.get("type"), str) for part in content):
                    raise _bad(f"{where}.content parts must be objects with a 'type'", f"{where}.content")
                for number, part in enumerate(content):
                    if part["type"] != "text" and not images:
                        raise _unsupported(f"{where}.content[{number}] is of type {part['type']!r}; this model "
                                           "reads text only", f"{where}.content[{number}].type")
            elif not isinstance(content, str):
                raise _bad(f"{where}.content must be a string or an array of content parts", f"{where}.content")
    else:
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                            and all(isinstance(p, (str, int)) for p in prompt))):
            raise _bad("'prompt' must be a string or an array of strings", "prompt")
    for name, (low, high) in NUMBER_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise _bad(f"'{name}' must be a number from {low:g} to {high:g}", name)
    for name, (low, high) in COUNT_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _bad(f"'{name}' must be a whole number from {low} to {high}", name)
    if isinstance(body.get("n"), int) and body["n"] > max_n:
        raise _unsupported(f"'n' is {body['n']}, and this engine returns at most {max_n} choice"
                           f"{'s' if max_n > 1 else ''} per request; send the request again for more", "n")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise _bad("'stream' must be true or false", "stream")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _bad("'stop' must be a string or an array of strings", "stop")
