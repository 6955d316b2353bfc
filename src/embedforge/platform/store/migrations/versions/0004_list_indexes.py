"""list indexes: a kind's rows by creation time (the default newest-first page reads the index)

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
