"""``leadback campaigns`` and ``leadback dispatcher`` without a server: what they refuse before
calling anything, which function they run, and the statuses their tables show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from leadback.admin.campaign_schemas import DeliveryCounts
from leadback.cli import app as cli_app
from leadback.dispatcher.ledger import COUNTED, FINAL_STATUSES
from leadback.dispatcher.statuses import DELIVERY_STATUSES
from leadback.settings import Settings


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # In process, the CLI would point structlog at the runner's captured (then closed) stderr.
    monkeypatch.setattr("leadback.cli.common.configure_logging", lambda *_, **__: None)
    monkeypatch.setenv("LEADBACK_DATA_DIR", str(tmp_path / "data"))


def test_the_tables_show_every_status_of_the_ledger() -> None:
    assert set(DELIVERY_STATUSES) == {"sending", "retrying", *FINAL_STATUSES}
    assert len(DELIVERY_STATUSES) == len(set(DELIVERY_STATUSES))
    assert set(COUNTED) <= set(DELIVERY_STATUSES)
    assert tuple(DeliveryCounts.model_fields) == DELIVERY_STATUSES


def test_dispatcher_command_runs_one_member(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[Settings] = []

    async def run_dispatcher(settings: Settings, stop: Any = None) -> None:
        ran.append(settings)

    monkeypatch.setattr("leadback.dispatcher.service.run_dispatcher", run_dispatcher)
    monkeypatch.setenv("LEADBACK_DISPATCHER_GROUP_ID", "dispatchers-test")
    result = CliRunner().invoke(cli_app, ["dispatcher"], env={})
    assert result.exit_code == 0, result.output
    assert [s.dispatcher.group_id for s in ran] == ["dispatchers-test"]


def test_unreadable_documents_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(cli_app, ["campaigns", "apply", "-f", str(missing)], env={})
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"error: cannot read {missing}: No such file or directory\n"

    broken = tmp_path / "broken.yaml"
    broken.write_text("campaigns: [\n")
    result = CliRunner().invoke(cli_app, ["campaigns", "validate", "-f", str(broken)], env={})
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {broken} is not valid YAML or JSON:")
    assert result.stderr.count("\n") == 1


def test_offline_apply_names_the_field_before_touching_the_store(tmp_path: Path) -> None:
    doc = tmp_path / "doc.yaml"
    doc.write_text("campaigns:\n  - {id: Bad Id, site: demo, audience: a, steps: []}\n")
    env = {"LEADBACK_CLICKHOUSE_URL": f"chdb://{tmp_path / 'never-opened'}"}
    result = CliRunner().invoke(
        cli_app, ["campaigns", "apply", "--offline", "-f", str(doc)], env=env
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid_campaign at campaigns[0].id: ")
    assert not (tmp_path / "never-opened").exists()
