"""list indexes: (kind, created_at) on entities and jobs

A list page sorts one kind's rows by creation time; without an index the database reads every row of
the kind (bodies and loss curves included) to sort them before it can cut the page.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
TABLES = ("entities", "jobs")


def upgrade() -> None:
    for table in TABLES:
        op.create_index(f"ix_{table}_kind_created_at", table, ["kind", "created_at"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_kind_created_at", table_name=table)
