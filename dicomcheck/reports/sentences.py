"""Sentences and words of a report's text, as character spans into that text.

Report text comes hard-wrapped (HL7 OBX lines), in capitals (older RIS), with section headings
("IMPRESSION:"), numbered and bulleted lists and abbreviations that end in a period. The splitter:

1. Cuts the text into blocks at blank lines, before a line that opens a list item or a heading, and
   after a line that ends in ``. ! ? ; :``. Any other line break continues the sentence when the next
   line starts in lower case, the line ends in a comma, a hyphen or a continuation word ("the", "of",
   "independent" ...), or the text is in capitals or hard-wrapped (the line reaches ``wrap_width``).
   A heading alone on its line joins the line after it ("3D RECONSTRUCTIONS:" + "Not performed.").
2. Cuts each block after ``. ! ?`` followed by a space and an upper-case letter or a digit, except
   after an abbreviation of the phrase set ("approx.", "Dr.", "e.g."), a single letter (an initial)
   or a list number at the start of the block or after a heading ("IMPRESSION: 1. ...").
3. Cuts any sentence longer than ``max_chars`` at a space.

Every span is into the original text (nothing is normalised), so a statement can cite it exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .phrases import PhraseSet

HEADING = re.compile(r"[ \t]*((?=\d*[^\W\d_])[^\W_]+(?:[ \t/&'\-]+[^\W_]+){0,5})\)?[ \t]*:(?=\s|$)")
"""A section heading at the start of a line or sentence: one to six words and a colon ("FINDINGS:",
"Clinical history:", "3D RECONSTRUCTIONS:"); its first word has a letter, so a time ("10:30") is not one."""
_LIST_ITEM = re.compile(
    r"[ \t]*(?:\(?\d{1,2}[.)]|\(?[a-zA-Z]\)|[-*\u2022\u00b7\u25aa\u2023\u25e6\u2013\u2014])(?=[ \t])"
)
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)")
_SPACE = re.compile(r"\s*")
_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|[;,/&]")
_LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_OPENERS = "\"'\u201c\u2018(["
_ENDS_SENTENCE = ".!?;:"
_CLOSERS = "\"'\u201d\u2019)]"


@dataclass(frozen=True, slots=True)
class Sentence:
    start: int
    end: int
    paragraph_start: bool
    """The first sentence of the text or after a blank line."""


@dataclass(frozen=True, slots=True)
class Token:
    start: int
    end: int
    norm: str
    """Lower case, typographic apostrophe as ``'``; punctuation tokens are ``; , / &``."""

    @property
    def is_word(self) -> bool:
        return self.norm[0].isalnum()


def tokens(text: str, start: int, end: int) -> list[Token]:
    """The words (and ``; , / &``) of ``text[start:end]``, with spans into ``text``."""
    return [
        Token(hit.start(), hit.end(), hit.group().lower().replace("\u2019", "'"))
        for hit in _TOKEN.finditer(text, start, end)
    ]


def split_sentences(text: str, phrases: PhraseSet) -> list[Sentence]:
    """The sentences of ``text`` (see the module docstring), in order, none empty."""
    sentences: list[Sentence] = []
    for start, end, paragraph_start in _blocks(text, phrases):
        first = True
        for s, e in _split_block(text, start, end, phrases):
            for piece_start, piece_end in _cut_long(text, s, e, phrases.max_chars):
                sentences.append(Sentence(piece_start, piece_end, paragraph_start and first))
                first = False
    return sentences


def _lines(text: str) -> list[tuple[int, int]]:
    lines = []
    position = 0
    for line in text.splitlines(keepends=True):
        lines.append((position, position + len(line.rstrip(_LINE_BREAKS))))
        position += len(line)
    return lines


def _in_capitals(text: str) -> bool:
    upper = len(re.findall(r"[A-Z]", text))
    lower = len(re.findall(r"[a-z]", text))
    return upper > 20 and lower * 10 < upper


def _blocks(text: str, phrases: PhraseSet) -> list[tuple[int, int, bool]]:
    capitals = _in_capitals(text)
    blocks: list[tuple[int, int, bool]] = []
    block_start: int | None = None
    previous: tuple[int, int] | None = None
    paragraph = True
    for start, end in _lines(text):
        line = text[start:end]
        if not line.strip():
            if block_start is not None and previous is not None:
                blocks.append((block_start, previous[1], paragraph))
            block_start, previous, paragraph = None, None, True
            continue
        if (
            block_start is not None
            and previous is not None
            and _breaks(text[previous[0] : previous[1]], line, capitals, phrases)
        ):
            blocks.append((block_start, previous[1], paragraph))
            block_start, paragraph = None, False
        if block_start is None:
            block_start = start
        previous = (start, end)
    if block_start is not None and previous is not None:
        blocks.append((block_start, previous[1], paragraph))
    return blocks


def _heading_only(line: str) -> bool:
    heading = HEADING.match(line)
    return heading is not None and not line[heading.end() :].strip()


def _breaks(previous: str, line: str, capitals: bool, phrases: PhraseSet) -> bool:
    """Whether the line break between ``previous`` and ``line`` ends a sentence."""
    if _LIST_ITEM.match(line) or HEADING.match(line):
        return True
    if _heading_only(previous):
        return False
    ending = previous.rstrip().rstrip(_CLOSERS)
    if ending[-1:] in _ENDS_SENTENCE:
        return True
    if line.lstrip()[:1].islower():
        return False
    last_word = ending.rsplit(None, 1)[-1].lower() if ending.split() else ""
    if ending[-1:] in ",-" or last_word in phrases.continuation_words:
        return False
    return not (capitals or len(previous.rstrip()) >= phrases.wrap_width)


def _split_block(text: str, start: int, end: int, phrases: PhraseSet) -> list[tuple[int, int]]:
    pieces = []
    piece_start = start
    for hit in _SENTENCE_END.finditer(text, start, end):
        after = _SPACE.match(text, hit.end(), end)
        assert after is not None  # \s* always matches
        following = text[after.end() : min(end, after.end() + 8)].lstrip(_OPENERS)[:1]
        if not (following.isupper() or following.isdigit() or following in "-*\u2022"):
            continue
        if hit.group() == "." and _period_continues(text, piece_start, hit.start(), phrases):
            continue
        pieces.append((piece_start, hit.end()))
        piece_start = after.end()
    pieces.append((piece_start, end))
    return [trimmed for s, e in pieces if (trimmed := _trim(text, s, e))]


def _period_continues(text: str, piece_start: int, period: int, phrases: PhraseSet) -> bool:
    """A period after an abbreviation, an initial, or a list number opening the sentence."""
    word_start = period
    limit = max(piece_start, period - 24)
    while word_start > limit and (text[word_start - 1].isalnum() or text[word_start - 1] == "."):
        word_start -= 1
    value = text[word_start:period].lstrip(".").lower()
    if not value:
        return False
    if value in phrases.abbreviations or (len(value) == 1 and value.isalpha()):
        return True
    if value.isdigit() and len(value) <= 2:
        before = text[max(piece_start, word_start - 64) : word_start].strip()
        return word_start - piece_start <= 64 and (not before or before.endswith(":"))
    return False


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _cut_long(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    pieces = []
    while end - start > limit:
        cut = text.rfind(" ", start + limit // 2, start + limit)
        cut = cut if cut > start else start + limit
        if trimmed := _trim(text, start, cut):
            pieces.append(trimmed)
        start = cut
    if trimmed := _trim(text, start, end):
        pieces.append(trimmed)
    return pieces
