"""The data-plane bed answers as the real Gen3 data services were seen to answer (shared/REAL-GEN3.md, "The data plane"): indexd records, Fence's signed URLs and DRS access, manifestservice and sheepdog, through the revproxy paths a workspace uses.

The Fence stand-in has no data routes any more: every test that fetches data uses this bed.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.support.realdata import DataBed, Record


@pytest.fixture(scope="module")
def record(real_data: DataBed) -> Record:
    return real_data.add_object("contract.csv", b"id,value\n1,2\n")


def bearer(bed: DataBed, user: str) -> dict[str, str]:
    return {"Authorization": f"bearer {bed.access_token(user)}"}


def test_indexd_serves_the_record_without_auth_under_index(real_data: DataBed, record: Record) -> None:
    r = requests.get(f"{real_data.indexd_url}/index/{record.guid}", timeout=30)

    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["did"], doc["file_name"], doc["size"], doc["hashes"]) == (record.guid, "contract.csv", record.size, {"md5": record.md5})
    assert doc["urls"] == [record.url] and doc["authz"] == [real_data.resource]
    assert record.guid.startswith("dg.TEST/"), "indexd prepends its prefix; the GUID holds an unescaped '/'"
    assert requests.get(f"{real_data.indexd_url}/index/dg.TEST/no-such-guid", timeout=30).status_code == 404


def test_indexd_bulk_documents_leaves_unknown_ids_out(real_data: DataBed, record: Record) -> None:
    r = requests.post(f"{real_data.indexd_url}/bulk/documents", json=[record.guid, "dg.TEST/unknown"], timeout=30)

    assert r.status_code == 200, r.text
    assert [d["did"] for d in r.json()] == [record.guid]


def test_fence_signs_a_download_url_into_the_bucket(real_data: DataBed, record: Record) -> None:
    r = requests.get(f"{real_data.fence_url}/data/download/{record.guid}", headers=bearer(real_data, real_data.reader), timeout=30)

    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert url.startswith(f"{real_data.s3_url}/"), url
    assert parse_qs(urlparse(url).query)["X-Amz-Expires"] == ["3600"], "moto checks no expiry: the signed lifetime is asserted instead"
    assert requests.get(url, timeout=30).content == record.content == real_data.bucket_object(record.key)


def test_fence_refuses_with_401_html_for_no_policy_or_no_token_and_404_for_unknown(real_data: DataBed, record: Record) -> None:
    url = f"{real_data.fence_url}/data/download/{record.guid}"
    for headers in (bearer(real_data, real_data.outsider), {}):
        r = requests.get(url, headers={**headers, "Accept": "application/json"}, timeout=30)
        assert r.status_code == 401, (headers.keys(), r.status_code, r.text[:300])
        assert r.headers["Content-Type"].startswith("text/html"), r.headers["Content-Type"]
    other = real_data.add_object("other.csv", b"x", authz=["/programs/DEV/projects/other"])
    assert requests.get(f"{real_data.fence_url}/data/download/{other.guid}", headers=bearer(real_data, real_data.reader), timeout=30).status_code == 401
    unknown = requests.get(f"{real_data.fence_url}/data/download/dg.TEST/no-such-guid", headers=bearer(real_data, real_data.reader), timeout=30)
    assert unknown.status_code == 404


def test_drs_object_is_indexds_and_drs_access_is_fences(real_data: DataBed, record: Record) -> None:
    obj = requests.get(f"{real_data.drs_url}/objects/{record.guid}", timeout=30)
    assert obj.status_code == 200, obj.text
    body = obj.json()
    assert body["id"] == record.guid and body["size"] == record.size
    assert {"type": "md5", "checksum": record.md5} in body["checksums"]
    access_id = body["access_methods"][0]["access_id"]
    assert access_id == "s3"

    access = requests.get(f"{real_data.drs_url}/objects/{record.guid}/access/{access_id}", headers=bearer(real_data, real_data.reader), timeout=30)
    assert access.status_code == 200, access.text
    assert requests.get(access.json()["url"], timeout=30).content == record.content


def test_manifestservice_stores_lists_and_serves_a_users_manifests(real_data: DataBed, record: Record) -> None:
    entries = [{"object_id": record.guid, "file_name": record.file_name, "file_size": record.size}]
    url = f"{real_data.manifests_url}/"
    reader = bearer(real_data, real_data.reader)

    posted = requests.post(url, json=entries, headers=reader, timeout=30)
    assert posted.status_code == 200, posted.text
    name = posted.json()["filename"]
    assert name.startswith("manifest-") and name.endswith(".json")

    listed = requests.get(url, headers=reader, timeout=30).json()["manifests"]
    assert name in [m["filename"] for m in listed]
    assert {"filename", "last_modified", "last_modified_timestamp"} <= set(listed[-1])
    got = requests.get(f"{url}file/{name}", headers=reader, timeout=30)
    assert got.status_code == 200 and json.loads(got.text) == entries

    assert requests.get(url, headers=bearer(real_data, real_data.outsider), timeout=30).json()["manifests"] == []
    assert requests.get(url, timeout=30).status_code == 403
    assert requests.post(url, json=[{"file_name": "no-id"}], headers=reader, timeout=30).status_code == 400


def test_sheepdog_lists_the_program_and_project_and_exports_nodes(real_data: DataBed) -> None:
    reader = bearer(real_data, real_data.reader)
    programs = requests.get(f"{real_data.submission_url}/", headers=reader, timeout=30)
    assert programs.status_code == 200, programs.text
    assert f"/v0/submission/{real_data.program}" in programs.json()["links"]
    projects = requests.get(f"{real_data.submission_url}/{real_data.program}", headers=reader, timeout=30).json()
    assert f"/v0/submission/{real_data.program}/{real_data.project}" in projects["links"]

    export = requests.get(
        f"{real_data.submission_url}/{real_data.program}/{real_data.project}/export/", params={"node_label": "case", "format": "tsv"}, headers=reader, timeout=60
    )
    assert export.status_code == 200, export.text[:2000]
    rows = export.text.strip().splitlines()
    header = rows[0].split("\t")
    assert "submitter_id" in header
    assert sorted(r.split("\t")[header.index("submitter_id")] for r in rows[1:]) == sorted(real_data.nodes["case"])
