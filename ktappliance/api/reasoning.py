"""Split DeepSeek-R1's inline `<think>…</think>` into reasoning and answer.

R1 writes its reasoning inline. With KTransformers' --force_think the first
token is "<think>\\n"; with chat templates that open the block in the prompt
the output has no opening tag and only "</think>" marks the end. Streams cut
text anywhere, tags included, so the splitter holds back any tail that could
still become a tag.

Rules, in order:
- output that starts with "<think>" (after whitespace) is reasoning until
  "</think>", streamed as it comes;
- otherwise, when the prompt is known to open the block (`opened=True`),
  the same from the first character (an opening tag the model repeats is dropped);
- otherwise the text is held until "</think>" shows it was reasoning, or the
  end shows it was all answer.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN = "<think>"
CLOSE = "</think>"


@dataclass
class Piece:
    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest tail of text that is a proper prefix of tag."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


class ReasoningSplitter:
    def __init__(self, opened: bool = False):
        self.opened = opened
        self.state = "start"
        self.pending = ""  # text not yet classified
        self.skip_newlines = False  # newlines right after a tag belong to neither side

    def _enter(self, state: str, rest: str) -> None:
        self.state, self.pending, self.skip_newlines = state, rest, True

    def feed(self, text: str) -> Piece:
        self.pending += text
        out = Piece()
        while True:
            if self.skip_newlines and self.state in ("reasoning", "answer"):
                self.pending = self.pending.lstrip("\n")
                if not self.pending:
                    return out
                self.skip_newlines = False
            if self.state == "start":
                stripped = self.pending.lstrip()
                if stripped.startswith(OPEN):
                    self._enter("reasoning", stripped[len(OPEN):])
                    continue
                if OPEN.startswith(stripped):
                    return out  # maybe the opening tag, still arriving
                self.state = "reasoning" if self.opened else "undecided"
                continue
            if self.state in ("undecided", "reasoning"):
                index = self.pending.find(CLOSE)
                if index >= 0:
                    out.reasoning += self.pending[:index]
                    self._enter("answer", self.pending[index + len(CLOSE):])
                    continue
                if self.state == "undecided":
                    return out  # held: reasoning only if a closing tag follows
                keep = _partial_suffix(self.pending, CLOSE)
                out.reasoning += self.pending[:len(self.pending) - keep]
                self.pending = self.pending[len(self.pending) - keep:]
                return out
            # answer: everything after the reasoning block
            out.content += self.pending
            self.pending = ""
            return out

    def finish(self) -> Piece:
        """The stream ended: classify what is still held."""
        rest, self.pending = self.pending, ""
        if self.state == "reasoning":
            return Piece(reasoning=rest)  # cut off while thinking
        return Piece(content=rest)


def split_text(text: str, opened: bool = False) -> Piece:
    splitter = ReasoningSplitter(opened)
    first, last = splitter.feed(text), splitter.finish()
    return Piece(first.reasoning + last.reasoning, first.content + last.content)
