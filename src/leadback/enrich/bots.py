"""Bot detection by user agent (``crawlerdetect``), cached: user agents repeat a lot."""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from crawlerdetect import CrawlerDetect

DEFAULT_CACHE_SIZE: Final = 8192


class BotDetector:
    """``is_bot(user_agent)`` with an LRU cache in front of the (slow) crawler regex.

    Build one per process and share it; the regex is compiled here, not at import time,
    and not on the first request. Thread-safe (``functools.lru_cache`` is).
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._detector = CrawlerDetect()
        self._detector.is_crawler("Mozilla/5.0")  # compile the patterns now
        self._cached = lru_cache(maxsize=cache_size)(self._detect)

    def _detect(self, user_agent: str) -> bool:
        return bool(self._detector.is_crawler(user_agent))

    def is_bot(self, user_agent: str | None) -> bool:
        """Whether ``user_agent`` is a crawler, tool or headless browser.

        A missing or blank user agent counts as a bot: real browsers always send one.
        """
        if not user_agent or user_agent.isspace():
            return True
        return self._cached(user_agent)
