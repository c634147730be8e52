"""Gold items: items with a known answer, mixed into each person's queue to measure how well they
agree with it.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("gold", sa.Text))  # JSON: the known ranks (1 = best), or NULL


def downgrade() -> None:
    with op.batch_alter_table("items") as table:
        table.drop_column("gold")
