"""``keybroker keys rewrap``: move every sealed record to the active master key.

Resumable: rows are committed in small batches and a row already under the active kid is
skipped, so an interrupted run is simply run again. Only the outer layer of a grant copy is
touched; the inner layer needs the app's token, which keybroker never stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session, col

from keybroker.crypto import vault
from keybroker.crypto.keyring import KeyRing, UnknownKidError
from keybroker.crypto.tokens import rewrap_grant_copy
from keybroker.models import Grant, VaultEntry
from keybroker.provider_keys import binding, master_slot

BATCH = 100


@dataclass(frozen=True)
class SealedTable:
    label: str
    model: Any
    rewrap: Callable[[Any, KeyRing], str]
    column: str


@dataclass
class RewrapReport:
    rewrapped: dict[str, int] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def _rewrap_vault(row: VaultEntry, ring: KeyRing) -> str:
    assert row.sealed is not None  # rows without a master slot (strict custody) are skipped
    if row.format == 1:
        return vault.rewrap(row.sealed, ring, expected_binding=binding(row.user_id))
    return vault.rewrap(row.sealed, ring, expected_binding=master_slot(row.user_id))


def _rewrap_grant_copy(row: Grant, ring: KeyRing) -> str:
    assert row.sealed_copy is not None
    return rewrap_grant_copy(row.sealed_copy, row.id, ring)


TABLES: list[SealedTable] = [
    SealedTable("vault entries", VaultEntry, _rewrap_vault, "sealed"),
    # Revoked grants have no copy (kid NULL) and are skipped.
    SealedTable("grant copies", Grant, _rewrap_grant_copy, "sealed_copy"),
]


def rewrap_all(
    engine: Engine, ring: KeyRing, tables: list[SealedTable] | None = None
) -> RewrapReport:
    report = RewrapReport()
    for table in tables or TABLES:
        model = table.model
        done = current = 0
        last_id = ""
        while True:
            with Session(engine) as db:
                rows = list(
                    db.execute(
                        select(model)
                        .where(col(model.id) > last_id, col(model.kid).is_not(None))
                        .order_by(col(model.id))
                        .limit(BATCH)
                    ).scalars()
                )
                if not rows:
                    break
                for row in rows:
                    last_id = row.id
                    if row.kid == ring.active_kid:
                        current += 1
                        continue
                    try:
                        setattr(row, table.column, table.rewrap(row, ring))
                    except (UnknownKidError, vault.SealedRecordError) as exc:
                        report.failed.append(f"{table.label} {row.id}: {exc}")
                        continue
                    row.kid = ring.active_kid
                    db.add(row)
                    done += 1
                db.commit()
        report.rewrapped[table.label] = done
        report.current[table.label] = current
    return report
