"""Tasks on one answer beside rankings: an item's task (rank, thumbs, rating, edit) and its
rating scale; a label's value for them (the verdict, the rating or the edited answer).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("task", sa.String(10), nullable=False, server_default="rank"))
    op.add_column("items", sa.Column("scale", sa.Text))  # JSON {point: anchor text}, ratings only
    # JSON {"label": bool} | {"rating": n} | {"edited": text}; NULL for rankings
    op.add_column("labels", sa.Column("value", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("labels") as table:
        table.drop_column("value")
    with op.batch_alter_table("items") as table:
        table.drop_column("scale")
        table.drop_column("task")
