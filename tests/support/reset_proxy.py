"""A TCP proxy in front of the sandbox that can play a gateway outage: while ``down``, every connection is accepted
and reset at once (SO_LINGER 0: an RST, what a dead load balancer does), and the connections already open are reset
too. It counts the connections it accepts, so a test can say how hard the workers knocked during the outage."""
from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class ResetProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # the accept loop looks at _stopped this often
        self.port = self._listener.getsockname()[1]
        self.down = False
        self.accepted = 0  # every connection accepted
        self.accepted_while_down = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/interfaces/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ResetProxy:
        self._thread.start()
        return self

    def outage(self, down: bool) -> None:
        """Start (True) or end (False) the outage; starting it resets every open connection."""
        with self._lock:
            self.down = down
            live, self._open = (set(self._open), set()) if down else (set(), self._open)
        for sock in live:
            _reset(sock)

    def stop(self) -> None:
        self._stopped = True
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        self.outage(True)

    def _serve(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self.accepted += 1
                if self.down:
                    self.accepted_while_down += 1
                    _reset(client)
                    continue
            threading.Thread(target=self._pipe_pair, args=(client,), daemon=True).start()

    def _pipe_pair(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        server.settimeout(None)
        with self._lock:
            if self.down:
                _reset(client)
                _reset(server)
                return
            self._open.update((client, server))
        threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()
        self._pipe(client, server)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def reset_proxy(upstream_url: str) -> Iterator[ResetProxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(upstream_url)
    proxy = ResetProxy(parts.hostname or "127.0.0.1", parts.port or 80).start()
    try:
        yield proxy
    finally:
        proxy.stop()
