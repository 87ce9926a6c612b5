"""The read-only SQL surface: the views of migrations/versions/0003_sql_views.py keep their documented
columns, every worked query in docs/SQL.md runs and answers what the lab data says, and ``latentlab sql``
refuses writes, several statements and runaway queries with a message and a non-zero exit, writing nothing.
Runs on the backend chosen with --db (SQLite by default, PostgreSQL with --db=postgres)."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from sqlalchemy import func, select

from common.models import User
from common.platform.sqlconsole import SqlRefused, check_statement, run_readonly
from tests.integration.test_cli_research import cli
from tests.support.seeded_map import add_generation, ago, seed_map
from tests.support.services import REPO

VIEW_COLUMNS = {
    "v_datasets": [
        "dataset_id", "name", "model_name", "status", "seed", "steps", "target_size", "num_samples",
        "checkpoint_sha256", "code_version", "created_by", "created_at",
    ],
    "v_samples": [
        "sample_id", "dataset_id", "dataset_name", "origin", "index", "class_label", "noise_seed", "job_id",
        "variation", "created_by", "created_at",
    ],
    "v_embeddings": [
        "embedding_id", "dataset_id", "name", "status", "backend", "num_points", "fit_seconds", "created_by",
        "created_at",
    ],
    "v_points": ["embedding_id", "sample_id", "x", "y", "projected"],
    "v_generations": [
        "sample_id", "generation_id", "embedding_id", "dataset_id", "job_id", "selected_sample_id", "mode",
        "steps", "mask_steps", "noise_seed", "class_mode", "class_label", "center_x", "center_y", "actual_x",
        "actual_y", "distance_to_intended", "roundtrip_error", "checkpoint_sha256", "code_version",
        "created_by", "created_at", "created_day",
    ],
    "v_generation_layers": ["generation_id", "sample_id", "layer"],
    "v_lineage": ["child_id", "parent_id", "role", "weight"],
}  # fmt: skip


def doc_queries() -> dict[str, str]:
    text = (REPO / "docs" / "SQL.md").read_text()
    return dict(re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", text, flags=re.S))


@pytest.fixture
def lab(settings, sessions, admin, member):
    lab = seed_map(sessions, settings, owner_id=admin.id, n=12)
    s = lab.sample_ids
    # a chain: g1 from s0 (+ s1, s2); g2 from g1 (+ s3); g3 from g2 (+ s1) -- by two users on two days
    g1 = add_generation(sessions, settings, lab, owner_id=admin.id, selected=s[0], neighbors=[s[1], s[2]],
                        created_at=ago(days=2))  # fmt: skip
    g2 = add_generation(sessions, settings, lab, owner_id=member.id, selected=g1, neighbors=[s[3]],
                        created_at=ago(days=1))  # fmt: skip
    g3 = add_generation(sessions, settings, lab, owner_id=member.id, selected=g2, neighbors=[s[1]])
    return lab, [g1, g2, g3]


def test_views_have_the_documented_columns(settings, lab):
    for view, columns in VIEW_COLUMNS.items():
        result = run_readonly(settings, f"SELECT * FROM {view}", max_rows=1)
        assert result.columns == columns, view
        assert f"`{view}`" in (REPO / "docs" / "SQL.md").read_text()


def test_views_carry_the_lab_rows(settings, lab):
    lab_, gens = lab
    n = run_readonly(settings, "SELECT COUNT(*) FROM v_samples").rows[0][0]
    assert n == 12 + 3
    rows = run_readonly(settings, "SELECT child_id, parent_id, role, weight FROM v_lineage ORDER BY 1, 3, 2")
    assert (gens[1], gens[0], "selected", 0.0) in rows.rows
    assert (gens[1], lab_.sample_ids[3], "neighbor", 1.0) in rows.rows
    layers = run_readonly(settings, "SELECT sample_id, layer FROM v_generation_layers ORDER BY sample_id")
    assert layers.rows == [(g, "midblock") for g in gens]


def test_every_worked_query_in_the_docs_runs_and_answers(settings, lab):
    lab_, (g1, g2, g3) = lab
    s = lab_.sample_ids
    queries = doc_queries()
    assert set(queries) == {"ancestors", "by_layer", "per_day", "popular_parents"}

    ancestors = run_readonly(settings, queries["ancestors"]).rows
    assert ancestors == [(s[1], 1), (g2, 1), (s[3], 2), (g1, 2), (s[0], 3), (s[2], 3)]

    by_layer = run_readonly(settings, queries["by_layer"])
    assert by_layer.columns == ["layer", "mask_steps", "n", "mean_miss"]
    assert [(r[0], r[1], r[2]) for r in by_layer.rows] == [("midblock", None, 3)]
    assert by_layer.rows[0][3] == pytest.approx(0.35)

    per_day = run_readonly(settings, queries["per_day"]).rows
    assert [(who, n) for who, _day, n in per_day] == [("admin", 1), ("alice", 1), ("alice", 1)]
    assert per_day[1][1] != per_day[2][1]  # two distinct days
    assert str(per_day[0][1]) == ago(days=2).date().isoformat()

    popular = run_readonly(settings, queries["popular_parents"]).rows
    assert popular[0][0] == s[1] and popular[0][2] == 2


@pytest.mark.parametrize(
    "sql, message",
    [
        ("DELETE FROM lineage", "Only read-only queries"),
        ("SELECT 1; DROP TABLE lineage", "Only one statement"),
        ("  -- just a comment\n", "No SQL statement"),
        ("/* hi */ UPDATE users SET role = 'admin'", "not UPDATE"),
    ],
)
def test_statement_check_refuses_what_is_not_one_read(sql, message):
    with pytest.raises(SqlRefused, match=message):
        check_statement(sql)


def test_semicolons_in_strings_and_comments_are_not_statement_breaks():
    assert check_statement("SELECT ';' AS a -- ; trailing\n;") == "SELECT ';' AS a"


def test_a_write_hidden_in_a_with_is_stopped_by_the_database(settings, sessions, lab):
    with pytest.raises(SqlRefused, match="SQL error"):
        run_readonly(settings, "WITH x AS (SELECT 1) DELETE FROM lineage")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 2


def test_row_limit_truncates(settings, lab):
    result = run_readonly(settings, "SELECT sample_id FROM v_samples ORDER BY sample_id", max_rows=5)
    assert len(result.rows) == 5 and result.truncated


def test_secrets_stay_hidden(settings, lab):
    """SQLite: ``latentlab sql`` reads password and token hashes as NULL. PostgreSQL: the read-only role of
    docs/SQL.md, granted exactly as written there, reads the views and nothing underneath, and cannot
    write."""
    if settings.is_sqlite:
        result = run_readonly(settings, "SELECT username, password_hash FROM users ORDER BY id")
        assert result.rows == [("admin", None), ("alice", None)]
        return
    import psycopg

    docs = (REPO / "docs" / "SQL.md").read_text()
    grants = re.search(r"## PostgreSQL: a read-only role.*?```sql\n(.*?)```", docs, flags=re.S).group(1)
    role = f"lab_reader_{uuid.uuid4().hex[:8]}"
    url = settings.sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")
    database = url.rsplit("/", 1)[1]
    grants = grants.replace("lab_reader", role).replace("DATABASE latentlab", f'DATABASE "{database}"')
    with psycopg.connect(url, autocommit=True) as owner:
        for statement in filter(str.strip, grants.split(";")):
            owner.execute(statement)
        try:
            creds = url.split("//", 1)[1].split("@", 1)[1]
            with psycopg.connect(f"postgresql://{role}:choose-one@{creds}", autocommit=True) as reader:
                n = reader.execute("SELECT COUNT(*) FROM v_generations").fetchone()[0]
                assert n == 3
                hidden = ("SELECT password_hash FROM users", "SELECT * FROM jobs", "SELECT * FROM api_tokens")
                for sql in hidden:
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        reader.execute(sql)
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    reader.execute("CREATE TEMP TABLE t (a int)")
        finally:
            owner.execute(f"DROP OWNED BY {role}")
            owner.execute(f"DROP ROLE {role}")


def test_cli_sql_answers_and_refuses(settings, sessions, lab):
    out = cli(settings, "sql", "--format", "json", "SELECT role, COUNT(*) AS n FROM v_lineage GROUP BY role "
              "ORDER BY role")  # fmt: skip
    assert json.loads(out.stdout) == [{"role": "neighbor", "n": 4}, {"role": "selected", "n": 3}]

    for sql, message in [
        ("INSERT INTO lineage VALUES (1, 2, 'neighbor', 0)", "Only read-only queries"),
        ("SELECT 1; SELECT 2", "Only one statement"),
        (
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT COUNT(*) FROM r",
            "time limit",
        ),
    ]:
        proc = cli(settings, "sql", "--timeout", "0.5", sql, check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 2
    assert run_readonly(settings, "SELECT COUNT(*) FROM v_lineage").rows == [(7,)]
