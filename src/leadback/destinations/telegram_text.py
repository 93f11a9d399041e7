"""Fitting a message into Telegram's text limit without breaking it.

``sendMessage`` takes 1-4096 characters *after entity parsing* (the markup of ``HTML`` and
``MarkdownV2`` does not count). Lengths here are UTF-16 code units, the unit of Telegram's
entity offsets and never fewer than characters, so the count is the safe one. A text is sent
as it is when its raw length, or else its visible length, is within the limit. A longer one is
cut, and cutting markup can leave a tag or a ``*`` open, which Telegram refuses ("can't parse
entities"): an overlong formatted message is therefore sent as its visible text without a
parse mode. It loses its formatting rather than its delivery. The cut falls on a space near
the end when there is one, never inside a character, and ends with an ellipsis.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Final, Literal

ParseMode = Literal["HTML", "MarkdownV2"]

MAX_TEXT: Final = 4096  # UTF-16 code units
ELLIPSIS: Final = "\u2026"
_WORD_BREAK_WINDOW: Final = 200  # how far back a cut looks for a space


def utf16_len(text: str) -> int:
    """The length Telegram counts: UTF-16 code units (2 for a character beyond U+FFFF)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


class _Visible(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _html_visible(text: str) -> str:
    parser = _Visible()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def _closing(text: str, start: int, fence: str) -> int:
    """Where the unescaped ``fence`` closing a code span opened before ``start`` is (or the end)."""
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(fence, i):
            return i
        else:
            i += 1
    return len(text)


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _markdown_visible(text: str) -> str:
    """The text a MarkdownV2 message shows: escapes resolved, entity markers and link targets
    dropped, code kept (a ``pre`` block's language line dropped)."""
    out: list[str] = []
    open_links = 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            out.append(text[i + 1])
            i += 2
        elif text.startswith("```", i):
            end = _closing(text, i + 3, "```")
            body = text[i + 3 : end]
            if "\n" in body:
                body = body.split("\n", 1)[1]  # the first line names the language
            out.append(_unescape(body))
            i = end + 3
        elif ch == "`":
            end = _closing(text, i + 1, "`")
            out.append(_unescape(text[i + 1 : end]))
            i = end + 1
        elif ch == "[":
            open_links += 1
            i += 1
        elif ch == "!" and text.startswith("![", i):  # custom emoji: ![👍](tg://emoji?id=...)
            open_links += 1
            i += 2
        elif ch == "]" and open_links and text.startswith("(", i + 1):
            open_links -= 1
            i = _closing(text, i + 2, ")") + 1  # the link target is not shown
        elif ch in "*_~|" or (ch == ">" and (i == 0 or text[i - 1] == "\n")):  # > quotes a line
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def visible_text(text: str, parse_mode: ParseMode | None) -> str:
    """What Telegram shows for ``text`` in ``parse_mode``."""
    if parse_mode == "HTML":
        return _html_visible(text)
    if parse_mode == "MarkdownV2":
        return _markdown_visible(text)
    return text


def truncate(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut to at most ``limit`` UTF-16 units, ending with an ellipsis if cut."""
    if utf16_len(text) <= limit:
        return text
    budget = limit - utf16_len(ELLIPSIS)
    kept: list[str] = []
    used = 0
    for ch in text:
        size = 2 if ord(ch) > 0xFFFF else 1
        if used + size > budget:
            break
        kept.append(ch)
        used += size
    cut = "".join(kept)
    window = max(0, len(cut) - _WORD_BREAK_WINDOW)
    space = max(cut.rfind(" ", window), cut.rfind("\n", window))
    if space > 0:
        cut = cut[:space]
    return cut.rstrip().rstrip("\u200d") + ELLIPSIS


def fit(text: str, parse_mode: ParseMode | None) -> tuple[str, ParseMode | None]:
    """The text and parse mode to send so Telegram accepts the length (module docstring)."""
    if utf16_len(text) <= MAX_TEXT:
        return text, parse_mode
    shown = visible_text(text, parse_mode)
    if parse_mode is not None and utf16_len(shown) <= MAX_TEXT:
        return text, parse_mode
    return truncate(shown), None
