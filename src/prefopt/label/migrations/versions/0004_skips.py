"""Skips: a person may pass on an item, with a reason; it is never handed to them again.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assignments") as table:  # SQLite alters tables by copying them
        table.add_column(sa.Column("skipped", sa.String(500)))


def downgrade() -> None:
    with op.batch_alter_table("assignments") as table:
        table.drop_column("skipped")
