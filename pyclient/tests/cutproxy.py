"""A TCP proxy on loopback whose connections the test can cut at will, like a dropped Wi-Fi
or a proxy timing out: ``cut()`` shuts down both sides of every open connection at once."""

import socket
import threading
from typing import List, Set, Tuple


class _Pair:
    """One client connection and its connection to the target, closed once both pumps end."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.sockets = (client, upstream)
        self._pumps = 2
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pump_done(self) -> bool:
        with self._lock:
            self._pumps -= 1
            if self._pumps:
                return False
        for s in self.sockets:
            s.close()
        return True


class CutProxy:
    """Forwards 127.0.0.1:<port> to ``target`` (host, port), one thread per direction."""

    def __init__(self, target: Tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: Set[_Pair] = set()
        #: Connections closed by cut(), over the proxy's life.
        self.cut_connections = 0
        #: Connections accepted, over the proxy's life.
        self.accepted = 0
        threading.Thread(target=self._accept, name="cutproxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> int:
        """Shuts down every open connection, both sides; returns how many there were."""
        with self._lock:
            pairs: List[_Pair] = list(self._open)
            self._open.clear()
            self.cut_connections += len(pairs)
        for pair in pairs:
            pair.shutdown()
        return len(pairs)

    def close(self) -> None:
        # shutdown() wakes a thread blocked in accept() on Linux; close() alone does not.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            pair = _Pair(client, upstream)
            with self._lock:
                self._open.add(pair)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(pair, src, dst), name="cutproxy-pump", daemon=True
                ).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            if pair.pump_done():
                with self._lock:
                    self._open.discard(pair)
