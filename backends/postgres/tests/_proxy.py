"""A small threaded TCP forwarder that a test puts between one client and the server, to
partition that client from it and heal the partition again.

``cut()`` partitions *silently*: the proxy stops forwarding in both directions and keeps
every connection open, holding the bytes it has read. That is what a real partition does to
a TCP connection: packets stop arriving, nothing is closed (no FIN, no RST reaches either
side), and the client cannot tell a partition from a slow server. TCP retransmits what it
sent, so when the network comes back inside the retransmission timeout every byte arrives,
in order, late. ``heal()`` does exactly that: the held bytes go on, in order, and forwarding
resumes. A silent partition is the harder case for a job store: a worker that sees an error
knows something is wrong, while a worker behind a silent partition keeps believing it holds
its lease, and a write it sent before or during the partition reaches the server only after
another worker has taken the job over. A client that connects while the proxy is cut is
accepted and held too (as a SYN that gets no answer would be): it reaches the server only
after the heal.

``reset()`` is the other kind of partition, one long enough for a middlebox or a kernel to
give up: every open connection is aborted (an RST to both sides). The proxy keeps accepting
new connections.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

__all__ = ["TcpProxy"]

#: How often a blocked pump looks at the proxy's state (closing, healed).
_POLL = 0.05
_CHUNK = 65536


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with an RST rather than a FIN (SO_LINGER with a zero timeout)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and its upstream connection, with a pump for each direction."""

    def __init__(self, proxy: TcpProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.threads: list[threading.Thread] = []
        self.done = threading.Event()
        self._ends = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        thread = threading.Thread(target=self._connect_and_pump, daemon=True, name="proxy-link")
        self.threads.append(thread)
        thread.start()

    def _connect_and_pump(self) -> None:
        proxy = self.proxy
        # A client that arrives during a partition waits for the heal before it reaches the
        # server, as its SYN would.
        if not proxy._wait_open(self):
            self.close()
            return
        try:
            upstream = socket.create_connection(proxy.target, timeout=10)
        except OSError:
            self.close()
            return
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.settimeout(_POLL)
        self.upstream = upstream
        for source, target, name in (
            (self.client, upstream, "proxy-up"),
            (upstream, self.client, "proxy-down"),
        ):
            thread = threading.Thread(
                target=self._pump, args=(source, target), daemon=True, name=name
            )
            self.threads.append(thread)
            thread.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        proxy = self.proxy
        try:
            while not self.done.is_set():
                try:
                    data = source.recv(_CHUNK)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    # A clean end of one direction is passed on as a half-close.
                    with contextlib.suppress(OSError):
                        target.shutdown(socket.SHUT_WR)
                    break
                # Held, not dropped, while the proxy is cut: a partition delays TCP's bytes.
                if not proxy._wait_open(self):
                    break
                try:
                    target.sendall(data)
                except OSError:
                    break
                proxy._count(len(data))
        finally:
            with self._lock:
                self._ends += 1
                both = self._ends == 2
            if both or self.done.is_set():
                self.close()

    def close(self, *, abort: bool = False) -> None:
        self.done.set()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if abort:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()
        self.proxy._forget(self)


class TcpProxy:
    """Forwards connections from ``127.0.0.1:<port>`` to ``target_host:target_port``.

    Use it as a context manager (or call :meth:`close`): every thread and socket it made
    is gone afterwards. :attr:`port` is the port to connect to.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(_POLL)
        #: The port the proxy listens on.
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        #: Connections accepted so far, and bytes forwarded (both directions).
        self.accepted = 0
        self.forwarded = 0
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="proxy-accept")
        self._acceptor.start()

    # -- control -------------------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        """Whether the proxy is partitioned (forwards nothing)."""
        return not self._open.is_set()

    def cut(self) -> None:
        """Partition silently: forward nothing in either direction from now on, close
        nothing, hold what arrives (and the clients that connect) until :meth:`heal`."""
        self._open.clear()

    def heal(self) -> None:
        """End the partition: the held bytes go on, in order, and forwarding resumes."""
        self._open.set()

    def reset(self) -> int:
        """Abort every open connection (an RST to both sides); returns how many.
        New connections are still accepted (and forwarded unless the proxy is cut)."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(abort=True)
        return len(links)

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        with self._lock:
            return len(self._links)

    def close(self) -> None:
        """Stop accepting, close every connection and wait for the proxy's threads."""
        self._closing.set()
        self._open.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._acceptor.join(timeout=5)
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(abort=True)
        for link in links:
            for thread in list(link.threads):
                if thread is not threading.current_thread():
                    thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the threads' side ---------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client.settimeout(_POLL)
            link = _Link(self, client)
            with self._lock:
                if self._closing.is_set():
                    _abort(client)
                    return
                self._links.add(link)
                self.accepted += 1
            link.start()

    def _wait_open(self, link: _Link) -> bool:
        """Wait while the proxy is cut; ``False`` when the link or the proxy is closing."""
        while not self._open.wait(_POLL):
            if link.done.is_set() or self._closing.is_set():
                return False
        return not (link.done.is_set() or self._closing.is_set())

    def _count(self, size: int) -> None:
        with self._lock:
            self.forwarded += size

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
