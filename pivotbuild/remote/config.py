"""`<root>/.pivot/config.toml`: remotes and the default remote (committed to git).

[core]
remote = "shared"

[remote.shared]
url = "/mnt/team/pivot-cache"     # a directory, or file:///...
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from pivotbuild.errors import PivotError
from pivotbuild.paths import STATE_DIR
from pivotbuild.state_files import ensure_state_dir, write_atomic

CONFIG = "config.toml"


class ConfigError(PivotError):
    """A config file that cannot be read, or a remote that is not configured."""


CHECKOUT_MODES = ("copy", "hardlink", "symlink")


@dataclass
class Config:
    remotes: dict[str, str] = field(default_factory=dict)  # name -> url
    default: str | None = None
    checkout: str = "copy"  # how outputs come back from the cache

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


def load(root: Path) -> Config:
    path = config_path(root)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}; fix or remove it") from exc
    remotes = {}
    for name, table in (data.get("remote") or {}).items():
        url = table.get("url") if isinstance(table, dict) else None
        if not isinstance(url, str):
            raise ConfigError(f'{path}: [remote.{name}] needs url = "..."')
        remotes[name] = url
    core = data.get("core") or {}
    default = core.get("remote") if isinstance(core, dict) else None
    checkout = core.get("checkout", "copy") if isinstance(core, dict) else "copy"
    if checkout not in CHECKOUT_MODES:
        raise ConfigError(f"{path}: [core] checkout = {checkout!r}; use one of {', '.join(CHECKOUT_MODES)}")
    return Config(remotes, default if isinstance(default, str) else None, checkout)


def save(root: Path, config: Config) -> None:
    lines = ["# pivotbuild project settings; commit this file."]
    core = []
    if config.default:
        core.append(f"remote = {json.dumps(config.default)}")
    if config.checkout != "copy":
        core.append(f"checkout = {json.dumps(config.checkout)}")
    if core:
        lines += ["", "[core]", *core]
    for name in sorted(config.remotes):
        lines += ["", f"[remote.{json.dumps(name)}]", f"url = {json.dumps(config.remotes[name])}"]
    ensure_state_dir(root)
    write_atomic(config_path(root), ("\n".join(lines) + "\n").encode("utf-8"))


def directory_of(url: str, root: Path) -> Path:
    """The directory a remote URL names: a path (relative to the project root) or file://."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ConfigError(f"remote url '{url}': only directories (a path or file://) are supported so far")
    path = Path(url).expanduser()
    return path if path.is_absolute() else root / path
