"""A due step -> the message for its channel: the recipient's address and the rendered
content (templates in the sandbox, the one-click unsubscribe link)."""

from __future__ import annotations

from typing import Any

from leadback.campaigns.definitions import CampaignSpec, Step
from leadback.campaigns.templates import CompiledTemplates, visible_traits
from leadback.destinations.base import (
    Content,
    EmailAddress,
    NoAddress,
    PhoneNumber,
    Recipient,
    TelegramChat,
)
from leadback.dispatcher.recipients import Person, RecipientLoader
from leadback.signed_tokens import TokenSigner


def address(
    loader: RecipientLoader, person: Person, kind: str, destination: str
) -> tuple[Recipient, dict[str, str]] | None:
    """Where ``person`` gets a ``kind`` message from ``destination``, and what to remember to
    forget the address if the provider says it is gone; None if they have no such address."""
    if kind == "email":
        email = loader.contact(person, "email")
        return (EmailAddress(email), {}) if email else None
    if kind == "sms":
        phone = loader.contact(person, "phone")
        return (PhoneNumber(phone), {}) if phone else None
    if kind == "webpush":
        if not person.push:
            return None
        digest, visitor, subscription = person.push[-1]  # the newest subscription
        return subscription, {"endpoint_sha256": digest, "visitor": visitor}
    if kind == "telegram":
        chat = person.telegram.get(destination)
        if chat is None:
            return None
        return TelegramChat(chat[1]), {"visitor": chat[0]}
    if kind == "webhook":
        return NoAddress(), {}
    return None


class Composer:
    """Renders steps (templates compiled once and cached)."""

    def __init__(self, signer: TokenSigner, public_url: str, loader: RecipientLoader) -> None:
        self._loader = loader
        self._templates = CompiledTemplates()
        self._signer = signer
        self._public_url = public_url

    def content(
        self,
        spec: CampaignSpec,
        step_index: int,
        step: Step,
        kind: str,
        person: Person,
        products: list[str],
    ) -> Content:
        """The rendered content; ``TemplateRenderError`` if a template fails."""
        unsubscribe = None
        if kind in ("email", "sms", "webpush", "telegram"):
            from leadback.destinations.unsubscribe import unsubscribe_token, unsubscribe_url

            token = unsubscribe_token(
                self._signer,
                site_id=spec.site,
                person_id=person.person_id,
                channel=kind,
                campaign_id=spec.id,
            )
            unsubscribe = unsubscribe_url(self._public_url, token)
        traits = visible_traits(person.traits)
        greeting = {  # names decrypted for the message itself, never for webhook payloads
            name: value
            for name in ("first_name", "last_name")
            if (value := self._loader.decrypted(person, name)) is not None
        }
        context: dict[str, Any] = {
            "person": {"id": person.person_id},
            "traits": {**traits, **greeting},
            "products": products,
            "campaign": {"id": spec.id, "name": spec.name or spec.id},
            "audience": {"id": spec.audience},
            "step": step_index,
            "unsubscribe_url": unsubscribe,
        }
        render = self._templates.render
        data: dict[str, Any] = {}
        if kind == "webhook":
            base = {
                "site": spec.site,
                "campaign": spec.id,
                "audience": spec.audience,
                "person": person.person_id,
                "products": products,
                "traits": traits,
            }
            data = self._templates.render_data(step.data, context) if step.data else base
        return Content(
            text=render(step.text, context) if step.text else "",
            subject=render(step.subject, context) if step.subject else None,
            html=render(step.html, context, html=True) if step.html else None,
            url=render(step.url, context) if step.url else None,
            data=data,
            unsubscribe_url=unsubscribe,
        )
