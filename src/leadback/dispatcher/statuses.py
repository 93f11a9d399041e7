"""The statuses a delivery can be in (the ``status`` column of the ``deliveries`` ledger, see
:mod:`leadback.dispatcher.ledger`), in the order tables show them. Apart from the ledger so
that the CLI and the admin API's schemas name them without importing the store."""

from __future__ import annotations

from typing import Literal, get_args

DeliveryStatus = Literal[
    "sending",  # written before the provider call
    "sent",  # the provider accepted it
    "retrying",  # a transient failure: the step is due again later
    "failed",  # for good; also on the dead-letter topic
    "held_out",  # the campaign's control group
    "suppressed",  # unsubscribed, bounced, blocked
    "no_consent",  # no `marketing` consent
    "no_address",  # no e-mail, phone, chat or push subscription known
    "capped",  # skipped by a frequency cap
    "cancelled",  # an exit before the step was due, or the campaign went away
]

DELIVERY_STATUSES: tuple[str, ...] = get_args(DeliveryStatus)
