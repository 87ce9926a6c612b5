"""API tokens may expire: api_tokens.expires_at (null: never)

Revision ID: 0002_token_expiry
Revises: 0001_initial_schema
Create Date: 2026-12-03 09:50:00
"""

from alembic import op
import sqlalchemy as sa


revision = "0002_token_expiry"
down_revision = "0001_initial_schema"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
