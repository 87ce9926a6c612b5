"""datasets.micro_batch: samples per model call, aligned to absolute sample indices (existing: 1)

Revision ID: 0004_micro_batch
Revises: 0003_sql_views
Create Date: 2026-12-03 12:50:00

Micro-batch m of a dataset covers sample indices [m·b, (m+1)·b). Datasets made before this column were
generated one sample per model call on CPU, so they get b = 1 and keep growing the way they were made.
"""

from alembic import op
import sqlalchemy as sa


revision = "0004_micro_batch"
down_revision = "0003_sql_views"
branch_labels = None
depends_on = None


# a plain ALTER TABLE (no batch copy of the table on SQLite: the read-only views of 0003 name it)
def upgrade() -> None:
    op.add_column(
        "datasets", sa.Column("micro_batch", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )


def downgrade() -> None:
    op.drop_column("datasets", "micro_batch")
