"""Step templates: Jinja2 in a sandbox, compiled once per campaign version.

The sandbox refuses attribute access to internals (``__class__``, ``mro``...) so a template
written through the admin API cannot reach Python. HTML parts are autoescaped; text parts are
not. A missing variable renders empty (``{{ traits.first_name | default("there") }}`` gives a
fallback). What a template sees (:func:`template_context`):

``person``      ``{"id": ...}``
``traits``      the person's traits without contact hashes and tokens, plus ``first_name`` and
                ``last_name`` as written (decrypted for the message; webhook payloads by
                default carry no name)
``products``    product ids from the audience change (product-level audiences)
``campaign``    ``{"id", "name"}``; ``audience``: ``{"id"}``; ``step``: its number (0-based)
``unsubscribe_url``  the one-click link for this person and channel
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import TemplateError, Undefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from leadback.errors import InvalidInputError

_TEXT = ImmutableSandboxedEnvironment(autoescape=False, undefined=Undefined)
_HTML = ImmutableSandboxedEnvironment(autoescape=True, undefined=Undefined)

MAX_OUTPUT = 200_000


class TemplateRenderError(InvalidInputError):
    """A template failed at render time (the message goes to the dead topic)."""

    def __init__(self, detail: str) -> None:
        super().__init__("template_error", detail)


def check_template(source: str, *, html: bool, field: str) -> None:
    """Compile ``source``; ``InvalidInputError("invalid_template")`` naming ``field`` if bad."""
    try:
        (_HTML if html else _TEXT).from_string(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise InvalidInputError("invalid_template", f"{exc.message}{where}", field=field) from exc


class CompiledTemplates:
    """Templates compiled on first use, by (key, html)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, bool], Any] = {}

    def render(self, source: str, context: Mapping[str, Any], *, html: bool = False) -> str:
        """``source`` rendered with ``context``; ``TemplateRenderError`` if it fails."""
        key = (source, html)
        template = self._cache.get(key)
        try:
            if template is None:
                if len(self._cache) > 4096:
                    self._cache.clear()
                template = (_HTML if html else _TEXT).from_string(source)
                self._cache[key] = template
            out = str(template.render(context))
        except (TemplateError, SecurityError) as exc:
            raise TemplateRenderError(str(exc)) from exc
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateRenderError(f"{type(exc).__name__}: {exc}") from exc
        if len(out) > MAX_OUTPUT:
            raise TemplateRenderError(f"the output exceeds {MAX_OUTPUT} characters")
        return out

    def render_data(self, data: Any, context: Mapping[str, Any]) -> Any:
        """A webhook ``data`` tree with every string rendered as a text template."""
        if isinstance(data, str):
            return self.render(data, context)
        if isinstance(data, dict):
            return {k: self.render_data(v, context) for k, v in data.items()}
        if isinstance(data, list):
            return [self.render_data(v, context) for v in data]
        return data


def visible_traits(traits: Mapping[str, Any]) -> dict[str, Any]:
    """Traits a template may show: contact hashes and tokens left out."""
    return {k: v for k, v in traits.items() if not k.endswith(("_sha256", "_enc"))}


def check_data_templates(data: Any, *, field: str) -> None:
    """Compile every string of a webhook ``data`` tree."""
    if isinstance(data, str):
        check_template(data, html=False, field=field)
    elif isinstance(data, dict):
        for k, v in data.items():
            check_data_templates(v, field=f"{field}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            check_data_templates(v, field=f"{field}[{i}]")
