"""Items are identified by their content (a hash of prompt and completions), not by where they
were read: serving the same file by another path adds nothing, and a changed row is a new item.

Revision ID: 0002
Revises: 0001
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("content", sa.String(64)))
    items = sa.table(
        "items",
        sa.column("id", sa.Integer),
        sa.column("prompt", sa.Text),
        sa.column("completions", sa.Text),
        sa.column("content", sa.String),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(items.c.id, items.c.prompt, items.c.completions)).all()
    for (
        item_id,
        prompt,
        completions,
    ) in rows:  # the store's content key, written out here so it never drifts
        text = json.dumps(
            [json.loads(prompt), json.loads(completions)], ensure_ascii=False, sort_keys=True
        )
        connection.execute(
            items.update()
            .where(items.c.id == item_id)
            .values(content=hashlib.sha256(text.encode()).hexdigest())
        )
    op.create_index("ix_items_content", "items", ["content"])


def downgrade() -> None:
    op.drop_index("ix_items_content", "items")
    op.drop_column("items", "content")
