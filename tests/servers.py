"""Real Redis, Redis Cluster and memcached processes for the test suite.

Each server listens on a loopback port the suite owns. ``start()`` first asks the port in
the server's own protocol: if something already answers correctly it is reused and left
running afterwards (``owned=False``); otherwise the binary is started with
``subprocess.Popen`` (``owned=True``) and ``stop()`` ends it and removes its temp dir.

``kill()`` and ``restart()`` exist for fault-injection tests; they refuse to touch a
server the suite did not start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

__all__ = [
    "DEBIAN_PACKAGES",
    "MemcachedServer",
    "RedisCluster",
    "RedisServer",
    "ServerError",
    "ServerProcess",
    "find_binary",
    "free_port",
    "free_ports",
    "redis_command",
]

#: Debian package that provides each binary, for the "how to install" hint.
DEBIAN_PACKAGES = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "memcached": "memcached",
}

LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.05
_SOCKET_TIMEOUT = 1.0


class ServerError(RuntimeError):
    """A test server could not be found, started, stopped or queried."""


def find_binary(name: str) -> str:
    """Return the path of executable ``name``, or raise a ServerError naming its package."""
    path = shutil.which(name)
    if path is None:
        package = DEBIAN_PACKAGES.get(name, name)
        raise ServerError(
            f"{name!r} not found on PATH; install it with "
            f"`apt-get install -y {package}` (or run scripts/test, which does)"
        )
    return path


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    return free_ports(1, host=host)[0]


def free_ports(count: int, host: str = LOOPBACK, bus_offset: int = 0) -> list[int]:
    """Return ``count`` distinct free ports; with ``bus_offset``, ``port + offset`` is free too.

    A Redis Cluster node also listens on its cluster bus, ``port + 10000``.
    """
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port in ports or (bus_offset and not _bindable(host, port + bus_offset)):
            continue
        ports.append(port)
    return ports


def _bindable(host: str, port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _encode_command(args: Sequence[str]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def redis_command(host: str, port: int, *args: str, timeout: float = _SOCKET_TIMEOUT) -> str:
    """Send one command over RESP and return its scalar reply as text.

    Raises OSError when nothing answers and ServerError on an error reply. Only the reply
    types the harness needs (simple, error, integer, bulk) are understood.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode_command(args))
        reader = sock.makefile("rb")
        line = reader.readline()
        if not line.endswith(b"\r\n"):
            raise OSError(f"truncated reply from {host}:{port}")
        kind, body = line[:1], line[1:-2].decode()
        if kind in (b"+", b":"):
            return body
        if kind == b"-":
            raise ServerError(f"{host}:{port} {' '.join(args)}: {body}")
        if kind == b"$":
            length = int(body)
            if length < 0:
                return ""
            return reader.read(length + 2)[:-2].decode()
        raise OSError(f"unexpected reply {line!r} from {host}:{port}")


def _memcached_exchange(host: str, port: int, command: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=_SOCKET_TIMEOUT) as sock:
        sock.sendall(command)
        return sock.makefile("rb").readline()


_OWNED: set[ServerProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    # Safety net for an interpreter exit that skipped fixture teardown.
    for server in list(_OWNED):
        server.stop()


class ServerProcess:
    """One server process on a loopback port; subclasses say how to run and ping it."""

    binary = ""
    name = "server"

    def __init__(self, port: int, host: str = LOOPBACK, startup_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        #: True while this object manages a process it started; False for a reused server.
        self.owned = False
        self.tmpdir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host}:{self.port}, owned={self.owned})"

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the owned, running process, else None."""
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        """The argv that starts the server; ``self.tmpdir`` is set when it is called."""
        raise NotImplementedError

    def is_up(self) -> bool:
        """True when the port answers this server's protocol."""
        raise NotImplementedError

    def start(self) -> None:
        """Reuse a server already answering on the port, or start one and wait for it."""
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is None and not self.owned and self.is_up():
            self.owned = False
            return
        argv0 = find_binary(self.binary)
        if self.tmpdir is None:
            self.tmpdir = tempfile.mkdtemp(prefix=f"stockpyle-{self.name}-{self.port}-")
        self._log = os.path.join(self.tmpdir, "server.log")
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                [argv0, *self.command()[1:]],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.owned = True
        _OWNED.add(self)
        self._wait_until_up()

    def stop(self, *, keep_files: bool = False) -> None:
        """Stop an owned server gracefully (SIGTERM, then wait) and remove its temp dir.

        A reused server is left running. ``keep_files=True`` keeps the temp dir so a later
        ``start()`` resumes from it (a cluster node's ``nodes.conf``).
        """
        if not self.owned:
            return
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        if not keep_files:
            self._remove_files()

    def kill(self) -> None:
        """SIGKILL an owned server and wait for it; its temp dir stays for ``restart()``."""
        self._require_owned("kill")
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL)
                self._proc.wait()
            self._proc = None

    def restart(self) -> None:
        """Stop (if running) and start the owned server again on the same port and dir."""
        self._require_owned("restart")
        self.stop(keep_files=True)
        self.start()

    def _require_owned(self, action: str) -> None:
        if not self.owned:
            raise ServerError(f"refusing to {action} {self!r}: it was not started by the tests")

    def _remove_files(self) -> None:
        _OWNED.discard(self)
        self.owned = False
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.is_up():
                return
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(_POLL_INTERVAL)
        exited = self._proc is not None and self._proc.poll() is not None
        detail = self._log_tail() or "no output"
        self.stop()
        if exited:
            raise ServerError(f"{self.name} on {self.address} exited at startup: {detail}")
        raise ServerError(
            f"{self.name} on {self.address} did not answer within "
            f"{self.startup_timeout:.0f}s: {detail}"
        )

    def _log_tail(self, lines: int = 10) -> str:
        if self._log is None or not os.path.exists(self._log):
            return ""
        with open(self._log, errors="replace") as log:
            return " | ".join(log.read().strip().splitlines()[-lines:])


class RedisServer(ServerProcess):
    """A standalone redis-server without persistence."""

    binary = "redis-server"
    name = "redis"

    @property
    def url(self) -> str:
        """``redis://host:port/0``."""
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        assert self.tmpdir is not None
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.tmpdir,
        ]

    def execute(self, *args: str) -> str:
        """Run one Redis command and return its scalar reply as text."""
        return redis_command(self.host, self.port, *args)

    def is_up(self) -> bool:
        try:
            return self.execute("PING") == "PONG"
        except (OSError, ServerError):
            return False

    def flushdb(self) -> None:
        """Empty the selected database (db 0)."""
        self.execute("FLUSHDB")


class RedisClusterNode(RedisServer):
    """A redis-server started with cluster mode on; its nodes.conf lives in its temp dir."""

    name = "redis-cluster-node"

    def command(self) -> list[str]:
        assert self.tmpdir is not None
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            os.path.join(self.tmpdir, f"nodes-{self.port}.conf"),
            "--cluster-node-timeout",
            "2000",
        ]

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict; raises ServerError when cluster mode is off."""
        text = self.execute("CLUSTER", "INFO")
        pairs = (line.strip().partition(":") for line in text.splitlines())
        return {key: value for key, sep, value in pairs if sep}


class RedisCluster:
    """Three (or more) master-only Redis Cluster nodes covering all 16384 slots."""

    def __init__(
        self,
        ports: Sequence[int] = (17001, 17002, 17003),
        host: str = LOOPBACK,
        formation_timeout: float = 30.0,
    ) -> None:
        if len(ports) < 3:
            raise ValueError("a Redis Cluster needs at least 3 master nodes")
        self.host = host
        self.formation_timeout = formation_timeout
        self.nodes = [RedisClusterNode(port, host) for port in ports]

    def __repr__(self) -> str:
        return f"RedisCluster({', '.join(n.address for n in self.nodes)})"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node."""
        return [(node.host, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node."""
        return self.nodes[0].url

    @property
    def owned(self) -> bool:
        """True when the tests started at least one of the nodes."""
        return any(node.owned for node in self.nodes)

    def node(self, port: int) -> RedisClusterNode:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def is_up(self) -> bool:
        """True when every node answers and reports ``cluster_state:ok`` for all nodes."""
        expected = str(len(self.nodes))
        try:
            infos = [node.cluster_info() for node in self.nodes]
        except (OSError, ServerError):
            return False
        return all(
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_assigned") == "16384"
            and info.get("cluster_known_nodes") == expected
            for info in infos
        )

    def start(self) -> None:
        """Start (or reuse) the nodes, form the cluster if needed, wait for state ok."""
        try:
            for node in self.nodes:
                node.start()
            if self.is_up():
                return
            for node in self.nodes:
                node.cluster_info()  # raises if a reused node has cluster mode off
            for node in self.nodes:
                # RESET refuses masters holding keys; HARD also forgets old node ids.
                node.execute("FLUSHALL")
                node.execute("CLUSTER", "RESET", "HARD")
            self._create()
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        argv = [
            find_binary("redis-cli"),
            "--cluster",
            "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.formation_timeout,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()[-10:]
            raise ServerError(f"redis-cli --cluster create failed: {' | '.join(output)}")

    def wait_until_ok(self, timeout: float | None = None) -> None:
        """Block until every node reports ``cluster_state:ok``; ServerError on timeout."""
        limit = self.formation_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.is_up():
                return
            time.sleep(0.1)
        raise ServerError(f"{self!r} did not reach cluster_state:ok within {limit:.0f}s")

    def stop_node(self, port: int) -> None:
        """Stop one owned node, keeping its nodes.conf so ``start_node`` rejoins it."""
        node = self.node(port)
        node._require_owned("stop")
        node.stop(keep_files=True)

    def kill_node(self, port: int) -> None:
        """SIGKILL one owned node (its nodes.conf stays)."""
        self.node(port).kill()

    def start_node(self, port: int, *, wait: bool = True) -> None:
        """Start a stopped node again with its old identity; optionally wait for state ok."""
        self.node(port).start()
        if wait:
            self.wait_until_ok()

    def flushall(self) -> None:
        """Delete every key on every node."""
        for node in self.nodes:
            node.execute("FLUSHALL")

    def stop(self) -> None:
        """Stop the owned nodes and remove their files; reused nodes keep running."""
        for node in self.nodes:
            node.stop()


class MemcachedServer(ServerProcess):
    """A memcached with TCP only (``-U 0``) and 64 MB of memory."""

    binary = "memcached"
    name = "memcached"

    def command(self) -> list[str]:
        argv = [self.binary, "-l", self.host, "-p", str(self.port), "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            # memcached exits with "can't run as root without the -u switch".
            argv += ["-u", "root"]
        return argv

    def is_up(self) -> bool:
        try:
            return _memcached_exchange(self.host, self.port, b"version\r\n").startswith(
                b"VERSION "
            )
        except OSError:
            return False

    def flush_all(self) -> None:
        """Invalidate every item."""
        reply = _memcached_exchange(self.host, self.port, b"flush_all\r\n")
        if reply != b"OK\r\n":
            raise ServerError(f"flush_all on {self.address} answered {reply!r}")
