"""interventions: step windows, strength, steering directions, natural twins and their readout, sweeps

Revision ID: 0006_interventions
Revises: 0005_model_family
Create Date: 2026-12-03 13:00:00

generations gains the intervention (mask_window, strength, intervention), the readout against the natural
twin (readout, effect, image_change, twin_image_path, twin_x, twin_y) and its sweep (sweep_id, sweep_cell);
mode 'direction' and lineage role 'negative' join the checks; a sweeps table holds a grid run as one job.
Old rows keep nulls: a full-strength clamp of mask_steps, without a twin.

SQLite rebuilds a table to change a check; the read-only views of 0003 name these tables, and SQLite's
rename refuses a table a view refers to while the old one is gone, so the rebuild runs with
``legacy_alter_table`` on (the views keep referring to the table by name).
"""

from alembic import op
import sqlalchemy as sa


revision = "0006_interventions"
down_revision = "0005_model_family"
branch_labels = None
depends_on = None

OLD_MODES = "mode IN ('activation_mean', 'umap_inverse', 'weighted')"
NEW_MODES = "mode IN ('activation_mean', 'umap_inverse', 'weighted', 'direction')"
OLD_ROLES = "role IN ('selected', 'neighbor')"
NEW_ROLES = "role IN ('selected', 'neighbor', 'negative')"


def _legacy_alter(on: bool) -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"PRAGMA legacy_alter_table = {'ON' if on else 'OFF'}")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("embedding_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column("cells", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["embedding_id"], ["embeddings.id"], name=op.f("fk_sweeps_embedding_id_embeddings"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_sweeps_job_id_jobs"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_sweeps_owner_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sweeps_embedding_id"), ["embedding_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_job_id"), ["job_id"], unique=False)

    _legacy_alter(True)
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mask_window", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("strength", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("intervention", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("readout", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("effect", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("image_change", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("twin_image_path", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("twin_x", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("twin_y", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("sweep_cell", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_generations_sweep_id"), ["sweep_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_generations_sweep_id_sweeps"), "sweeps", ["sweep_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.drop_constraint(batch_op.f("ck_generations_mode"), type_="check")
        batch_op.create_check_constraint("mode", NEW_MODES)
    with op.batch_alter_table("lineage", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_lineage_role"), type_="check")
        batch_op.create_check_constraint("role", NEW_ROLES)
    _legacy_alter(False)


def downgrade() -> None:
    op.execute("DELETE FROM lineage WHERE role = 'negative'")
    op.execute("DELETE FROM generations WHERE mode = 'direction'")
    _legacy_alter(True)
    with op.batch_alter_table("lineage", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_lineage_role"), type_="check")
        batch_op.create_check_constraint("role", OLD_ROLES)
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_generations_mode"), type_="check")
        batch_op.create_check_constraint("mode", OLD_MODES)
        batch_op.drop_constraint(batch_op.f("fk_generations_sweep_id_sweeps"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_generations_sweep_id"))
        for column in (
            "sweep_cell", "sweep_id", "twin_y", "twin_x", "twin_image_path", "image_change", "effect",
            "readout", "intervention", "strength", "mask_window",
        ):
            batch_op.drop_column(column)
    _legacy_alter(False)
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweeps_job_id"))
        batch_op.drop_index(batch_op.f("ix_sweeps_embedding_id"))
    op.drop_table("sweeps")
