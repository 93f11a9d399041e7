"""Campaigns: what to send, to whom, when (definitions, validation, templates, storage)."""
