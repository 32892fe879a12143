"""README.md documents every setting: its one settings table is what the parsers generate.

Edge cases: a new option of `kvmtimer node`/`controller` or of the client commands (telemetry,
TLS, discovery...) makes this fail until `python -m controller.cli.settings_doc --write` is run;
the table does not depend on KVMTIMER_* variables of the environment running the tests; the
block markers exist exactly once.
"""

from __future__ import annotations

import pytest

from controller.cli import settings_doc


def test_readme_table_is_up_to_date() -> None:
    text = settings_doc.README.read_text()
    assert text.count(settings_doc.BEGIN) == 1 and text.count(settings_doc.END) == 1
    assert settings_doc.replace_block(text, settings_doc.markdown()) == text, (
        "README.md settings table is stale: run `python -m controller.cli.settings_doc --write`"
    )


def test_table_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = settings_doc.markdown()
    monkeypatch.setenv("KVMTIMER_CONTROLLER", "elsewhere:1")
    monkeypatch.setenv("KVMTIMER_ECV", "2")
    assert settings_doc.markdown() == before


def test_every_environment_variable_has_a_row() -> None:
    table = settings_doc.markdown()
    for row in settings_doc.rows():
        assert f"`{row.env}`" in table
    assert "`KVMTIMER_DISCOVER_DNS`" in table and "`KVMTIMER_TLS_CA`" in table


# Rows written out by hand: the generator must produce exactly these (a generator that drops
# options, mislabels commands or renders defaults wrongly fails here even when it agrees with
# a README it wrote itself).
KNOWN_ROWS = (
    " | ".join(
        (
            "| `--node-id NODE_ID`",
            "`KVMTIMER_NODE_ID`",
            "`node_id`",
            "node",
            "`node-0`",
            "name of this host in the cluster |",
        )
    ),
    " | ".join(
        (
            "| `--insecure`",
            "`KVMTIMER_INSECURE`",
            "`insecure`",
            "node, controller, client",
            "off",
            "allow plaintext gRPC on a non-loopback address (default: refused without TLS) |",
        )
    ),
    " | ".join(
        (
            "| `--controller CONTROLLER`",
            "`KVMTIMER_CONTROLLER`",
            "`controller`",
            "client",
            "`127.0.0.1:7070`",
            "controller HOST:PORT (default: $KVMTIMER_CONTROLLER, else 127.0.0.1:7070) |",
        )
    ),
)


@pytest.mark.parametrize("row", KNOWN_ROWS)
def test_generator_renders_known_rows_exactly(row: str) -> None:
    assert row in settings_doc.markdown().split("\n")


def test_a_missing_row_makes_the_readme_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    text = settings_doc.README.read_text()
    full = settings_doc.rows()
    monkeypatch.setattr(settings_doc, "rows", lambda: full[:-1])
    assert settings_doc.replace_block(text, settings_doc.markdown()) != text
