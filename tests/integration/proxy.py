"""A TCP proxy on loopback that can cut or silently freeze the traffic it forwards."""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any


class TcpProxy:
    """Forward ``<listen>:<port>`` (127.0.0.1 by default) to ``target``.

    ``cut()`` closes every forwarded connection and refuses new ones, as a stopped broker
    would; ``freeze()`` keeps the connections open but forwards nothing, in either direction,
    and accepts nothing new, as a half-open network path or a frozen broker would;
    ``restore()`` forwards again.
    """

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672), listen: str = "127.0.0.1") -> None:
        self.target = target
        self.listen = listen
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((listen, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._running = True
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def url(self, user: str, password: str, vhost: str, tls: bool = False, host: str | None = None) -> str:
        """A URL through the proxy; ``tls`` gives ``amqps://`` (to ``localhost``, the certificate's name)."""
        from urllib.parse import quote

        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        host = host or ("localhost" if tls and self.listen == "127.0.0.1" else self.listen)
        return f"{'amqps' if tls else 'amqp'}://{credentials}@{host}:{self.port}/{quote(vhost, safe='')}"

    def pulse_url(self, pulse: Any) -> str:
        """``pulse``'s URL (a PulseLikeBroker), through the proxy, over TLS if ``pulse`` uses TLS."""
        return self.url(pulse.user, pulse.password, pulse.vhost, tls=pulse.tls)

    def cut(self) -> None:
        self.mode = "cut"
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                s.close()

    @property
    def connections(self) -> int:
        """Connections being forwarded now."""
        with self._lock:
            return len(self._pairs)

    def freeze(self) -> None:
        self.mode = "freeze"

    def restore(self) -> None:
        self.mode = "pass"

    def close(self) -> None:
        self._running = False
        self.cut()
        self.listener.close()
        for t in self._threads:
            t.join(timeout=5)

    def _accept_loop(self) -> None:
        while self._running:
            if self.mode == "freeze":
                time.sleep(0.05)  # new connections wait in the backlog, unanswered
                continue
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "cut":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            t = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while self._running and self.mode != "cut":
                if self.mode == "freeze":
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    peers[src].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
