"""A real ``payments console`` for a test (a subprocess served by waitress on a free port), its users, and an HTTP
client that logs in as a person does (the login form's CSRF token) and keeps every page it was served, for the
card-data scan."""
from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.support.flower import ROOT, payments_cmd, stop_process, wait_until
from tests.support.ports import free_port
from worker.console.users import add_user

USERS = {"olga": ("operator", "operator-secret-1"), "vic": ("viewer", "viewer-secret-1"),
         "rita": ("operator", "operator-secret-2")}
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class ConsoleClient:
    def __init__(self, url: str, served: list[tuple[str, str]]) -> None:
        self.url = url
        self.http = requests.Session()
        self.served = served

    def get(self, path: str, **kwargs) -> requests.Response:
        reply = self.http.get(self.url + path, timeout=30, **kwargs)
        self.served.append((path, reply.text))
        return reply

    def post(self, path: str, data: dict, *, token: bool = True, **kwargs) -> requests.Response:
        if token:
            data = dict(data, csrf_token=self.token())
        reply = self.http.post(self.url + path, data=data, timeout=60, **kwargs)
        self.served.append((path, reply.text))
        return reply

    def token(self) -> str:
        found = TOKEN.search(self.http.get(self.url + "/login", timeout=30).text)
        assert found, "the login page carries a CSRF token"
        return found.group(1)

    def login(self, name: str, password: str | None = None) -> requests.Response:
        return self.post("/login", {"username": name, "password": password or USERS[name][1], "next": "/"})


@contextlib.contextmanager
def start_console(env: dict[str, str], tmp: Path, *, users: dict[str, tuple[str, str]] | None = None,
                  ready: str = "/login") -> Iterator[str]:
    """``payments console`` on 127.0.0.1 with ``users`` in a users file under ``tmp``; yields its URL once ``ready``
    answers (whatever the status)."""
    users_file = tmp / "console-users.json"
    for name, (role, password) in (USERS if users is None else users).items():
        add_user(users_file, name, role, password)
    port = free_port()
    log_path = tmp / f"console-{port}.log"
    full = dict(env, CONSOLE_USERS_FILE=str(users_file), PAYMENTS_DATA_DIR=str(tmp))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*payments_cmd(), "console", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                requests.get(url + ready, timeout=2)
                return True
            except requests.ConnectionError:
                return False

        wait_until(up, 30, "the console to answer")
        yield url
    finally:
        stop_process(proc)


@contextlib.contextmanager
def running_console(env: dict[str, str], tmp: Path, *, users: dict[str, tuple[str, str]] | None = None
                    ) -> Iterator[tuple[str, Path]]:
    """A console whose /healthz says ok; yields (url, the directory of its log)."""
    with start_console(env, tmp, users=users) as url:
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        yield url, tmp
