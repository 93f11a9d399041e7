"""The admin API: audience definitions, members, exports and erasure, behind bearer tokens.

It runs inside the process that owns ClickHouse (with chDB, the segmenter): see
:func:`leadback.admin.app.create_admin_app`. ``leadback audiences ...`` talks to it through
:class:`leadback.admin.client.AdminClient`.
"""
