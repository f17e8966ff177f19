"""Object-store remotes (`s3://BUCKET/PREFIX`, `gs://`, `az://`) through obstore,
the binding of Rust's object_store: one fast, well-kept client for all three,
that releases the GIL, so transfer.py's worker threads move objects in parallel.

An object store writes an object whole or not at all, so a killed push never
leaves a partial object and a re-run sends only what is missing.  Credentials
come from the environment (the client reads AWS_*, GOOGLE_*, AZURE_*) or, for
S3, from a profile in the AWS shared files; never from the config.  Every
request has a connect timeout and bounded retries, so an unreachable endpoint
is an error within seconds, and every failure the user can act on (endpoint,
bucket, credentials) is one line naming the remote (`RemoteError`, exit 2).
"""

from __future__ import annotations

import configparser
import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pivotbuild.errors import PivotError

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

_CLIENT: ClientConfig = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(minutes=5)}
_RETRY: RetryConfig = {
    "max_retries": 3,
    "retry_timeout": timedelta(seconds=20),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2},
}


class RemoteError(PivotError):
    """The object store cannot be used as configured: unreachable, no such
    bucket, credentials refused.  Exit 2: the setup needs fixing, not a retry."""


class ObjectStoreRemote:
    def __init__(self, name: str, url: str, settings: dict[str, str]) -> None:
        from obstore.store import from_url

        self.name = name
        self.url = url
        self.where = settings.get("endpoint_url") or url
        options: dict[str, Any] = {}
        if urlparse(url).scheme == "s3":
            options = _s3_options(settings)
        endpoint = settings.get("endpoint_url", "")
        client = {**_CLIENT, "allow_http": True} if endpoint.startswith("http://") else _CLIENT
        with self._errors("open"):
            self.store: ObjectStore = from_url(url, client_options=client, retry_config=_RETRY, **options)

    def check(self) -> None:
        """Reach the store once before a transfer: a missing bucket, refused
        credentials or an unreachable endpoint is reported here, before any
        object is looked at (a HEAD of a missing bucket says only "not found")."""
        import obstore

        with self._errors("list"):
            obstore.list_with_delimiter(self.store, "objects")

    def exists(self, rel: str) -> bool:
        import obstore

        with self._errors(f"look up {rel}"):
            try:
                obstore.head(self.store, rel)
            except FileNotFoundError:
                return False
        return True

    def size(self, rel: str) -> int | None:
        import obstore

        with self._errors(f"look up {rel}"):
            try:
                return int(obstore.head(self.store, rel)["size"])
            except FileNotFoundError:
                return None

    def list_dir(self, rel: str) -> list[str]:
        import obstore

        with self._errors(f"list {rel}"):
            listing = obstore.list_with_delimiter(self.store, rel)
        return sorted(obj["path"].rsplit("/", 1)[-1] for obj in listing["objects"])

    def put(self, src: Path, rel: str) -> None:
        import obstore

        with self._errors(f"upload {rel}"):
            obstore.put(self.store, rel, src)

    def write(self, rel: str, data: bytes) -> None:
        import obstore

        with self._errors(f"upload {rel}"):
            obstore.put(self.store, rel, data)

    def get(self, rel: str, dest: Path) -> None:
        import obstore

        with self._errors(f"download {rel}"), open(dest, "wb") as out:
            for chunk in obstore.get(self.store, rel):
                out.write(chunk)

    def read(self, rel: str) -> bytes:
        import obstore

        with self._errors(f"download {rel}"):
            return bytes(obstore.get(self.store, rel).bytes())

    def remove(self, rel: str) -> None:
        import obstore

        with self._errors(f"delete {rel}"), contextlib.suppress(FileNotFoundError):
            obstore.delete(self.store, rel)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError

        try:
            yield
        except (BaseError, ValueError) as exc:
            text = str(exc)
            if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or _refused(text):
                raise RemoteError(
                    f"remote {self.name}: {self.where} refused the credentials ({_code(text) or 'access denied'});"
                    " check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE (or the profile in"
                    " .pivot/config.toml), and that they may read and write the bucket"
                ) from exc
            if "NoSuchBucket" in text:
                raise RemoteError(
                    f"remote {self.name}: the bucket of {self.url} does not exist at {self.where};"
                    " create it, or fix the url in .pivot/config.toml"
                ) from exc
            if _unreachable(text):
                raise RemoteError(
                    f"remote {self.name}: cannot reach {self.where} ({_reason(text)});"
                    " check endpoint_url in .pivot/config.toml and the network"
                ) from exc
            raise RemoteError(f"remote {self.name}: cannot {what}: {_first_line(text)}") from exc


def _s3_options(settings: dict[str, str]) -> dict[str, Any]:
    """S3Store's settings: the endpoint, the region, and credentials from an AWS
    profile when the environment holds none (the client reads the AWS_* variables
    itself, but not the shared credentials files)."""
    options: dict[str, Any] = {}
    if "endpoint_url" in settings:
        options["endpoint"] = settings["endpoint_url"]
    region = settings.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    profile_name = settings.get("profile") or os.environ.get("AWS_PROFILE")
    if "AWS_ACCESS_KEY_ID" not in os.environ:
        profile = _profile(profile_name or "default")
        for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            if key in profile:
                options[key.removeprefix("aws_")] = profile[key]
        region = region or profile.get("region")
    if region:
        options["region"] = region
    elif "endpoint_url" in settings:
        options["region"] = "us-east-1"  # S3-compatible servers sign with any region; the client needs one
    return options


def _profile(name: str) -> dict[str, str]:
    """The keys of AWS profile `name` from the shared credentials and config files."""
    found: dict[str, str] = {}
    home = Path.home() / ".aws"
    files = [
        (os.environ.get("AWS_CONFIG_FILE") or home / "config", name if name == "default" else f"profile {name}"),
        (os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials", name),
    ]
    for path, section in files:  # the credentials file wins, as with the AWS CLI
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
            if parser.has_section(section):
                found.update(parser.items(section))
    return found


_REFUSED = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403 Forbidden", "401 Unauthorized")
_UNREACHABLE = ("error sending request", "HTTP error", "timed out", "Connect", "dns error", "connection")


def _refused(text: str) -> bool:
    return any(word in text for word in _REFUSED)


def _unreachable(text: str) -> bool:
    return any(word in text for word in _UNREACHABLE)


def _code(text: str) -> str:
    """The S3 error code in a response body (`<Code>...</Code>`), if any."""
    start = text.find("<Code>")
    end = text.find("</Code>", start)
    return text[start + 6 : end] if start >= 0 and end > start else ""


def _reason(text: str) -> str:
    for word in ("timed out", "dns error", "connection refused", "Connect"):
        if word.lower() in text.lower():
            return "connection refused" if word == "Connect" else word
    return "no answer"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line if len(line) <= 200 else line[:197] + "..."
