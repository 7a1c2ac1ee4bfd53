"""A TCP proxy on loopback in front of a real server that can go silent, as a peer behind a
network partition does: no reset, no refusal, just no answer.

Silent, it stops moving bytes either way on the connections it holds (the client's kernel
still accepts what it sends, so the client waits on a reply that never comes) and accepts new
connections without ever forwarding them. resume() moves everything again, held bytes included,
as a link that comes back does. A stopped server (connection refused) is what the other fault
tests use; this is the fault they cannot make.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading

HOST = "127.0.0.1"


class SilentProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server((HOST, 0), backlog=1024)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def silence(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def reset(self) -> int:
        """Reset every connection made so far (an RST, as a peer that restarted behind a
        partition answers); new ones are served as before. How many were reset."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(OSError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
        return len(clients)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> SilentProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            with self._lock:
                self._sockets.append(client)
                self._clients.append(client)
                self._threads.append(thread)
            thread.start()

    def _pump(self, client: socket.socket) -> None:
        self._flowing.wait()  # a connection made while silent is held, unanswered
        if self._closed.is_set():
            return
        try:
            upstream = socket.create_connection((HOST, self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.append(upstream)
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            while not self._closed.is_set():
                if not self._flowing.wait(timeout=0.05):
                    continue  # silent: nothing read, so nothing forwarded
                for key, _ in sel.select(timeout=0.05):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                        if not data:
                            raise OSError("closed")
                        peer[src].sendall(data)
                    except OSError:
                        client.close()
                        upstream.close()
                        return
