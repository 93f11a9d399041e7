"""Fitting text into Telegram's 4096 UTF-16 units: what shows, where the cut falls."""

from __future__ import annotations

import html

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadback.destinations.telegram_text import (
    ELLIPSIS,
    MAX_TEXT,
    fit,
    truncate,
    utf16_len,
    visible_text,
)

ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=300)


@given(ANY_TEXT)
def test_utf16_len_is_what_utf16_encoding_says(text: str) -> None:
    assert utf16_len(text) == len(text.encode("utf-16-le")) // 2


@given(ANY_TEXT, st.integers(min_value=2, max_value=120))
def test_truncate_keeps_a_prefix_within_the_limit(text: str, limit: int) -> None:
    cut = truncate(text, limit)
    assert utf16_len(cut) <= limit
    if utf16_len(text) <= limit:
        assert cut == text
    else:
        assert cut.endswith(ELLIPSIS)
        assert text.startswith(cut[: -len(ELLIPSIS)])
        cut.encode("utf-16")  # whole characters only: no half of a surrogate pair


def test_truncate_cuts_at_a_space_near_the_end() -> None:
    text = "lorem ipsum " * 500
    cut = truncate(text)
    assert cut.endswith("ipsum…")
    assert MAX_TEXT - 20 < utf16_len(cut) <= MAX_TEXT
    no_spaces = "x" * 5000
    assert truncate(no_spaces) == "x" * (MAX_TEXT - 1) + ELLIPSIS


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("*bold* \\_x\\_ [link](https://a.example/p\\)q) `co\\`de`", "bold _x_ link co`de"),
        ("__u__ ~s~ ||spoiler||\n>quoted\n>line", "u s spoiler\nquoted\nline"),
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("![👍](tg://emoji?id=5368324170671202286) ok", "👍 ok"),
        ("1\\.5 \\+ 2\\!", "1.5 + 2!"),
    ],
)
def test_markdown_v2_visible_text(text: str, shown: str) -> None:
    assert visible_text(text, "MarkdownV2") == shown


def test_html_visible_text() -> None:
    text = '<b>a &amp; b</b> <a href="https://x.example/?q=1&amp;r=2">link</a> &lt;3'
    assert visible_text(text, "HTML") == "a & b link <3"
    assert visible_text(text, None) == text


@given(st.lists(st.sampled_from(["b", "i", "u", "code"]), min_size=1, max_size=4), ANY_TEXT)
def test_fit_html_keeps_markup_when_what_shows_fits(tags: list[str], body: str) -> None:
    inner = html.escape(body) * 10
    text = "".join(f"<{t}>" for t in tags) + inner + "".join(f"</{t}>" for t in reversed(tags))
    sent, mode = fit(text, "HTML")
    shown = visible_text(text, "HTML")
    if utf16_len(shown) <= MAX_TEXT:
        assert (sent, mode) == (text, "HTML")
    else:
        assert mode is None
        assert shown.startswith(sent[:-1]) and utf16_len(sent) <= MAX_TEXT


def test_fit_plain_and_formatted_overflows() -> None:
    assert fit("short", None) == ("short", None)
    sent, mode = fit("*" + "a" * 5000 + "*", "MarkdownV2")
    assert mode is None and sent == "a" * (MAX_TEXT - 1) + ELLIPSIS
    sent, mode = fit("b" * 5000, None)
    assert mode is None and utf16_len(sent) == MAX_TEXT
