"""model families: models.family ('edm' or 'diffusers') and datasets.conditioning (prompts, guidance, size)

Revision ID: 0005_model_family
Revises: 0004_micro_batch
Create Date: 2026-12-04 12:50:00

Every existing model is an EDM model (server default 'edm'); an existing dataset has no text conditioning
(NULL). See common/ml/families/__init__.py.
"""

from alembic import op
import sqlalchemy as sa


revision = "0005_model_family"
down_revision = "0004_micro_batch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("family", sa.String(length=32), nullable=False, server_default="edm"))
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conditioning", sa.JSON(), nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL): a batch copy of the table would break
    # the SQL views over it (0003_sql_views)
    op.execute("ALTER TABLE datasets DROP COLUMN conditioning")
    op.execute("ALTER TABLE models DROP COLUMN family")
