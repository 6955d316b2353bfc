"""list indexes: a kind's rows by creation time (the default newest-first page reads the index)

A list page sorts one kind's rows by creation time; without an index the database reads every row of
the kind (bodies and loss curves included) to sort them before it can cut the page.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.create_index("ix_entities_kind_created_at", "entities", ["kind", "created_at"])
    op.create_index("ix_jobs_kind_created_at", "jobs", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_kind_created_at", "jobs")
    op.drop_index("ix_entities_kind_created_at", "entities")
