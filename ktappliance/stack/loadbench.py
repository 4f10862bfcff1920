"""`build.py bench`: load a running appliance the way its users do.

U users each send a streamed chat every S seconds (from the start of one to
the start of the next, whether or not the last has finished; S=0: when it
has), N requests in all, through the API like any OpenAI client. Reported:
each user's decode tokens/s (from the first streamed token to the last) and
end-to-end tokens/s (the answer's tokens over the whole request, waiting
included: what an engine that sends its answer in few chunks still shows),
time to first token (p50, p95), the total throughput, errors and 429s, as
text or JSON. Standard library only, so it
runs from any Python that has the repository.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ktappliance.errors import ApplianceError
from ktappliance.paths import COMPOSE_DIR
from ktappliance.stack.env import read_env

PROMPTS = ("Explain why the sky is blue.", "How do I bake bread with flour, water, salt and yeast?",
           "Write a haiku about a mountain lake.", "What is a mixture of experts model?",
           "Give three tips for learning a new language.", "Why do cats purr?",
           "Summarise the rules of chess in a paragraph.", "How does a refrigerator keep food cold?")


@dataclass
class Outcome:
    user: int
    status: int                      # HTTP status; 0 when no answer came
    error: str = ""
    first_token_s: float | None = None
    tokens: int = 0
    decode_s: float = 0.0
    total_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float | None:
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else None

    @property
    def end_to_end_tokens_per_s(self) -> float | None:
        return self.tokens / self.total_s if self.tokens and self.total_s > 0 else None


@dataclass
class Report:
    users: int
    interval_s: float
    requests: int
    max_tokens: int
    wall_s: float
    completed: int
    errors: int
    rate_limited: int
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    total_tokens_per_s: float
    per_user_decode_tokens_per_s: dict[int, float | None] = field(default_factory=dict)
    per_user_end_to_end_tokens_per_s: dict[int, float | None] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def to_text(self) -> str:
        def seconds(value):
            return "-" if value is None else f"{value:.2f} s"
        lines = [f"{self.requests} requests from {self.users} users, one every {self.interval_s:g} s each, "
                 f"max_tokens {self.max_tokens}, in {self.wall_s:.1f} s",
                 f"completed {self.completed}, errors {self.errors} (of which 429: {self.rate_limited})",
                 f"time to first token: p50 {seconds(self.ttft_p50_s)}, p95 {seconds(self.ttft_p95_s)}",
                 f"total decode throughput: {self.total_tokens_per_s:.1f} tokens/s"]
        def rate(value):
            return "-" if value is None else f"{value:.1f}"
        lines += [f"  user {user}: decode {rate(decode)} tokens/s, end to end "
                  f"{rate(self.per_user_end_to_end_tokens_per_s.get(user))} tokens/s"
                  for user, decode in self.per_user_decode_tokens_per_s.items()]
        if any(v is None for v in self.per_user_decode_tokens_per_s.values()) and self.completed:
            lines.append("  (decode '-': that user's answers came in one piece, so only the end-to-end rate tells)")
        lines += [f"  error: {kind} x{count}" for kind, count in self.error_kinds.items()]
        return "\n".join(lines)


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summarise(outcomes: list[Outcome], *, users: int, interval: float, max_tokens: int, wall: float) -> Report:
    done = [o for o in outcomes if o.status == 200 and not o.error]
    failed = [o for o in outcomes if o not in done]
    kinds: dict[str, int] = {}
    for outcome in failed:
        kind = f"HTTP {outcome.status}" if outcome.status else outcome.error.split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    def per_user(rate_of) -> dict[int, float | None]:
        found: dict[int, float | None] = {}
        for user in range(users):
            rates = [r for r in (rate_of(o) for o in done if o.user == user) if r is not None]
            found[user] = sum(rates) / len(rates) if rates else None
        return found
    ttfts = [o.first_token_s for o in done if o.first_token_s is not None]
    return Report(users=users, interval_s=interval, requests=len(outcomes), max_tokens=max_tokens, wall_s=wall,
                  completed=len(done), errors=len(failed), rate_limited=sum(o.status == 429 for o in failed),
                  ttft_p50_s=percentile(ttfts, 0.5), ttft_p95_s=percentile(ttfts, 0.95),
                  total_tokens_per_s=sum(o.tokens for o in done) / wall if wall > 0 else 0.0,
                  per_user_decode_tokens_per_s=per_user(lambda o: o.decode_tokens_per_s),
                  per_user_end_to_end_tokens_per_s=per_user(lambda o: o.end_to_end_tokens_per_s),
                  error_kinds=kinds)


class Target:
    """The API's address and key; one streamed chat at a time per call."""

    def __init__(self, url: str, key: str, model: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApplianceError(f"--url {url}: expected http://HOST:PORT")
        self.parts, self.key, self.model, self.timeout = parts, key, model, timeout

    def connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
        return kind(self.parts.hostname, self.parts.port, timeout=self.timeout)

    def chat(self, user: int, prompt: str, max_tokens: int) -> Outcome:
        body = json.dumps({"model": self.model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                           "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": prompt}]})
        started = time.monotonic()
        outcome = Outcome(user=user, status=0)
        connection = self.connection()
        try:
            path = self.parts.path.rstrip("/") + "/v1/chat/completions"
            connection.request("POST", path, body=body, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
            response = connection.getresponse()
            outcome.status = response.status
            if response.status != 200:
                outcome.error = f"HTTP {response.status}"
                response.read()
                return outcome
            first = last = None
            chunks, usage = 0, None
            for raw in response:
                line = raw.decode(errors="replace").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    outcome.error = f"stream error: {event['error'].get('message', '')}"[:200]
                    break
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("reasoning_content"):
                        now = time.monotonic()
                        first = first if first is not None else now
                        last = now
                        chunks += 1
            if first is not None:
                outcome.first_token_s = first - started
                outcome.decode_s = last - first
            outcome.tokens = (usage or {}).get("completion_tokens") or chunks
        except (OSError, http.client.HTTPException, ValueError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            connection.close()
            outcome.total_s = time.monotonic() - started
        return outcome


class Progress:
    """A bar on stderr when it is a terminal, else a line every tenth."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.failed, self.stream = total, 0, 0, stream
        self.lock = threading.Lock()
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def tick(self, ok: bool) -> None:
        with self.lock:
            self.done += 1
            self.failed += not ok
            filled = self.done * 30 // self.total
            text = f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} done, {self.failed} failed"
            if self.tty:
                print("\r" + text, end="" if self.done < self.total else "\n", file=self.stream, flush=True)
            elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
                print(text, file=self.stream, flush=True)


def run(target: Target, *, users: int, interval: float, requests: int, max_tokens: int,
        progress: Progress | None = None) -> Report:
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def one(user: int, prompt: str) -> None:
        outcome = target.chat(user, prompt, max_tokens)
        with lock:
            outcomes.append(outcome)
        if progress:
            progress.tick(outcome.status == 200 and not outcome.error)

    def user_loop(user: int, count: int) -> None:
        for index in range(count):
            prompt = f"{PROMPTS[(user + index) % len(PROMPTS)]} (user {user}, question {index + 1})"
            if interval <= 0:
                one(user, prompt)
                continue
            thread = threading.Thread(target=one, args=(user, prompt), daemon=True)
            thread.start()
            with lock:
                threads.append(thread)
            if index < count - 1:
                time.sleep(interval)

    started = time.monotonic()
    loops = [threading.Thread(target=user_loop, args=(u, requests // users + (u < requests % users)), daemon=True)
             for u in range(users)]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()
    for thread in list(threads):
        thread.join()
    return summarise(outcomes, users=users, interval=interval, max_tokens=max_tokens,
                     wall=time.monotonic() - started)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build.py bench", description="Load the running appliance as its users do and report what they get: "
        "per-user decode and end-to-end tokens/s, time to first token, errors and 429s.")
    parser.add_argument("--users", type=int, default=4, help="users at once (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between one user's requests, start to start; 0: the next when the last "
                             "has finished (default: %(default)s)")
    parser.add_argument("--requests", type=int, help="requests in all (default: 4 per user)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer (default: %(default)s)")
    parser.add_argument("--model", default="DeepSeek-R1", help="model name to ask for (default: %(default)s)")
    parser.add_argument("--url", help="the API (default: http://127.0.0.1:API_PORT from the env file)")
    parser.add_argument("--key", help="API key (default: API_KEY from the env file)")
    parser.add_argument("--env-file", type=Path, default=COMPOSE_DIR / ".env",
                        help="the stack's settings (default: compose/.env)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one request may take (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def cmd_bench(args) -> int:
    for name in ("users", "max_tokens"):
        if getattr(args, name) < 1:
            raise ApplianceError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be 1 or more")
    requests = args.requests if args.requests is not None else 4 * args.users
    if requests < 1:
        raise ApplianceError(f"--requests {requests}: must be 1 or more")
    if args.interval < 0 or not math.isfinite(args.interval):
        raise ApplianceError(f"--interval {args.interval}: expected seconds, 0 or more")
    settings = read_env(args.env_file) if args.env_file.is_file() else {}
    key = args.key or settings.get("API_KEY")
    if not key:
        raise ApplianceError(f"no API key: {args.env_file} has no API_KEY; pass --key")
    url = args.url or f"http://127.0.0.1:{settings.get('API_PORT', '10002')}"
    target = Target(url, key, args.model, args.timeout)
    print(f"bench: {requests} requests, {args.users} users, against {url}", file=sys.stderr)
    report = run(target, users=args.users, interval=args.interval, requests=requests, max_tokens=args.max_tokens,
                 progress=Progress(requests))
    print(json.dumps(asdict(report), indent=2) if args.json else report.to_text())
    return 0 if report.completed else 1
