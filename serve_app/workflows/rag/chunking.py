"""Documents into chunks: by Markdown section, then paragraphs packed up to a size.

A chunk keeps the path of headings it sits under ("Gateway > Routes"): it is
put before the chunk's text where it is indexed and embedded (a heading's
words are often the best match for a question) and is the chunk's title
when it is cited. Paragraphs (a fenced code block is one) are packed up to
`max_chars`, each new chunk of a section starting with the last
`overlap_chars` of the one before, on a word boundary, so that a sentence
cut between two chunks is whole in one of them. Plain text is one section.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^(```|~~~)")


@dataclass(frozen=True)
class Chunk:
    heading: str  # the heading path, "" outside any section
    text: str

    def indexed(self) -> str:
        """What is embedded and searched: the heading path, then the text."""
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text


def chunk_document(text: str, max_chars: int, overlap_chars: int) -> list[Chunk]:
    """`text` (Markdown or plain) as chunks of at most `max_chars` characters each."""
    chunks: list[Chunk] = []
    for heading, body in _sections(text):
        current = ""
        for block in _blocks(body, max_chars):
            if current and len(current) + 2 + len(block) > max_chars:
                chunks.append(Chunk(heading, current))
                current = _overlap(current, min(overlap_chars, max_chars - 2 - len(block)))
            current = f"{current}\n\n{block}" if current else block
        if current:
            chunks.append(Chunk(heading, current))
    return chunks


def _sections(text: str) -> Iterator[tuple[str, str]]:
    """(heading path, body) per section; a heading inside a code fence is not one."""
    path: list[str] = []
    body: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        heading = None if fenced else HEADING.match(line)
        if heading is None:
            body.append(line)
            continue
        if "".join(body).strip():
            yield " > ".join(path), "\n".join(body).strip()
        level = len(heading.group(1))
        path = [*path[: level - 1], heading.group(2)]
        body = []
    if "".join(body).strip():
        yield " > ".join(path), "\n".join(body).strip()


def _blocks(body: str, max_chars: int) -> list[str]:
    """Paragraphs (a fenced code block is one), a longer one cut at a sentence end, a
    line end or a space in its second half."""
    paragraphs: list[str] = []
    lines: list[str] = []
    fenced = False
    for line in body.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        if line.strip() or fenced:
            lines.append(line)
        elif lines:
            paragraphs.append("\n".join(lines))
            lines = []
    if lines:
        paragraphs.append("\n".join(lines))
    blocks: list[str] = []
    for paragraph in paragraphs:
        while len(paragraph) > max_chars:
            cut = next(
                (
                    at + 1
                    for sep in (". ", "\n", " ")
                    if (at := paragraph.rfind(sep, 0, max_chars)) > max_chars // 2
                ),
                max_chars,
            )
            blocks.append(paragraph[:cut].strip())
            paragraph = paragraph[cut:]
        if paragraph.strip():
            blocks.append(paragraph.strip())
    return blocks


def _overlap(text: str, chars: int) -> str:
    """The last `chars` characters of `text`, from a word's start."""
    if chars <= 0:
        return ""
    tail = text[-chars:]
    space = tail.find(" ")
    return tail[space + 1 :] if space >= 0 else ""
