"""Which module implements each channel kind: the one place a destination definition becomes a
config object and a config becomes a channel.

Each channel module exposes ``<Kind>Config`` (a :class:`DestinationConfig` with ``kind``) and
``build(config, deps) -> Channel``; they are imported on first use, so a process that sends
no push messages never imports the web push libraries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

from pydantic import ValidationError

from leadback.destinations.base import Channel
from leadback.destinations.config import ChannelDeps, DestinationConfig
from leadback.errors import InvalidInputError

#: kind -> (module, config class name)
CHANNEL_MODULES: Mapping[str, tuple[str, str]] = {
    "email": ("leadback.destinations.email", "EmailConfig"),
    "sms": ("leadback.destinations.sms", "SmsConfig"),
    "webpush": ("leadback.destinations.webpush", "WebPushConfig"),
    "webhook": ("leadback.destinations.webhook", "WebhookConfig"),
    "telegram": ("leadback.destinations.telegram", "TelegramConfig"),
}

Builder = Callable[[Any, ChannelDeps], Channel]
_extra: dict[str, tuple[type[DestinationConfig], Builder]] = {}


def register(kind: str, config: type[DestinationConfig], build: Builder) -> None:
    """Add a channel kind outside the package (tests, plugins)."""
    _extra[kind] = (config, build)


def _resolve(kind: str) -> tuple[type[DestinationConfig], Builder]:
    if kind in _extra:
        return _extra[kind]
    module_name, class_name = CHANNEL_MODULES[kind]
    module = importlib.import_module(module_name)
    return cast("type[DestinationConfig]", getattr(module, class_name)), module.build


def kinds() -> list[str]:
    """Every channel kind a destination may have."""
    return sorted({*CHANNEL_MODULES, *_extra})


def parse_destination(data: Any, *, field: str = "") -> DestinationConfig:
    """A destination definition -> its config; ``InvalidInputError("invalid_destination")``
    names the bad field (``<field>.<key>``)."""
    prefix = f"{field}." if field else ""
    if not isinstance(data, dict):
        raise InvalidInputError(
            "invalid_destination", "a destination is a mapping", field=field or None
        )
    kind = data.get("kind")
    if kind not in kinds():
        raise InvalidInputError(
            "invalid_destination",
            f"kind must be one of {', '.join(kinds())}",
            field=f"{prefix}kind",
        )
    config_class, _ = _resolve(str(kind))
    try:
        return config_class.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError(
            "invalid_destination", first["msg"], field=f"{prefix}{where}" if where else field
        ) from None


def build_channel(config: DestinationConfig, deps: ChannelDeps) -> Channel:
    """The channel for ``config`` (its secrets resolved now: ``ConfigError`` if missing)."""
    _, build = _resolve(str(getattr(config, "kind", "")))
    return build(config, deps)


def channel_kind(config: DestinationConfig) -> str:
    """The kind a config is for."""
    return str(getattr(config, "kind", ""))
