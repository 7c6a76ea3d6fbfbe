from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import keybroker.models  # noqa: F401  (registers the tables)

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things in place
        # One transaction per migration, so that a migration can commit as it goes
        # (autocommit_block): 0008 builds rollups from millions of rows in short batches.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()
