"""read-only SQL views for notebooks and `latentlab sql` (docs/SQL.md)

Revision ID: 0003_sql_views
Revises: 0002_token_expiry
Create Date: 2026-12-03 09:45:00

Views over the lab data only (no jobs table, no tokens, no password hashes); their columns are documented
in docs/SQL.md and pinned by tests/integration/test_sql_views.py. A later change to a view is a new
migration that drops and recreates it. Alembic autogenerate reflects tables only, so views cause no drift.
"""

from alembic import op


revision = "0003_sql_views"
down_revision = "0002_token_expiry"
branch_labels = None
depends_on = None


def _day(dialect: str, column: str) -> str:
    return f"date({column})" if dialect == "sqlite" else f"CAST(({column} AT TIME ZONE 'UTC') AS DATE)"


def _layers(dialect: str) -> str:
    if dialect == "sqlite":
        return (
            "SELECT g.id AS generation_id, g.sample_id AS sample_id, CAST(l.value AS TEXT) AS layer "
            "FROM generations g, json_each(g.layers) l"
        )
    return (
        "SELECT g.id AS generation_id, g.sample_id AS sample_id, l.value AS layer "
        "FROM generations g CROSS JOIN LATERAL json_array_elements_text(g.layers) AS l(value)"
    )


def views(dialect: str) -> dict[str, str]:
    return {
        "v_datasets": """
            SELECT d.id AS dataset_id, d.name AS name, m.name AS model_name, d.status AS status,
                   d.seed AS seed, d.steps AS steps, d.target_size AS target_size,
                   (SELECT COUNT(*) FROM samples s WHERE s.dataset_id = d.id AND s.origin = 'dataset')
                       AS num_samples,
                   d.checkpoint_sha256 AS checkpoint_sha256, d.code_version AS code_version,
                   u.username AS created_by, d.created_at AS created_at
            FROM datasets d JOIN models m ON m.id = d.model_id LEFT JOIN users u ON u.id = d.owner_id""",
        "v_samples": """
            SELECT s.id AS sample_id, s.dataset_id AS dataset_id, d.name AS dataset_name, s.origin AS origin,
                   s."index" AS "index", s.class_label AS class_label, s.noise_seed AS noise_seed,
                   s.job_id AS job_id, s.variation AS variation, u.username AS created_by,
                   s.created_at AS created_at
            FROM samples s JOIN datasets d ON d.id = s.dataset_id LEFT JOIN users u ON u.id = s.created_by_id""",
        "v_embeddings": """
            SELECT e.id AS embedding_id, e.dataset_id AS dataset_id, e.name AS name, e.status AS status,
                   e.backend AS backend, e.num_points AS num_points, e.fit_seconds AS fit_seconds,
                   u.username AS created_by, e.created_at AS created_at
            FROM embeddings e LEFT JOIN users u ON u.id = e.owner_id""",
        "v_points": """
            SELECT p.embedding_id AS embedding_id, p.sample_id AS sample_id, p.x AS x, p.y AS y,
                   p.projected AS projected
            FROM embedding_points p""",
        "v_generations": f"""
            SELECT g.sample_id AS sample_id, g.id AS generation_id, g.embedding_id AS embedding_id,
                   s.dataset_id AS dataset_id, g.job_id AS job_id, g.selected_sample_id AS selected_sample_id,
                   g.mode AS mode, g.steps AS steps, g.mask_steps AS mask_steps, g.noise_seed AS noise_seed,
                   g.class_mode AS class_mode, g.class_label AS class_label,
                   g.center_x AS center_x, g.center_y AS center_y, g.actual_x AS actual_x,
                   g.actual_y AS actual_y, g.distance_to_intended AS distance_to_intended,
                   g.roundtrip_error AS roundtrip_error, g.checkpoint_sha256 AS checkpoint_sha256,
                   g.code_version AS code_version, u.username AS created_by, g.created_at AS created_at,
                   {_day(dialect, "g.created_at")} AS created_day
            FROM generations g JOIN samples s ON s.id = g.sample_id
            LEFT JOIN users u ON u.id = g.created_by_id""",
        "v_generation_layers": _layers(dialect),
        "v_lineage": """
            SELECT l.child_id AS child_id, l.parent_id AS parent_id, l.role AS role, l.weight AS weight
            FROM lineage l""",
    }


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, body in views(dialect).items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(views(op.get_bind().dialect.name))):
        op.execute(f"DROP VIEW IF EXISTS {name}")
