"""A person's first answer to a gold item, kept through an undo: agreement with gold is measured
on it, so undoing and answering again cannot raise it.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # JSON {"choice", "ranks"}, or NULL
    op.add_column("assignments", sa.Column("first_answer", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("assignments") as table:
        table.drop_column("first_answer")
