"""A network partition between clients and a server that keeps running, with its data.

A server killed and started again comes back empty: a write it missed meanwhile can leave
nothing stale behind, so a test of the catch-up of missed writes passes whether or not
the catch-up removes anything.  A server stopped with SIGSTOP applies the commands it
received once it goes on: nothing is missed at all.  A partition is the fault those
tests mean: the clients lose the server, which keeps every entry it held; what they
write meanwhile never reaches it; and when the link is back, the old entries are still
there for the catch-up to remove.

:class:`Partition` is a TCP proxy on a loopback port, in a thread of its own, that
forwards bytes between its clients and the server until it is :meth:`~Partition.cut`,
and again once it is :meth:`~Partition.heal` ed.  It was written here rather than taken
from a package: Toxiproxy (the maintained tool for this) is a Go server that neither
PyPI nor Debian ships (``toxiproxy-python`` is only its client), the small TCP proxies on
PyPI were last released between 2012 and 2021, and forwarding is the smaller part of
this module: the rest is cutting and healing.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["CUTS", "Partition"]

T = TypeVar("T")

#: How a link is cut: ``"reset"`` resets every connection, open or new (a firewall that
#: rejects with a TCP reset: clients fail at once); ``"silent"`` drops every byte either
#: way and answers nothing (a firewall that drops: clients wait for their timeouts).
CUTS: tuple[Literal["reset"], Literal["silent"]] = ("reset", "silent")

#: Seconds a call waits for the proxy's thread: a hang guard, never a timing bound.
_CALL_TIMEOUT = 30.0
_CHUNK = 65536
#: SO_LINGER on, with a zero timeout: close() sends a reset, not a FIN.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a TCP reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    writer.transport.abort()


class _Link:
    """One client's connection and the proxy's connection to the server on its behalf."""

    def __init__(self, client: asyncio.StreamWriter, silent: bool) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        #: Bytes are dropped, both ways, until the link is reset.
        self.silent = silent
        self.task = asyncio.current_task()
        #: The client sent a request whose reply has not been passed on yet.
        self.asked = False

    def close(self) -> None:
        """Reset the client's connection and close the server's: the forwarding ends as
        its reads find them closed (a cancelled task would be logged as an error)."""
        _reset(self.client)
        if self.server is not None:
            self.server.transport.abort()


class Partition:
    """A TCP proxy on ``listen_host`` in front of the server at ``host``:``port``,
    whose link can be cut and healed while the server runs on.

    Clients connect to :attr:`port` instead of the server's.  :meth:`cut` and
    :meth:`heal` return once the proxy applies them: no byte a client sends after
    ``cut()`` returns reaches the server before ``heal()``.  :meth:`close` (or leaving a
    ``with`` block) ends the proxy and its thread.

    ``dropped`` counts the bytes clients sent that a silent cut kept from the server, and
    ``resets`` the client connections a cut or a heal reset.

    A slow link: with :attr:`delay` set, each reply reaches its client that many seconds
    after the server sent it, on every connection at once.  ``most_in_flight`` counts
    the most connections that were waiting for a reply at the same time: requests that
    overlap rather than queue.
    """

    def __init__(self, host: str, port: int, listen_host: str = "127.0.0.1") -> None:
        self.upstream = (host, port)
        self.mode: Literal["reset", "silent"] | None = None
        self.dropped = 0
        self.resets = 0
        #: Seconds each reply is held before it is passed on (a slow link); 0: none.
        self.delay = 0.0
        self.most_in_flight = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="stress-partition", daemon=True)
        self._thread.start()
        try:
            self._server = self._call(asyncio.start_server(self._serve, listen_host, 0))
        except BaseException:
            self._stop()
            raise
        self.host = listen_host
        self.port: int = self._server.sockets[0].getsockname()[1]

    def __repr__(self) -> str:
        state = f"cut ({self.mode})" if self.mode else "healed"
        server = f"{self.upstream[0]}:{self.upstream[1]}"
        return f"Partition({self.address} -> {server}, {state})"

    def __enter__(self) -> Partition:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        """``host:port`` of the proxy, for the clients."""
        return f"{self.host}:{self.port}"

    def cut(self, mode: Literal["reset", "silent"] = "reset") -> None:
        """Cut the link: every connection open now, and each one made until :meth:`heal`,
        is reset (``"reset"``) or held while nothing passes (``"silent"``)."""
        if mode not in CUTS:
            raise ValueError(f"a cut is one of {CUTS}, got {mode!r}")
        self._call(self._cut(mode))

    def heal(self) -> None:
        """Forward again; connections a silent cut held are reset (bytes were dropped in
        the middle of them), so their clients connect afresh."""
        self._call(self._heal())

    def close(self) -> None:
        """Stop listening, reset every connection and end the proxy's thread."""
        if self._thread.is_alive():
            try:
                self._call(self._shutdown())
            finally:
                self._stop()

    # -- in the proxy's thread ----------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.close()

    def _stop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CALL_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError(f"{self!r}: its thread did not end")

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CALL_TIMEOUT)

    async def _cut(self, mode: Literal["reset", "silent"]) -> None:
        self.mode = mode
        for link in list(self._links):
            if mode == "reset":
                self._drop(link)
            else:
                link.silent = True

    async def _heal(self) -> None:
        self.mode = None
        for link in [link for link in self._links if link.silent]:
            self._drop(link)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [link.task for link in self._links if link.task is not None]
        for link in list(self._links):
            self._drop(link)
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _drop(self, link: _Link) -> None:
        self._links.discard(link)
        self.resets += 1
        link.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            self.resets += 1
            _reset(writer)
            return
        link = _Link(writer, silent=self.mode == "silent")
        self._links.add(link)
        try:
            if link.silent:  # the client's bytes go nowhere until heal() resets it
                await self._forward(link, reader, None)
                return
            try:
                from_server, link.server = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # the server itself is unreachable: so is the proxy
            if link not in self._links:
                return  # reset by a cut while it connected
            await asyncio.gather(
                self._forward(link, reader, link.server),
                self._forward(link, from_server, writer),
            )
        finally:
            self._links.discard(link)
            link.close()

    async def _forward(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter | None,
    ) -> None:
        """Copy ``source`` to ``sink`` until either end closes, dropping what arrives
        while the link is silent.  Each read is checked in this one thread, after it
        completes: nothing read after a cut was applied is passed on."""
        to_server = sink is not link.client
        try:
            while data := await source.read(_CHUNK):
                if link.silent or sink is None:
                    if to_server:
                        self.dropped += len(data)
                    continue
                if to_server:
                    link.asked = True
                    in_flight = sum(other.asked for other in self._links)
                    self.most_in_flight = max(self.most_in_flight, in_flight)
                elif self.delay:
                    await asyncio.sleep(self.delay)
                sink.write(data)
                await sink.drain()
                if not to_server:
                    link.asked = False
        except OSError:
            pass  # either end was reset
        finally:
            link.close()  # the other direction ends too
