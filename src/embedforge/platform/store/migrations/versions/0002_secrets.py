"""secrets: keys given in request bodies, kept apart from the bodies the API returns

Bodies stored before this revision get the same treatment as new ones: their keys move to the new
table and the bodies keep masks.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from embedforge.platform.store.secret_store import split

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    secrets = op.create_table(
        "secrets",
        sa.Column("owner_id", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(512), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    for name in ("entities", "jobs"):
        _move_keys(sa.table(name, sa.column("id", sa.String), sa.column("body", sa.JSON)), secrets)


def _move_keys(table, secrets) -> None:
    """Mask the keys in every stored body of ``table`` and keep the values in ``secrets``."""
    bind = op.get_bind()
    for row_id, body in bind.execute(sa.select(table.c.id, table.c.body)).all():
        masked, found = split(body or {})
        if found:
            bind.execute(table.update().where(table.c.id == row_id).values(body=masked))
            op.bulk_insert(secrets, [{"owner_id": row_id, "path": p, "value": v} for p, v in found.items()])


def downgrade() -> None:
    op.drop_table("secrets")
