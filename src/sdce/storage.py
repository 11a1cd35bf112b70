"""Google Cloud Storage for a run: checkpoints, live metrics and final outputs.

With `--checkpoint-uri gs://bucket/prefix` (the config's `checkpoint_uri`, or the
workflow's GCS default storage prefix) the training loop keeps a copy of its work in
the bucket, so a job preempted on one machine resumes on another:

    <uri>/checkpoints/step_NNNNNNN/   a checkpoint; its state.json is uploaded last, so
                                      a folder without one is incomplete and ignored
    <uri>/milestones/words_N/         words-seen milestone models (never rotated)
    <uri>/metrics.jsonl               metrics up to the newest checkpoint
    <uri>/final/                      model/, metrics.jsonl, summary.json (uploaded last)

Credentials come from the environment only: Application Default Credentials
(GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, or the
service account of the VM or pod); STORAGE_EMULATOR_HOST points the client at a local
emulator. Nothing here prints or writes them. `google-cloud-storage` is the optional
`cloud` extra, imported only when a gs:// location is used.
"""

from __future__ import annotations

import os
from pathlib import Path

SCHEME = "gs://"
FINAL = "final"


class StorageError(ValueError):
    """A bucket that cannot be used; the message says what to set."""


def is_uri(path) -> bool:
    return str(path).startswith(SCHEME)


def split(uri: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ("bucket", "a/b")."""
    if not is_uri(uri):
        raise StorageError(f"{uri}: not a gs:// location")
    bucket, _, key = uri[len(SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket name")
    return bucket, key.strip("/")


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


_CREDENTIALS_HELP = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run "
    "`gcloud auth application-default login`, or run where a service account is attached "
    "(GKE Workload Identity, TPU VM); STORAGE_EMULATOR_HOST selects a local emulator"
)


class Remote:
    """One gs:// prefix. Keys below are relative to it."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.bucket_name, self.prefix = split(self.uri)
        try:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage
        except ImportError:
            raise StorageError(f"{self.uri} needs google-cloud-storage: pip install 'sdce[cloud]'") from None
        try:
            self.client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
        except DefaultCredentialsError:
            raise StorageError(f"no Google Cloud credentials for {self.uri}: {_CREDENTIALS_HELP}") from None
        self.bucket = self.client.bucket(self.bucket_name)

    def check(self) -> None:
        """Fail now, before any work, when the bucket is missing or not accessible."""
        from google.api_core import exceptions
        from google.auth.exceptions import RefreshError

        try:
            found = self.client.lookup_bucket(self.bucket_name)
        except (exceptions.Forbidden, exceptions.Unauthorized, RefreshError):
            raise StorageError(
                f"the credentials in use cannot read bucket '{self.bucket_name}' ({self.uri}): grant "
                "them roles/storage.objectAdmin on it, or " + _CREDENTIALS_HELP
            ) from None
        if found is None:
            raise StorageError(
                f"bucket '{self.bucket_name}' does not exist ({self.uri}): create it (terraform output "
                "artifact_bucket) or set checkpoint_uri / SDCE_BUCKET to an existing bucket"
            )

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def exists(self, key: str) -> bool:
        return self.bucket.blob(self._key(key)).exists()

    def upload_file(self, local: str | Path, key: str) -> None:
        self.bucket.blob(self._key(key)).upload_from_filename(str(local))

    def upload_text(self, text: str, key: str) -> None:
        self.bucket.blob(self._key(key)).upload_from_string(text)

    def download_file(self, key: str, local: str | Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        self.bucket.blob(self._key(key)).download_to_filename(str(local))

    def read_text(self, key: str) -> str:
        return self.bucket.blob(self._key(key)).download_as_text()

    def upload_dir(self, local: str | Path, key: str, last: str | None = None) -> None:
        """Every file under `local`; the file named `last` (relative) goes up after the rest."""
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        files.sort(key=lambda p: str(p.relative_to(local)) == last)
        for f in files:
            self.upload_file(f, join(key, str(f.relative_to(local))))

    def download_dir(self, key: str, local: str | Path) -> int:
        """Every object under `key/` into `local`; the number of files."""
        prefix = self._key(key) + "/"
        n = 0
        for blob in self.client.list_blobs(self.bucket_name, prefix=prefix):
            rel = blob.name[len(prefix) :]
            if not rel or rel.endswith("/"):
                continue
            target = Path(local) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
            n += 1
        return n

    def children(self, key: str) -> list[str]:
        """Names of the 'folders' directly under `key/`."""
        prefix = self._key(key) + "/"
        it = self.client.list_blobs(self.bucket_name, prefix=prefix, delimiter="/")
        list(it)  # the prefixes are filled while the pages are read
        return sorted(p[len(prefix) :].rstrip("/") for p in it.prefixes)

    def delete(self, key: str) -> None:
        """Every object under `key/`."""
        for blob in self.client.list_blobs(self.bucket_name, prefix=self._key(key) + "/"):
            blob.delete()


def open_remote(uri: str | None) -> Remote | None:
    """The checked remote of a run, or None without a URI."""
    if not uri:
        return None
    remote = Remote(uri)
    remote.check()
    return remote


def fetch(path: str, cache: str | Path) -> str:
    """A local path for `path`: itself, or for gs://, a copy under `cache` (file or folder)."""
    if not is_uri(path):
        return path
    bucket, key = split(path)
    remote = open_remote(f"{SCHEME}{bucket}")
    target = Path(cache) / bucket / key
    if remote.exists(key):
        remote.download_file(key, target)
    elif remote.download_dir(key, target) == 0:
        raise StorageError(f"{path}: no such object or folder")
    return str(target)
