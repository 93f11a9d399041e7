"""The admin API's ``/v1`` routes, one module per resource: audience definitions
(:mod:`.audiences`), their members (:mod:`.members`), erasure (:mod:`.erasure`), campaigns
with their destinations, deliveries and scheduled steps (:mod:`.campaigns`).

Each module's ``router`` carries its tag; ``create_admin_app`` mounts them under ``/v1`` behind
the bearer token, with the error statuses of :mod:`leadback.admin.errors`.
"""
