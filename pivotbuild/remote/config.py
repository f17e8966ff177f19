"""`<root>/.pivot/config.toml`: remotes and the default remote (committed to git).

[core]
remote = "shared"

[remote.shared]
url = "/mnt/team/pivot-cache"     # a directory, or file:///...

[remote.bucket]
url = "s3://team-bucket/pivot"    # an object store: s3://, gs://, az://
endpoint_url = "http://minio:9000"  # an S3-compatible server (optional)
region = "eu-west-1"              # optional
profile = "team"                  # an AWS profile to read credentials from (optional)

[executor]
kind = "dask"                     # where stages run: "local" (the default) or "dask"
address = "tcp://scheduler:8786"  # the Dask scheduler (kind = "dask")

Credentials never go here: they come from the environment (AWS_*, GOOGLE_*,
AZURE_*) or the named profile; a config that holds one is refused.

What a config says, once read and checked, is kept beside it in
`.pivot/config.parsed` (not committed: `.pivot/.gitignore`), with the exact
bytes it was read from and the pivotbuild that read them (another may check
them otherwise): the next command of the same version that finds
config.toml holding those bytes takes it from there, without importing
`tomllib` (about 6 ms of every build of a project that has a config:
typing, string and its regular expressions).  One frame (`state.framing`:
magic `PIVCONF\n`, version 1, checksum) of msgpack `[version, bytes,
remotes, default, checkout, settings, executor, address]`; written without
fsync, since a damaged or missing one only means parsing the file again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

from pivotbuild import __version__
from pivotbuild.errors import PivotError
from pivotbuild.paths import STATE_DIR
from pivotbuild.state import framing
from pivotbuild.state.files import ensure_state_dir, write_atomic
from pivotbuild.structs import field, struct

TYPE_CHECKING = False  # not typing's: every build reads the config (typing costs it ~3 ms)
if TYPE_CHECKING:
    from typing import Any

CONFIG = "config.toml"
PARSED = "config.parsed"  # what CONFIG said, kept with its bytes (see above)
PARSED_FRAME = framing.Format(b"PIVCONF\n", 1, "parsed config")


class ConfigError(PivotError):
    """A config file that cannot be read, or a remote that is not configured."""


CHECKOUT_MODES = ("copy", "reflink", "hardlink", "symlink")


@struct
class Config:
    """What `config.toml` says (the defaults where it says nothing, or is missing)."""

    remotes: dict[str, str] = field(default_factory=dict)  # name -> url
    default: str | None = None
    checkout: str = "copy"  # how outputs come back from the cache
    settings: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> SETTINGS (object stores)
    executor: str = "local"  # where stages run: one of EXECUTORS
    address: str = ""  # the executor's scheduler (dask: tcp://HOST:PORT)

    def remote_url(self, name: str | None) -> tuple[str, str]:
        """(name, url) of the named remote, else the default one."""
        chosen = name or self.default
        if chosen is None:
            if len(self.remotes) == 1:
                chosen = next(iter(self.remotes))
            else:
                raise ConfigError(
                    "no remote chosen: pass -r NAME, or set one with 'pivotbuild remote add --default NAME URL'"
                )
        if chosen not in self.remotes:
            known = ", ".join(sorted(self.remotes)) or "none"
            raise ConfigError(f"no remote named '{chosen}' (configured: {known}); see 'pivotbuild remote list'")
        return chosen, self.remotes[chosen]


def config_path(root: Path) -> Path:
    return root / STATE_DIR / CONFIG


def load_or_default(root: Path, warn: Callable[[str], None]) -> Config:
    """The config for a build: one that cannot be read or makes no sense is
    reported through `warn` and the defaults are used, since a build needs
    nothing from it that the defaults cannot give (checkout = copy is always
    right).  Commands that act on what it says (remotes) call `load`."""
    try:
        return load(root)
    except ConfigError as exc:
        warn(f"{exc} (until then, builds use the default settings)")
        return Config()


def load(root: Path) -> Config:
    """The config; raises ConfigError, one line naming the file and, for a
    syntax error, the line and column, if it cannot be read or makes no sense."""
    path = config_path(root)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}; fix or remove it") from exc
    kept = _kept(root, raw)
    if kept is not None:
        return kept
    config = _parsed(path, raw)
    _keep(root, raw, config)
    return config


def _kept(root: Path, raw: bytes) -> Config | None:
    """What an earlier command read from a config of exactly these bytes, if
    it kept it (else None: none kept, another config's, or damaged)."""
    try:
        version, kept, remotes, default, checkout, settings, executor, address = PARSED_FRAME.load(
            (root / STATE_DIR / PARSED).read_bytes()
        )
    except (OSError, ValueError, TypeError):  # (framing.Damaged is a ValueError)
        return None
    if kept != raw or version != __version__:
        return None
    return Config(remotes, default, checkout, settings, executor, address)


def _keep(root: Path, raw: bytes, config: Config) -> None:
    fields = [config.remotes, config.default, config.checkout, config.settings, config.executor, config.address]
    # (Kept only to spare the next command the parse: where it cannot be written, each one parses.)
    with contextlib.suppress(OSError):
        write_atomic(root / STATE_DIR / PARSED, PARSED_FRAME.dump([__version__, raw, *fields]), fsync=False)


def _parsed(path: Path, raw: bytes) -> Config:
    """The config `raw` holds, checked; raises ConfigError as `load` says."""
    import tomllib  # here: only where there is a config, and it is not kept (about 6 ms)

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ConfigError(f"{path}: not UTF-8 (at line {line}, column {column}); fix or remove it") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix or remove it") from exc
    remotes = {}
    settings: dict[str, dict[str, str]] = {}
    for name, table in _table(data, "remote", path).items():
        url = table.get("url") if isinstance(table, dict) else None
        if not isinstance(url, str):
            raise ConfigError(f'{path}: [remote.{name}] needs url = "..."')
        remotes[name] = url
        extra = {k: v for k, v in table.items() if k != "url"}
        if extra:
            settings[name] = _settings(extra, f"{path}: [remote.{name}]")
    core = _table(data, "core", path)
    default = core.get("remote")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f'{path}: [core] remote = {default!r}; it must name a remote, like remote = "shared"')
    checkout = core.get("checkout", "copy")
    if checkout not in CHECKOUT_MODES:
        raise ConfigError(f"{path}: [core] checkout = {checkout!r}; use one of {', '.join(CHECKOUT_MODES)}")
    executor, address = _executor(_table(data, "executor", path), path)
    return Config(remotes, default, checkout, settings, executor, address)


EXECUTORS = ("local", "dask")


def _executor(table: dict[str, Any], path: Path) -> tuple[str, str]:
    """[executor]'s kind and address, checked."""
    unknown = sorted(set(table) - {"kind", "address"})
    if unknown:
        raise ConfigError(f"{path}: [executor] has unknown key {unknown[0]}; it takes kind and address")
    kind = table.get("kind", "local")
    if kind not in EXECUTORS:
        raise ConfigError(f"{path}: [executor] kind = {kind!r}; use one of {', '.join(EXECUTORS)}")
    address = table.get("address", "")
    if not isinstance(address, str):
        raise ConfigError(f'{path}: [executor] address = {address!r}; write address = "tcp://HOST:PORT"')
    if kind == "dask" and not address:
        raise ConfigError(f'{path}: [executor] kind = "dask" needs address = "tcp://HOST:PORT" (the scheduler)')
    return kind, address


SETTINGS = ("endpoint_url", "region", "profile")  # an object-store remote's keys besides url
_SECRETS = ("key", "secret", "token", "password", "credential")


def _settings(table: dict[str, Any], where: str) -> dict[str, str]:
    for key, value in table.items():
        if any(word in key.lower() for word in _SECRETS):
            raise ConfigError(
                f"{where}: {key} is a credential, and credentials never go in the config (it is committed);"
                " remove it and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile) in the environment"
            )
        if key not in SETTINGS:
            raise ConfigError(f"{where}: unknown key {key}; a remote takes url and {', '.join(SETTINGS)}")
        if not isinstance(value, str):
            raise ConfigError(f'{where}: {key} = {value!r}; it must be a string, like {key} = "..."')
    return dict(table)


_TABLES = {
    "core": "[core] with remote = NAME",
    "remote": '[remote.NAME] with url = "..."',
    "executor": '[executor] with kind = "dask" and address = "tcp://HOST:PORT"',
}


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: '{key}' must be a table, not {value!r}; write {_TABLES[key]}")
    return value


def save(root: Path, config: Config) -> None:
    lines = ["# pivotbuild project settings; commit this file."]
    core = []
    if config.default:
        core.append(f"remote = {toml_string(config.default)}")
    if config.checkout != "copy":
        core.append(f"checkout = {toml_string(config.checkout)}")
    if core:
        lines += ["", "[core]", *core]
    for name in sorted(config.remotes):
        lines += ["", f"[remote.{toml_string(name)}]", f"url = {toml_string(config.remotes[name])}"]
        lines += [f"{key} = {toml_string(value)}" for key, value in sorted(config.settings.get(name, {}).items())]
    if config.executor != "local" or config.address:
        lines += ["", "[executor]", f"kind = {toml_string(config.executor)}"]
        lines += [f"address = {toml_string(config.address)}"] if config.address else []
    ensure_state_dir(root)
    write_atomic(config_path(root), ("\n".join(lines) + "\n").encode("utf-8"))


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """`text` as a TOML basic string: UTF-8 as it is, control characters escaped.
    Text that is not valid Unicode (undecodable bytes in an argument) is refused."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xD800 <= code <= 0xDFFF:
            raise ConfigError(f"{text!r} is not valid UTF-8, so it cannot go in {CONFIG}; use another name or path")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


OBJECT_STORES = ("s3", "gs", "az")  # schemes remote/objectstore.py serves


def is_object_store(url: str) -> bool:
    return urlparse(url).scheme in OBJECT_STORES


def check_url(url: str, root: Path, settings: dict[str, str]) -> None:
    """Refuse a URL no remote serves, or settings it does not take (ConfigError);
    an object store also needs a bucket.  The settings are S3's alone (GCS and
    Azure read everything from their environment variables)."""
    parsed = urlparse(url)
    if parsed.scheme in OBJECT_STORES and not parsed.netloc:
        raise ConfigError(f"remote url '{url}': name the bucket, like {parsed.scheme}://BUCKET/PREFIX")
    if parsed.scheme not in OBJECT_STORES:
        directory_of(url, root)
    if settings and parsed.scheme != "s3":
        raise ConfigError(f"remote url '{url}': {', '.join(sorted(settings))} apply to s3:// remotes only")


def directory_of(url: str, root: Path) -> Path:
    """The directory a remote URL names: a path (relative to the project root) or file://."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        stores = ", ".join(f"{scheme}://" for scheme in OBJECT_STORES)
        raise ConfigError(f"remote url '{url}': use a directory (a path or file://) or an object store ({stores})")
    path = Path(url).expanduser()
    return path if path.is_absolute() else root / path
