"""The console's users: a name, a role (``viewer`` or ``operator``) and an Argon2id password hash (PHC string).

Kept in a JSON file (``CONSOLE_USERS_FILE``, default ``console-users.json`` in ``PAYMENTS_DATA_DIR``; written by
``payments console adduser``, mode 0600) and/or given in ``CONSOLE_USERS`` (``name:role:$argon2id$...`` entries
separated by whitespace or ``;``: a container's secret). Argon2id from ``cryptography`` (already a dependency):
OWASP's parameters (19 MiB, 2 passes, 1 lane). Only hashes are kept; a password is never written or logged.
"""
from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

ROLES = ("viewer", "operator")
USERS_FILE = "console-users.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_PASSWORD = 1024
MIN_PASSWORD = 8
# A hash to check against when the user does not exist, so that the answer takes as long either way.
_DUMMY_SALT = b"console-no-such-user"


class UsersError(Exception):
    """The users file or variable cannot be used, or a user cannot be added (the message says why)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


def _kdf(salt: bytes) -> Argon2id:
    return Argon2id(salt=salt, length=32, iterations=2, lanes=1, memory_cost=19 * 1024)


def hash_password(password: str) -> str:
    check_password(password)
    return _kdf(secrets.token_bytes(16)).derive_phc_encoded(password.encode())


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UsersError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")


def password_matches(password: str, phc: str | None) -> bool:
    """Whether ``password`` matches the PHC string ``phc`` (None: a missing user; the same work is done)."""
    data = password.encode()[:MAX_PASSWORD * 4]
    if phc is None:
        _kdf(_DUMMY_SALT).derive(data)
        return False
    try:
        Argon2id.verify_phc_encoded(data, phc)
    except (InvalidKey, ValueError):
        return False
    return True


def users_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    given = env.get("CONSOLE_USERS_FILE", "").strip()
    return Path(given) if given else Path(env.get("PAYMENTS_DATA_DIR", "").strip() or ".data") / USERS_FILE


def _entry(name: str, role: str, phc: str, where: str) -> tuple[str, tuple[str, str]]:
    if not NAME.match(name):
        raise UsersError(f"{where}: user name {name!r} is not allowed (letters, digits, . _ @ -)")
    if role not in ROLES:
        raise UsersError(f"{where}: user {name}: role must be viewer or operator, not {role!r}")
    if not phc.startswith("$argon2id$"):
        raise UsersError(f"{where}: user {name}: the password must be an Argon2id hash ($argon2id$...)")
    return name, (role, phc)


def parse_env_users(text: str) -> dict[str, tuple[str, str]]:
    """``CONSOLE_USERS``: ``name:role:$argon2id$...`` entries separated by whitespace or ``;``."""
    found: dict[str, tuple[str, str]] = {}
    for item in re.split(r"[\s;]+", text.strip()):
        if not item:
            continue
        parts = item.split(":", 2)
        if len(parts) != 3:
            raise UsersError("CONSOLE_USERS: each entry is name:role:$argon2id$... (separated by spaces or ;)")
        name, value = _entry(parts[0], parts[1], parts[2], "CONSOLE_USERS")
        found[name] = value
    return found


def read_file(path: Path) -> dict[str, tuple[str, str]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UsersError(f"{path}: cannot be read as the console's users ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("users"), dict):
        raise UsersError(f"{path}: not a users file ({{\"users\": {{name: {{role, password}}}}}})")
    found: dict[str, tuple[str, str]] = {}
    for name, item in raw["users"].items():
        if not isinstance(item, dict):
            raise UsersError(f"{path}: user {name!r} is not an object")
        key, value = _entry(str(name), str(item.get("role", "")), str(item.get("password", "")), str(path))
        found[key] = value
    return found


class Users:
    """Who may log in: the users file's, then ``CONSOLE_USERS``'s (which wins for a name in both). Read again on
    every login, so a user added with ``payments console adduser`` may log in without a restart."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.path = users_file(self.env)

    def all(self) -> dict[str, tuple[str, str]]:
        return {**read_file(self.path), **parse_env_users(self.env.get("CONSOLE_USERS", ""))}

    def role_of(self, name: str) -> str | None:
        found = self.all().get(name)
        return found[0] if found else None

    def authenticate(self, name: str, password: str) -> User | None:
        found = self.all().get(name)
        if not password_matches(password, found[1] if found else None) or found is None:
            return None
        return User(name, found[0])


def add_user(path: Path, name: str, role: str, password: str) -> None:
    """Add or replace ``name`` in the users file (created with mode 0600; replaced atomically)."""
    _entry(name, role, "$argon2id$", str(path))
    check_password(password)
    users = read_file(path)
    users[name] = (role, hash_password(password))
    body = json.dumps({"users": {n: {"role": r, "password": p} for n, (r, p) in sorted(users.items())}}, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(body + "\n")
    os.replace(tmp, path)
