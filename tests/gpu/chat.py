"""A streamed chat through the API service with the openai client, timed."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

PROMPT = ("The appliance runs a large mixture of experts model on one graphics card. "
          "Please explain why the sky is blue, and how to bake bread with flour, water, salt and yeast.")


@dataclass(frozen=True)
class StreamedChat:
    text: str
    chunks: int
    first_token_s: float
    total_s: float
    finish_reason: str | None
    completion_tokens: int | None   # the engine's usage count, where it sends one
    started_at: float = 0.0         # time.monotonic() when the request went out

    @property
    def tokens(self) -> int:
        return self.completion_tokens or self.chunks

    @property
    def decode_tokens_per_s(self) -> float:
        streaming = self.total_s - self.first_token_s
        return (self.tokens - 1) / streaming if self.tokens > 1 and streaming > 0 else 0.0


def stream_chat(client, model: str, max_tokens: int = 32, prompt: str = PROMPT,
                temperature: float | None = None) -> StreamedChat:
    started = time.monotonic()
    first, parts, chunks, finish, usage = None, [], 0, None, None
    sampling = {} if temperature is None else {"temperature": temperature}
    stream = client.chat.completions.create(model=model, stream=True, max_tokens=max_tokens,
                                            stream_options={"include_usage": True}, **sampling,
                                            messages=[{"role": "user", "content": prompt}])
    for event in stream:
        usage = getattr(event, "usage", None) or usage
        if not event.choices:
            continue
        choice = event.choices[0]
        delta = choice.delta
        piece = (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")
        if piece:
            chunks += 1
            parts.append(piece)
            if first is None:
                first = time.monotonic() - started
        finish = choice.finish_reason or finish
    total = time.monotonic() - started
    return StreamedChat("".join(parts), chunks, first if first is not None else total, total, finish,
                        usage.completion_tokens if usage else None, started)


def prompt_tokens(config_dir: Path, prompt: str = PROMPT) -> int:
    """The prompt's length in the model's tokens, with the chat template's three."""
    from tokenizers import Tokenizer
    return len(Tokenizer.from_file(str(config_dir / "tokenizer.json")).encode(prompt).ids) + 3


def engine_performance(*logs: Path) -> dict[str, float]:
    """KTransformers logs 'Performance(T/s): prefill P, decode D' after each chat: the last one."""
    found = {}
    for log in logs:
        for path in ([log] if log.is_file() else sorted(log.rglob("*.log")) if log.is_dir() else []):
            for match in re.finditer(r"Performance\(T/s\): prefill ([\d.]*\d), decode ([\d.]*\d)",
                                     path.read_text(errors="replace")):
                found = {"engine_prefill_tok_s": float(match.group(1)), "engine_decode_tok_s": float(match.group(2))}
    return found
