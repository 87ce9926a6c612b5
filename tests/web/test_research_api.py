"""The research-loop API's read side and its rules (auth, CSRF, validation, points encoding and caching,
images, history filters, overlays), through Flask's test client against a real migrated database and a
real redis-server, with lab data written straight into the database (no worker runs)."""

from __future__ import annotations

import base64
import gzip
import json
import os

import numpy as np
import pytest
from sqlalchemy import func, select

from common.models import Embedding, Job, Sample
from common.platform.accounts import create_user
from tests.support.seeded_map import add_generation, ago, seed_map
from web import points_cache

DTYPES = {"int32": np.int32, "float32": np.float32, "int16": np.int16, "uint8": np.uint8}


@pytest.fixture
def bob_user(sessions):
    with sessions.begin() as s:
        return create_user(s, "bob", "bob-password")


@pytest.fixture
def lab(sessions, settings, member, bob_user):
    lab = seed_map(sessions, settings, owner_id=member.id, n=30)
    ids = lab.sample_ids
    add_generation(
        sessions,
        settings,
        lab,
        owner_id=member.id,
        selected=ids[0],
        neighbors=ids[1:4],
        class_label=1,
        created_at=ago(days=3),
    )
    add_generation(
        sessions,
        settings,
        lab,
        owner_id=bob_user.id,
        selected=ids[5],
        neighbors=ids[6:8],
        mode="umap_inverse",
        class_label=2,
        created_at=ago(hours=1),
    )
    return lab


def decode(points: dict) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(base64.b64decode(col["data"]), dtype=DTYPES[col["dtype"]])
        for name, col in points["columns"].items()
    }


def count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


RESEARCH_GETS = [
    "/api/v1/models",
    "/api/v1/datasets",
    "/api/v1/datasets/1",
    "/api/v1/datasets/1/samples",
    "/api/v1/embeddings",
    "/api/v1/embeddings/1",
    "/api/v1/embeddings/1/points",
    "/api/v1/embeddings/1/neighbors?sample=1",
    "/api/v1/embeddings/1/generations",
    "/api/v1/embeddings/1/effects",
    "/api/v1/samples/1",
    "/api/v1/samples/1/image",
    "/api/v1/samples/1/lineage",
    "/api/v1/history",
    "/api/v1/queues",
    "/api/v1/events",
]


@pytest.mark.parametrize("path", RESEARCH_GETS)
def test_every_research_read_needs_a_signed_in_user(client, path):
    res = client.get(path)
    assert res.status_code == 401 and "sign in" in res.json["error"]


@pytest.mark.parametrize("path", ["/api/v1/datasets", "/api/v1/embeddings", "/api/v1/generations"])
def test_every_research_submit_needs_a_signed_in_user_and_writes_nothing(client, sessions, lab, path):
    res = client.post(path, json={})
    assert res.status_code == 401
    assert count(sessions, Job) == 0


def test_cookie_session_generation_needs_the_csrf_token(client, sessions, member, lab):
    signed = client.post("/api/v1/auth/login", json={"username": "alice", "password": "alice-password"})
    body = {"embedding": lab.embedding_id, "selected": lab.sample_ids[0], "neighbors": lab.sample_ids[1:3]}
    res = client.post("/api/v1/generations", json=body)
    assert res.status_code == 400 and "CSRF" in res.json["error"]
    assert count(sessions, Job) == 0
    res = client.post("/api/v1/generations", json=body, headers={"X-CSRFToken": signed.json["csrf_token"]})
    assert res.status_code == 202, res.json
    assert res.json["kind"] == "generate_from_neighbors" and res.json["owner"] == "alice"
    assert res.headers["Location"] == f"/api/v1/jobs/{res.json['id']}"
    assert res.json["status"] == "queued" and res.json["position"] == 1
    assert (
        res.json["params"]["neighbors"] == lab.sample_ids[1:3] and res.json["params"]["class"] == "selected"
    )


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"neighbors": []}, "neighbors", "at least 1"),
        ({"variations": 65}, "variations", "64"),
        ({"layers": ["nope"]}, "layers", "Cannot mask"),
        ({"class": 7}, "class", "out of range"),
        ({"embedding": 999}, "embedding", "No embedding"),
        ({"selected": 10**6}, "selected", "not on embedding"),
        ({"mode": "weighted"}, None, "weights"),
        ({"surprise": 1}, "surprise", "not a known field"),
        ({"target": [1.0, 2.0]}, None, "only used with mode 'umap_inverse'"),
        ({"mode": "umap_inverse", "target": [1.0]}, "target", "at least 2"),
        ({"mode": "umap_inverse", "target": ["x", 1]}, "target.0", "number"),
    ],
)
def test_bad_generation_bodies_answer_400_naming_the_field_and_write_nothing(
    client, sessions, alice, lab, body, field, words
):
    base = {"embedding": lab.embedding_id, "selected": lab.sample_ids[0], "neighbors": lab.sample_ids[1:3]}
    res = client.post("/api/v1/generations", json={**base, **body}, headers=alice)
    assert res.status_code in (400, 404), res.json
    assert words in res.json["error"]
    assert res.json.get("field") == field
    assert count(sessions, Job) == 0


def test_bad_dataset_and_embedding_bodies_name_the_body_field(client, sessions, alice, lab):
    res = client.post(
        "/api/v1/datasets", json={"model": "model-fake", "name": "x", "num_samples": 0}, headers=alice
    )
    assert res.status_code == 400 and res.json["field"] == "num_samples"
    res = client.post(
        "/api/v1/datasets",
        json={"model": "model-fake", "name": "new", "num_samples": 5, "layers": ["nope"]},
        headers=alice,
    )
    assert res.status_code == 400 and res.json["field"] == "layers"
    assert "unknown layer(s) nope; valid layers:" in res.json["error"]
    for bad in (0, 4096):
        res = client.post(
            "/api/v1/datasets",
            json={"model": "model-fake", "name": "new", "num_samples": 5, "micro_batch": bad},
            headers=alice,
        )
        assert res.status_code == 400 and res.json["field"] == "micro_batch", res.json
    res = client.post("/api/v1/embeddings", json={"dataset": "fake", "pca_dims": 4000}, headers=alice)
    assert res.status_code == 400 and res.json["field"] == "pca_dims", res.json
    assert count(sessions, Job) == 0 and count(sessions, Embedding) == 1


def test_models_datasets_and_class_counts(client, alice, lab):
    models = client.get("/api/v1/models", headers=alice).json["models"]
    assert [m["name"] for m in models] == ["model-fake"] and models[0]["label_names"][0] == "class-0"
    layers = {layer["name"]: layer for layer in models[0]["layers"]}
    assert {"encoder_bottleneck", "midblock"} <= set(layers) and len(layers["midblock"]["shape"]) == 3
    datasets = client.get("/api/v1/datasets", headers=alice).json["datasets"]
    assert [d["name"] for d in datasets] == ["fake"]
    assert datasets[0]["num_samples"] == 30 and datasets[0]["num_generated"] == 2
    one = client.get(f"/api/v1/datasets/{lab.dataset_id}", headers=alice).json
    assert one["class_counts"] == {"0": 10, "1": 10, "2": 10}
    assert one["micro_batch"] == 1 and one["chunk_size"] > 0  # a dataset made one sample per call
    missing = client.get("/api/v1/datasets/999", headers=alice)
    assert missing.status_code == 404 and "No dataset" in missing.json["error"]


def test_dataset_samples_page_and_filter(client, alice, lab):
    url = f"/api/v1/datasets/{lab.dataset_id}/samples"
    page = client.get(f"{url}?limit=4&offset=2", headers=alice).json
    assert page["total"] == 32 and [s["id"] for s in page["samples"]] == lab.sample_ids[2:6]
    assert page["samples"][0]["image_url"] == f"/api/v1/samples/{lab.sample_ids[2]}/image"
    generated = client.get(f"{url}?origin=generated", headers=alice).json
    assert generated["total"] == 2 and {s["id"] for s in generated["samples"]} == set(lab.generated_ids)
    classed = client.get(f"{url}?class=1&origin=dataset", headers=alice).json
    assert classed["total"] == 10 and all(s["class_label"] == 1 for s in classed["samples"])
    for query, field in (
        ("limit=501", "limit"),
        ("limit=0", "limit"),
        ("origin=x", "origin"),
        ("class=a", "class"),
    ):
        res = client.get(f"{url}?{query}", headers=alice)
        assert res.status_code == 400 and res.json["field"] == field, (query, res.json)


def test_embeddings_list_filter_and_detail(client, alice, lab, sessions, settings, member):
    other = seed_map(sessions, settings, owner_id=member.id, n=5, name="other", images=False)
    listed = client.get("/api/v1/embeddings", headers=alice).json["embeddings"]
    assert [e["id"] for e in listed] == [other.embedding_id, lab.embedding_id]
    only = client.get(f"/api/v1/embeddings?dataset={lab.dataset_id}", headers=alice).json["embeddings"]
    assert [e["id"] for e in only] == [lab.embedding_id]
    one = client.get(f"/api/v1/embeddings/{lab.embedding_id}", headers=alice).json
    assert one["label_names"] == ["class-0", "class-1", "class-2"] and one["dataset_name"] == "fake"
    assert client.get("/api/v1/embeddings/999", headers=alice).status_code == 404


def test_points_decode_to_the_map_with_generated_points_marked(client, alice, lab):
    res = client.get(f"/api/v1/embeddings/{lab.embedding_id}/points", headers=alice)
    assert res.status_code == 200 and res.mimetype == "application/json"
    assert res.headers["Cache-Control"] == "private, no-cache"
    body = res.json
    cols = decode(body)
    assert body["n"] == 32 and all(len(c) == 32 for c in cols.values())
    assert body["etag"] and res.headers["ETag"] == f'"{body["etag"]}"'
    assert body["label_names"] == ["class-0", "class-1", "class-2"]
    assert list(cols["id"]) == sorted(lab.sample_ids + lab.generated_ids)
    by_id = dict(zip(cols["id"].tolist(), range(32), strict=True))
    for i, sid in enumerate(lab.sample_ids):
        row = by_id[sid]
        assert (cols["x"][row], cols["y"][row]) == (np.float32(i), np.float32(i % 7))
        assert cols["class"][row] == i % 3 and cols["origin"][row] == 0 and cols["projected"][row] == 0
    for sid in lab.generated_ids:
        assert cols["origin"][by_id[sid]] == 1 and cols["projected"][by_id[sid]] == 1
    assert body["bounds"] == [0.0, 29.0, 0.0, 6.0]


def test_points_answer_304_while_unchanged_and_a_new_etag_after_a_point_is_added(
    client, alice, lab, sessions, settings, member
):
    cache = points_cache.cache_for(client.application)
    url = f"/api/v1/embeddings/{lab.embedding_id}/points"
    first = client.get(url, headers=alice)
    etag = first.headers["ETag"]
    reads = (cache.full_reads, cache.tail_reads)
    again = client.get(url, headers={**alice, "If-None-Match": etag})
    assert again.status_code == 304 and again.headers["ETag"] == etag and again.data == b""
    assert client.get(url, headers={**alice, "If-None-Match": f"W/{etag}"}).status_code == 304
    cached = client.get(url, headers=alice)
    assert cached.data == first.data and (cache.full_reads, cache.tail_reads) == reads
    add_generation(
        sessions, settings, lab, owner_id=member.id, selected=lab.sample_ids[0], neighbors=lab.sample_ids[1:2]
    )
    changed = client.get(url, headers={**alice, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag and changed.json["n"] == 33
    # only the new point was read, and the answer is what a fresh read of the whole map gives
    assert (cache.full_reads, cache.tail_reads) == (reads[0], reads[1] + 1)
    client.application.extensions[points_cache.CACHE_KEY] = points_cache.PointsCache()
    try:
        fresh = client.get(url, headers=alice)
    finally:
        client.application.extensions[points_cache.CACHE_KEY] = cache
    assert fresh.data == changed.data and fresh.headers["ETag"] == changed.headers["ETag"]


def test_points_kept_on_disk_serve_a_restarted_server_without_reading_the_map_again(
    client, alice, lab, sessions, settings, member
):
    url = f"/api/v1/embeddings/{lab.embedding_id}/points?format=binary"
    first = client.get(url, headers=alice)
    folder = settings.data_root / "cache" / "points"
    cache = points_cache.cache_for(client.application)
    cache.wait_for_disk()  # written in the background, after the answer
    assert len(list(folder.glob(f"emb-{lab.embedding_id}-*.llpt"))) == 1
    try:
        restarted = points_cache.PointsCache(disk=folder)  # what a new server process starts with
        client.application.extensions[points_cache.CACHE_KEY] = restarted
        again = client.get(url, headers=alice)
        assert again.data == first.data
        assert (restarted.disk_reads, restarted.full_reads, restarted.tail_reads) == (1, 0, 0)
        # points added while the server was down: the file's copy plus only the new rows
        add_generation(
            sessions,
            settings,
            lab,
            owner_id=member.id,
            selected=lab.sample_ids[0],
            neighbors=lab.sample_ids[1:2],
        )
        restarted = points_cache.PointsCache(disk=folder)
        client.application.extensions[points_cache.CACHE_KEY] = restarted
        grown = client.get(url, headers=alice)
        restarted.wait_for_disk()
        assert decode_binary(grown.data)[0]["n"] == 33
        assert (restarted.disk_reads, restarted.full_reads, restarted.tail_reads) == (1, 0, 1)
        # an unreadable file is ignored: the map is read whole
        for path in folder.glob("*.llpt"):
            path.write_bytes(b"not an array")
        restarted = points_cache.PointsCache(disk=folder)
        client.application.extensions[points_cache.CACHE_KEY] = restarted
        assert client.get(url, headers=alice).data == grown.data and restarted.full_reads == 1
    finally:
        client.application.extensions[points_cache.CACHE_KEY] = cache


def test_points_after_a_removal_are_read_whole_and_get_a_new_etag(client, alice, lab, sessions):
    cache = points_cache.cache_for(client.application)
    url = f"/api/v1/embeddings/{lab.embedding_id}/points"
    before = client.get(url, headers=alice)
    with sessions.begin() as s:
        s.delete(s.get(Sample, lab.sample_ids[7]))  # its point goes with it (ON DELETE CASCADE)
    full = cache.full_reads
    after = client.get(url, headers={**alice, "If-None-Match": before.headers["ETag"]})
    assert after.status_code == 200 and after.json["n"] == 31 and cache.full_reads == full + 1
    assert lab.sample_ids[7] not in decode(after.json)["id"].tolist()


def test_points_are_gzipped_when_the_client_accepts_it(client, alice, lab):
    url = f"/api/v1/embeddings/{lab.embedding_id}/points"
    plain = client.get(url, headers=alice)
    zipped = client.get(url, headers={**alice, "Accept-Encoding": "gzip, deflate"})
    assert zipped.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in zipped.headers["Vary"]
    assert gzip.decompress(zipped.data) == plain.data
    refused = client.get(url, headers={**alice, "Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers


BINARY_DTYPES = {**DTYPES, "uint16": np.uint16}


def decode_binary(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The binary points body (docs/API.md "Points format") as (header, columns)."""
    assert data[:4] == b"LLPT"
    size = int.from_bytes(data[4:8], "little")
    header = json.loads(data[8 : 8 + size])
    base = 8 + size
    assert base % 8 == 0
    cols = {}
    for col in header["columns"]:
        assert col["offset"] % 8 == 0
        cols[col["name"]] = np.frombuffer(
            data, dtype=BINARY_DTYPES[col["dtype"]], count=header["n"], offset=base + col["offset"]
        )
    return header, cols


def test_binary_points_hold_the_json_columns_and_owner_job_depth_by_format_or_accept(
    client, alice, lab, sessions, settings, member
):
    url = f"/api/v1/embeddings/{lab.embedding_id}/points"
    # a generation from a generated sample: depth 2
    deep = add_generation(
        sessions,
        settings,
        lab,
        owner_id=member.id,
        selected=lab.generated_ids[0],
        neighbors=lab.sample_ids[:1],
    )
    as_json = client.get(url, headers=alice)
    res = client.get(f"{url}?format=binary", headers=alice)
    assert res.status_code == 200 and res.mimetype == "application/vnd.latentlab.points"
    assert "Content-Encoding" not in res.headers and "Accept" in res.headers["Vary"]
    header, cols = decode_binary(res.data)
    assert header["n"] == 33 and header["etag"] and res.headers["ETag"] == f'"{header["etag"]}"'
    assert res.headers["ETag"] != as_json.headers["ETag"]  # one URL, two bodies: two tags
    assert header["bounds"] == as_json.json["bounds"] and header["label_names"] == [
        "class-0",
        "class-1",
        "class-2",
    ]
    for name, column in decode(as_json.json).items():
        assert np.array_equal(cols[name], column), name
    by_id = dict(zip(cols["id"].tolist(), range(33), strict=True))
    bob = next(int(k) for k, v in header["owners"].items() if v == "bob")
    assert header["owners"][str(member.id)] == "alice"
    assert [int(cols["depth"][by_id[i]]) for i in (lab.sample_ids[0], *lab.generated_ids)] == [0, 1, 1, 2]
    assert int(cols["owner"][by_id[lab.generated_ids[1]]]) == bob
    assert int(cols["owner"][by_id[deep]]) == member.id and int(cols["job"][by_id[deep]]) == -1
    assert np.isnan(cols["rt_error"][by_id[deep]])
    # Accept names the binary type: binary; */* stays JSON; If-None-Match answers 304 per format
    accepted = client.get(url, headers={**alice, "Accept": "application/vnd.latentlab.points"})
    assert accepted.data == res.data
    assert client.get(url, headers={**alice, "Accept": "*/*"}).mimetype == "application/json"
    again = client.get(f"{url}?format=binary", headers={**alice, "If-None-Match": res.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    bad = client.get(f"{url}?format=csv", headers=alice)
    assert bad.status_code == 400 and bad.json["field"] == "format"


def test_an_empty_map_has_no_bounds(client, alice, lab, sessions):
    with sessions.begin() as s:
        emb = Embedding(
            dataset_id=lab.dataset_id,
            name="fitting",
            layers=["midblock"],
            params={},
            status="fitting",
            owner_id=1,
        )
        s.add(emb)
        s.flush()
        emb_id = emb.id
    body = client.get(f"/api/v1/embeddings/{emb_id}/points", headers=alice).json
    assert body["n"] == 0 and body["bounds"] is None
    res = client.get(f"/api/v1/embeddings/{emb_id}/neighbors?sample={lab.sample_ids[0]}", headers=alice)
    assert res.status_code == 400 and res.json["field"] == "embedding" and "fitting" in res.json["error"]


def test_neighbors_on_the_map_nearest_first(client, alice, lab):
    ids = lab.sample_ids
    url = f"/api/v1/embeddings/{lab.embedding_id}/neighbors"
    res = client.get(f"{url}?sample={ids[10]}&k=2", headers=alice).json
    assert res["sample"] == ids[10] and res["k"] == 2 and res["space"] == "2d"
    got = res["neighbors"]
    assert len(got) == 2 and got[0]["distance"] <= got[1]["distance"]
    assert ids[10] not in [n["sample_id"] for n in got]
    for query, field in (("k=201", "k"), ("k=0", "k"), ("space=3d", "space"), ("", "sample")):
        bad = client.get(f"{url}?sample={ids[0]}&{query}" if query != "" else url, headers=alice)
        assert bad.status_code == 400 and bad.json["field"] == field, (query, bad.json)
    off = client.get(f"{url}?sample=999999", headers=alice)
    assert off.status_code == 400 and off.json["field"] == "sample"


def test_overlays_list_generations_newest_first_with_parents(client, alice, lab):
    url = f"/api/v1/embeddings/{lab.embedding_id}/generations"
    rows = client.get(url, headers=alice).json
    ids = lab.sample_ids
    assert [r["sample_id"] for r in rows] == lab.generated_ids[::-1]
    newest = rows[0]
    assert newest["mode"] == "umap_inverse" and newest["selected"] == ids[5]
    assert newest["parents"] == ids[6:8]
    assert newest["center"] == [1.5, 1.5] and newest["actual"] == [1.75, 1.25]
    assert len(client.get(f"{url}?limit=1", headers=alice).json) == 1
    assert client.get(f"{url}?limit=501", headers=alice).json["field"] == "limit"


def test_effects_list_the_generated_samples_with_a_readout_as_columns(client, alice, lab, sessions):
    from common.models import Generation

    first, second = lab.generated_ids
    url = f"/api/v1/embeddings/{lab.embedding_id}/effects"
    empty = client.get(url, headers=alice).json
    assert empty["embedding_id"] == lab.embedding_id and empty["count"] == 0
    assert empty["ids"] == empty["effect"] == empty["image_change"] == []
    with sessions.begin() as s:
        for gen in s.scalars(select(Generation)):
            if gen.sample_id == first:
                gen.effect, gen.image_change = 0.25, 0.125
            else:
                gen.image_change = 0.5  # an image change without a layer effect (no captured layer)
    answer = client.get(url, headers=alice).json
    assert answer["count"] == 2 and answer["ids"] == [first, second]
    assert answer["effect"] == [0.25, None] and answer["image_change"] == [0.125, 0.5]
    assert client.get("/api/v1/embeddings/999999/effects", headers=alice).status_code == 404


def test_sample_detail_has_recipe_parents_children_and_points(client, alice, lab):
    ids = lab.sample_ids
    child = lab.generated_ids[0]
    detail = client.get(f"/api/v1/samples/{child}", headers=alice).json
    assert detail["origin"] == "generated" and detail["generation"]["mode"] == "activation_mean"
    assert {p["sample_id"] for p in detail["parents"]} == {ids[0], *ids[1:4]}
    assert detail["points"] == {str(lab.embedding_id): [0.75, 1.25]}
    parent = client.get(f"/api/v1/samples/{ids[1]}", headers=alice).json
    assert [c["sample_id"] for c in parent["children"]] == [child]
    assert parent["points"] == {str(lab.embedding_id): [1.0, 1.0]}
    assert client.get("/api/v1/samples/999999", headers=alice).status_code == 404


def test_lineage_graph_and_depth_bounds(client, alice, lab):
    child = lab.generated_ids[0]
    graph = client.get(f"/api/v1/samples/{child}/lineage?depth=2", headers=alice).json
    assert graph["root"] == child
    assert {n["sample_id"]: n["level"] for n in graph["nodes"]}[lab.sample_ids[0]] == -1
    assert {(e["parent"], e["role"]) for e in graph["edges"]} >= {(lab.sample_ids[0], "selected")}
    for depth in (0, 21, "x"):
        bad = client.get(f"/api/v1/samples/{child}/lineage?depth={depth}", headers=alice)
        assert bad.status_code == 400 and bad.json["field"] == "depth"


def test_history_filters_narrow(client, alice, lab):
    ids = lab.sample_ids
    alices, bobs = lab.generated_ids

    def found(query: str) -> list[int]:
        res = client.get(f"/api/v1/history?{query}", headers=alice)
        assert res.status_code == 200, res.json
        return [g["sample_id"] for g in res.json["generations"]]

    assert found("") == [bobs, alices]
    assert found("user=alice") == [alices] and found("user=bob") == [bobs] and found("user=nobody") == []
    assert found(f"dataset={lab.dataset_id}") == [bobs, alices] and found("dataset=fake") == [bobs, alices]
    assert found("dataset=elsewhere") == []
    assert found("class=1") == [alices] and found("class=2") == [bobs]
    assert found(f"parent={ids[1]}") == [alices] and found(f"parent={ids[6]}") == [bobs]
    assert found("mode=umap_inverse") == [bobs]
    assert found(f"embedding={lab.embedding_id}") == [bobs, alices] and found("embedding=999") == []
    yesterday = ago(days=1).replace(tzinfo=None).isoformat()
    assert found(f"since={yesterday}") == [bobs] and found(f"until={yesterday}") == [alices]
    page = client.get("/api/v1/history?limit=1", headers=alice).json
    assert len(page["generations"]) == 1 and page["next_offset"] == 1
    assert client.get("/api/v1/history?limit=1&offset=1", headers=alice).json["next_offset"] == 2
    for query, field in (("limit=501", "limit"), ("mode=x", "mode"), ("since=yesterday", "since")):
        bad = client.get(f"/api/v1/history?{query}", headers=alice)
        assert bad.status_code == 400 and bad.json["field"] == field, (query, bad.json)


def test_image_is_served_as_a_cacheable_png(client, alice, lab, settings):
    sid = lab.sample_ids[3]
    res = client.get(f"/api/v1/samples/{sid}/image", headers=alice)
    assert res.status_code == 200 and res.mimetype == "image/png"
    assert res.data.startswith(b"\x89PNG\r\n\x1a\n")
    assert res.headers["Cache-Control"] == "private, max-age=86400, immutable"
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    again = client.get(
        f"/api/v1/samples/{sid}/image", headers={**alice, "If-None-Match": res.headers["ETag"]}
    )
    assert again.status_code == 304


@pytest.mark.parametrize(
    "stored", ["../../etc/passwd", "/etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "link.png"]
)
def test_image_paths_leaving_the_data_root_answer_404(client, alice, lab, sessions, settings, stored):
    link = settings.data_root / "link.png"
    if not link.is_symlink():
        os.symlink("/etc/passwd", link)
    sid = lab.sample_ids[4]
    with sessions.begin() as s:
        s.get(Sample, sid).image_path = stored
    res = client.get(f"/api/v1/samples/{sid}/image", headers=alice)
    assert res.status_code == 404 and res.json["error"] == f"The image of sample {sid} is not available."
    assert b"root:" not in res.data


def test_a_missing_image_file_answers_404(client, alice, lab, sessions, settings):
    sid = lab.sample_ids[5]
    with sessions() as s:
        (settings.data_root / s.get(Sample, sid).image_path).unlink()
    assert client.get(f"/api/v1/samples/{sid}/image", headers=alice).status_code == 404


def test_openapi_documents_the_research_endpoints(client):
    doc = client.get("/api/openapi.json").json
    paths = doc["paths"]
    for path in (
        "/api/v1/embeddings/{embedding_id}/points",
        "/api/v1/queues",
        "/api/v1/events",
        "/api/v1/history",
        "/api/v1/samples/{sample_id}/lineage",
    ):
        assert "get" in paths[path], path
    gen = paths["/api/v1/generations"]["post"]
    assert gen["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/GenerateFromNeighborsParams"
    )
    neighbors = {
        p["name"]: p for p in paths["/api/v1/embeddings/{embedding_id}/neighbors"]["get"]["parameters"]
    }
    assert neighbors["k"]["schema"]["maximum"] == 200 and neighbors["sample"]["required"]
    history = {p["name"] for p in paths["/api/v1/history"]["get"]["parameters"]}
    assert {"user", "dataset", "class", "parent", "mode", "since", "until", "limit"} <= history


HUGE = 10**20  # beyond any 64-bit id: SQLite cannot even bind it
BEYOND_INTEGER = 2**31  # the first id a PostgreSQL INTEGER id column cannot hold (out of range there)
TOO_BIG = pytest.mark.parametrize("big", [BEYOND_INTEGER, HUGE])


@TOO_BIG
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/samples/{}",
        "/api/v1/samples/{}/image",
        "/api/v1/datasets/{}",
        "/api/v1/datasets/{}/samples",
        "/api/v1/embeddings/{}",
        "/api/v1/embeddings/{}/points",
        "/api/v1/embeddings/{}/generations",
        "/api/v1/jobs/{}",
    ],
)
def test_ids_no_id_column_can_hold_in_a_path_are_not_found(client, alice, path, big):
    res = client.get(path.format(big), headers=alice)
    assert res.status_code == 404 and res.json["error"].startswith("No ")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("history?parent={}", "parent"),
        ("history?dataset={}", "dataset"),
        ("embeddings?dataset={}", "dataset"),
    ],
)
@TOO_BIG
def test_ids_no_id_column_can_hold_in_a_query_answer_400(client, alice, query, field, big):
    res = client.get("/api/v1/" + query.format(big), headers=alice)
    assert res.status_code == 400 and res.json["field"] == field


@TOO_BIG
def test_ids_no_id_column_can_hold_in_a_body_answer_400_naming_the_field(client, alice, lab, sessions, big):
    base = {"embedding": lab.embedding_id, "selected": lab.sample_ids[0], "neighbors": lab.sample_ids[1:3]}
    for body, field in (
        ({**base, "selected": big}, "selected"),
        ({**base, "embedding": big}, "embedding"),
        ({**base, "neighbors": [lab.sample_ids[1], big]}, "neighbors.1"),
    ):
        res = client.post("/api/v1/generations", json=body, headers=alice)
        assert res.status_code == 400 and res.json["field"] == field, res.json
    neighbors = client.get(f"/api/v1/embeddings/{lab.embedding_id}/neighbors?sample={big}", headers=alice)
    assert neighbors.status_code == 400 and neighbors.json["field"] == "sample"
    assert count(sessions, Job) == 0
