"""Audience definitions for the benchmarks: the 20 of the audience bench, and N more.

:func:`audiences_yaml` gives the 19 rule templates (every kind of condition) and one
product-level audience, over the given sites. :func:`many_audiences` gives N distinct audiences
over ``ceil(N / 25)`` sites of the stored history (``bench.history.HISTORY_SITES``): the same 20
first, then audiences drawn from a dozen families (carts left, categories and products viewed,
visit frequency, high-value checkouts, recency, lapsed buyers, contact pages, funnels, campaign
traffic, leads, product-level, audiences built on other audiences) with varied windows, counts,
filters and product ids, each valid for ``leadback.audiences.rules`` and ``validation``.
"""

from __future__ import annotations

import math
import random
from typing import Any

import yaml

from bench.history import CATEGORIES, HISTORY_SITES, PRODUCTS

PER_SITE = 25  # audiences per site in many_audiences

TEMPLATES = [
    "{then_not: {did: {event: add_to_cart, within: 7d}, then: {event: purchase}}}",
    "{all: [{then_not: {did: {event: add_to_cart, within: 7d}, then: {event: purchase}}},"
    " {idle: 1h}]}",
    "{all: [{did: {event: product_view, count: 2, within: 3d}}, {not: {did: {event: purchase}}}]}",
    "{all: [{did: {event: purchase}}, {idle: 3d}]}",
    "{did: {event: purchase, within: 30d}}",
    "{all: [{did: {event: checkout, within: 1d, where: [{property: value, op: gt, value: 100}]}},"
    " {not: {did: {event: purchase, within: 1d}}}]}",
    "{all: [{did: {event: page_view, where: [{field: url, op: contains, value: /contact}]}},"
    " {not: {did: {event: lead}}}]}",
    "{did: {event: product_view, where: [{property: category, op: eq, value: shoes}], within: 7d}}",
    "{did: {event: product_view, where: [{property: category, op: in, value: [bags, hats]}]}}",
    "{did: {event: page_view, count: 10, within: 7d}}",
    "{seen_within: 1d}",
    "{all: [{did: {event: signup}}, {not: {did: {event: purchase}}}]}",
    "{sequence: {steps: [{event: product_view}, {event: add_to_cart}, {event: checkout}],"
    " within: 1d}}",
    "{then_not: {did: {event: checkout}, then: {event: purchase}, within: 30m}}",
    "{any: [{did: {event: lead}}, {did: {event: signup}}]}",
    "{did: {event: [add_to_cart, checkout], within: 2d, where: [{property: value, op: gte,"
    " value: 50}]}}",
    "{all: [{did: {event: page_view, within: 7d}}, {not: {did: {event: page_view, within: 1d}}}]}",
    "{did: {event: remove_from_cart, within: 7d}}",
    "{did: {event: custom, name: video_play}}",
]

PROBE_ID = "probe"


def probe_yaml(site: str) -> str:
    """The probe audience: a lead on a ``/probe/`` URL (no load or history event is one)."""
    return yaml.safe_dump(
        [
            {
                "id": PROBE_ID,
                "site": site,
                "rule": {
                    "did": {
                        "event": "lead",
                        "where": [{"field": "url", "op": "contains", "value": "/probe/"}],
                    }
                },
            }
        ]
    )


def audiences_yaml(sites: list[str], n: int = 20) -> str:
    """``n`` audiences spread over ``sites``: the 19 templates and one product-level one."""
    docs: list[dict[str, Any]] = [
        {
            "id": f"a{i:02d}",
            "site": sites[i % len(sites)],
            "rule": yaml.safe_load(TEMPLATES[i % len(TEMPLATES)]),
        }
        for i in range(n - 1)
    ]
    docs.append(
        {
            "id": "viewed_not_bought",
            "site": sites[0],
            "products": {"property": "product_id"},
            "rule": yaml.safe_load(TEMPLATES[2]),
        }
    )
    return yaml.safe_dump(docs)


WINDOWS = ["30m", "1h", "6h", "1d", "3d", "7d", "14d", "30d", "90d", "180d"]
SHORT = WINDOWS[:5]
LONG = WINDOWS[4:]
SOURCES = ["google", "facebook", "newsletter", "yandex", "tiktok"]


def _products(rng: random.Random, k: int) -> list[str]:
    return sorted({f"p{math.floor(PRODUCTS * rng.random() ** 2)}" for _ in range(k)})


def _family(rng: random.Random, kind: int, earlier: list[str]) -> tuple[str, dict[str, Any]]:
    """(family name, rule) of one generated audience; ``earlier``: person-level audiences of
    the same site it may build on."""
    w, s, lg = rng.choice(WINDOWS), rng.choice(SHORT), rng.choice(LONG)
    cat = rng.choice(CATEGORIES)
    value = rng.choice([20, 50, 80, 100, 150, 200, 300])
    if kind == 0:
        then: dict[str, Any] = {"did": {"event": "add_to_cart", "within": lg}, "then": {}}
        then["then"] = {"event": rng.choice(["purchase", "checkout"])}
        if rng.random() < 0.5:
            then["within"] = s
        return "cart-left", {"then_not": then}
    if kind == 1:
        where: list[dict[str, Any]] = [{"property": "category", "op": "eq", "value": cat}]
        if rng.random() < 0.4:
            where.append({"property": "price", "op": "gte", "value": value})
        return "category", {"did": {"event": "product_view", "where": where, "within": w}}
    if kind == 2:
        ids = _products(rng, rng.randint(1, 8))
        op = {"property": "product_id", "op": "in", "value": ids}
        if len(ids) == 1:
            op = {"property": "product_id", "op": "eq", "value": ids[0]}
        return "products", {
            "did": {
                "event": rng.choice(["product_view", ["product_view", "add_to_cart"]]),
                "where": [op],
                "within": w,
            }
        }
    if kind == 3:
        count: Any = rng.randint(2, 20)
        if rng.random() < 0.3:
            count = {"min": 1, "max": rng.randint(2, 5)}
        return "frequency", {"did": {"event": "page_view", "count": count, "within": lg}}
    if kind == 4:
        return "high-value", {
            "all": [
                {
                    "did": {
                        "event": "checkout",
                        "within": s,
                        "where": [{"property": "value", "op": "gt", "value": value}],
                    }
                },
                {"not": {"did": {"event": "purchase", "within": s}}},
            ]
        }
    if kind == 5:
        return "recent", rng.choice([{"seen_within": w}, {"idle": lg}])
    if kind == 6:
        return "lapsed", {
            "all": [
                {"did": {"event": "purchase", "count": rng.randint(1, 3)}},
                {"not": {"did": {"event": "purchase", "within": lg}}},
            ]
        }
    if kind == 7:
        page = rng.choice(["/contact", "/signup", "/c/", "/blog/", "/cart"])
        return "pages", {
            "all": [
                {
                    "did": {
                        "event": "page_view",
                        "where": [{"field": "url", "op": "contains", "value": page}],
                        "within": w,
                    }
                },
                {"not": {"did": {"event": rng.choice(["lead", "signup", "purchase"])}}},
            ]
        }
    if kind == 8:
        first: dict[str, Any] = {"event": "product_view"}
        if rng.random() < 0.5:
            first["where"] = [{"property": "category", "op": "eq", "value": cat}]
        steps = [first, {"event": "add_to_cart"}]
        if rng.random() < 0.6:
            steps.append({"event": "checkout"})
        return "funnel", {"sequence": {"steps": steps, "within": rng.choice(["1h", "1d", "7d"])}}
    if kind == 9:
        return "campaign", {
            "did": {
                "event": "page_view",
                "where": [{"field": "utm.source", "op": "eq", "value": rng.choice(SOURCES)}],
                "within": lg,
            }
        }
    if kind == 10:
        return "leads", {
            "any": [
                {"did": {"event": "lead", "within": lg}},
                {"did": {"event": "signup", "within": lg}},
                {"did": {"event": "page_view", "count": rng.randint(5, 30), "within": s}},
            ]
        }
    if kind == 11 and earlier:
        return "segment", {
            "all": [
                {"in_audience": rng.choice(earlier)},
                {"did": {"event": rng.choice(["add_to_cart", "product_view"]), "within": w}},
            ]
        }
    return "referrer", {
        "did": {
            "event": "page_view",
            "where": [{"field": "referrer", "op": "contains", "value": rng.choice(SOURCES[:2])}],
            "within": lg,
        }
    }


def _product_level(rng: random.Random) -> dict[str, Any]:
    lg = rng.choice(LONG)
    return rng.choice(
        [
            {
                "all": [
                    {"did": {"event": "product_view", "count": rng.randint(1, 3), "within": lg}},
                    {"not": {"did": {"event": "purchase", "within": lg}}},
                ]
            },
            {
                "then_not": {
                    "did": {"event": "add_to_cart", "within": lg},
                    "then": {"event": "purchase"},
                }
            },
            {"did": {"event": "product_view", "within": rng.choice(SHORT)}},
        ]
    )


def audience_sites(n: int) -> list[str]:
    """The sites ``n`` audiences of :func:`many_audiences` are spread over."""
    return [name for name, _ in HISTORY_SITES[: max(1, math.ceil(n / PER_SITE))]]


def many_audiences(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """``n`` distinct audiences over :func:`audience_sites`: the 20 of :func:`audiences_yaml`
    first (one site each, round robin), then generated ones (one in ten product-level)."""
    sites = audience_sites(n)
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = []
    person_level: dict[str, list[str]] = {s: [] for s in sites}
    for i in range(n):
        site = sites[i % len(sites)]
        doc: dict[str, Any]
        if i < len(TEMPLATES):
            doc = {"id": f"a{i:03d}", "site": site, "rule": yaml.safe_load(TEMPLATES[i])}
        elif i == len(TEMPLATES):
            doc = {
                "id": "viewed_not_bought",
                "site": site,
                "products": {"property": "product_id"},
                "rule": yaml.safe_load(TEMPLATES[2]),
            }
        elif i % 10 == 0:
            doc = {
                "id": f"a{i:03d}-dynamic",
                "site": site,
                "products": {"property": "product_id"},
                "rule": _product_level(rng),
            }
        else:
            name, rule = _family(rng, rng.randrange(13), person_level[site])
            doc = {"id": f"a{i:03d}-{name}", "site": site, "rule": rule}
            if rng.random() < 0.15:
                doc["ttl"] = rng.choice(["1d", "7d", "30d"])
        if "products" not in doc:
            person_level[site].append(doc["id"])
        docs.append(doc)
    return docs


def many_audiences_yaml(n: int, seed: int = 11) -> str:
    """:func:`many_audiences` as a YAML document for ``leadback audiences apply``."""
    return yaml.safe_dump(many_audiences(n, seed))
