"""The real data-plane bed as the export tests use it: records, objects and manifests put in through the services' own APIs (or, for what they refuse, where they keep them), and the addresses a fault rule needs."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

import requests


def portal_entry(guid: str, file_name: str, data: bytes, commons_url: str) -> dict[str, Any]:
    """A manifest entry as the portal's Discovery page exports it (the study's `__manifest` items)."""
    return {"md5sum": hashlib.md5(data).hexdigest(), "file_name": file_name, "file_size": len(data), "object_id": guid, "commons_url": commons_url}


class RealPlane:
    """The real bed (tests/support/realdata.py): records through indexd's API, bytes in moto, manifests through manifestservice."""

    def __init__(self, bed: Any):
        from tests.support.realdata import INDEXD_PREFIX, MANIFEST_BUCKET
        from tests.support.realfence import DATA_BUCKET, OTHER_RESOURCE

        self.bed = bed
        self.url = bed.commons_url
        self.user = bed.reader
        self._prefix, self._manifests_bucket, self._data_bucket, self._other = INDEXD_PREFIX, MANIFEST_BUCKET, DATA_BUCKET, OTHER_RESOURCE
        self._folders: dict[str, str] = {}

    def api_key(self, user: str) -> dict[str, str]:
        return self.bed.api_key(user)

    def add_object(self, data: bytes, file_name: str, md5: str | None = None, size: int | None = None, readable: bool = True) -> str:
        if md5 is None and size is None:
            return self.bed.add_object(file_name, data, authz=None if readable else [self._other]).guid
        # A record that disagrees with the bytes: made the same way, with indexd's own API.
        key = f"{uuid.uuid4()}/{file_name}"
        self.bed.s3().put_object(Bucket=self._data_bucket, Key=key, Body=data)
        body = {
            "form": "object", "size": len(data) if size is None else size, "hashes": {"md5": md5 or hashlib.md5(data).hexdigest()},
            "urls": [f"s3://{self._data_bucket}/{key}"], "file_name": file_name, "authz": [self.bed.resource if readable else self._other],
        }
        r = requests.post(f"{self.bed.direct['indexd']}/index/", json=body, auth=(self.bed.indexd_user, self.bed.indexd_password), timeout=30)
        r.raise_for_status()
        return r.json()["did"]

    def entry(self, guid: str, file_name: str, data: bytes) -> dict[str, Any]:
        return portal_entry(guid, file_name, data, self.url)

    def unknown_guid(self) -> str:
        return f"{self._prefix}{uuid.uuid4()}"

    def post_manifest(self, user: str, entries: list[dict[str, Any]]) -> str:
        # The portal's call (handleExportToWorkspaceClick): POST <hostname>manifests/ with the JSON list.
        r = requests.post(
            f"{self.bed.manifests_url}/", data=json.dumps(entries), timeout=30,
            headers={"Authorization": f"bearer {self.bed.access_token(user)}", "Content-Type": "application/json", "Accept": "application/json"},
        )
        if r.status_code != 200:
            raise AssertionError(f"manifestservice refused the manifest ({r.status_code}): {r.text[:500]}")
        return r.json()["filename"]

    def _folder(self, user: str) -> str:
        """The user's folder in the manifest bucket, as manifestservice names it: found by storing one manifest."""
        if user not in self._folders:
            name = self.post_manifest(user, [{"object_id": self.unknown_guid()}])
            keys = [o["Key"] for o in self.bed.s3().list_objects_v2(Bucket=self._manifests_bucket).get("Contents", [])]
            key = next(k for k in keys if k.endswith("/" + name))
            self._folders[user] = key[: -len(name) - 1]
        return self._folders[user]

    def put_raw_manifest(self, user: str, raw: bytes) -> str:
        """Bytes manifestservice itself would refuse, put where it keeps the user's manifests (another writer, an older version)."""
        name = "manifest-" + datetime.now().isoformat().replace(":", "-") + ".json"
        self.bed.s3().put_object(Bucket=self._manifests_bucket, Key=f"{self._folder(user)}/{name}", Body=raw)
        return name

    def clear_manifests(self, user: str) -> None:
        folder = self._folder(user)
        s3 = self.bed.s3()
        for o in s3.list_objects_v2(Bucket=self._manifests_bucket, Prefix=folder + "/").get("Contents", []):
            s3.delete_object(Bucket=self._manifests_bucket, Key=o["Key"])

    def is_bucket(self, url: str) -> bool:
        return url.startswith(self.bed.s3_url + "/")

    def is_indexd(self, url: str) -> bool:
        return url.startswith(self.bed.indexd_url + "/")
