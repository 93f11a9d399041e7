"""Leadback: bring back the visitors who left without converting.

One event's way through the package: ``ingest`` route -> ``protocols`` -> canonical event
(``events``) -> ``kafka`` delivery -> ``leadback.events.v1`` -> ``segmenter`` loop ->
``store`` insert into ClickHouse.
"""

__version__ = "0.1.0"
