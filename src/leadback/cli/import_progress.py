"""``leadback events import`` on a terminal: the importer with its producer, a progress bar
(rows, rows/s) and the summary on stderr."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn
from rich.text import Text

from leadback.errors import LeadbackError
from leadback.identity.contacts import contact_cipher
from leadback.importer import MAX_REPORTED, EventImporter, ImportPolicy, ImportReport, open_lines
from leadback.kafka.config import producer_options, resolve_bootstrap
from leadback.kafka.producer import KafkaRecordProducer
from leadback.settings import Settings


class _RateColumn(ProgressColumn):
    """Rows per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed or 0:,.0f} rows/s", style="progress.data.speed")


def import_events(
    settings: Settings,
    path: str,
    *,
    site: str | None,
    dry_run: bool,
    batch_size: int,
    skip_invalid: bool,
) -> int:
    """Run an import; print progress and the summary on stderr; return the exit status."""
    console = Console(stderr=True)
    verb = "valid" if dry_run else "imported"
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,.0f} rows"),
        _RateColumn(),
        TextColumn("{task.fields[accepted]:,} " + verb),
        TextColumn("{task.fields[rejected]:,} rejected"),
        console=console,
    )
    task = progress.add_task("dry run" if dry_run else "importing", accepted=0, rejected=0)

    def show(report: ImportReport) -> None:
        progress.update(
            task, completed=report.lines, accepted=report.imported, rejected=report.rejected
        )

    importer: EventImporter | None = None
    failure: str | None = None
    try:
        lines = open_lines(path)  # a file that cannot be read says so before anything else
        importer = _importer(settings, site, dry_run, batch_size)
        with progress:
            asyncio.run(_run(importer, lines, show))
    except LeadbackError as exc:
        failure = str(exc)
    except OSError as exc:
        failure = f"cannot read {path}: {exc.strerror or exc}"
    except KeyboardInterrupt:
        failure = "interrupted"
    report = importer.report if importer is not None else ImportReport()
    if importer is not None:
        _summary(console, report, verb)
    if failure is not None:
        _say(console, f"error: {failure}")
        return 1
    return 1 if report.rejected and not skip_invalid else 0


def _importer(
    settings: Settings, site: str | None, dry_run: bool, batch_size: int
) -> EventImporter:
    producer = None
    if not dry_run:
        bootstrap, embedded = resolve_bootstrap(settings)
        producer = KafkaRecordProducer(
            **producer_options(settings.kafka, bootstrap, embedded=embedded)
        )
    return EventImporter(
        ImportPolicy.from_settings(settings, site),
        contact_cipher(settings),
        topic=settings.kafka.topic_events,
        producer=producer,
        batch_size=batch_size,
    )


async def _run(
    importer: EventImporter, lines: Iterator[bytes], show: Callable[[ImportReport], None]
) -> None:
    producer = importer.producer
    if producer is not None:
        await producer.start()
    try:
        await importer.run(lines, show)
    finally:
        if producer is not None:
            await producer.stop()  # flushes: every record counted was acknowledged already


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _summary(console: Console, report: ImportReport, verb: str) -> None:
    _say(
        console,
        f"{report.imported:,} {verb}, {report.rejected:,} rejected ({report.lines:,} lines)",
    )
    for rejection in report.rejections:
        _say(console, f"  {rejection}")
    if report.rejected > MAX_REPORTED:
        _say(console, f"  ... and {report.rejected - MAX_REPORTED:,} more")
