"""ZeroMQ CURVE authentication for remote workers: key files, server and client socket setup.

Owns keys and the ZAP authenticator; it does not own sockets' lifetimes (``transport.py``) or the
decision what a refused worker is told (the coordinator).

Pattern: the "Ironhouse" setup of the ZeroMQ guide (ch. 5, CURVE + ZAP): the coordinator's
ROUTER is a CURVE server with its own key pair; each worker is a CURVE client with its own key
pair and the server's public key; a ZAP authenticator in the coordinator's process accepts only
client public keys found as ``*.key`` files in one directory. The connection of an unknown key is
refused during the handshake, so it never delivers a message; the refusal is logged (WARNING,
once per key per minute) and the client can see it with ``HandshakeWatch``.

Typical use::

    server_pub, server_secret = generate_keypair(keys_dir, "server")   # `asyncrl keygen`
    auth = start_authenticator(ctx, allowed_dir)       # in the running event loop, before bind
    sock = transport.router(ctx, "tcp://0.0.0.0:5555", curve=ServerCurve(server_secret, auth))
    ...
    sock = transport.dealer(ctx, "tcp://host:5555", "w1", curve=ClientCurve(my_secret, server_pub))
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

ZAP_DOMAIN = "asyncrl"
"""ZAP domain set on server sockets; the authenticator answers for it."""

REFUSAL_LOG_INTERVAL_S = 60.0
"""A client retrying with the same unknown key is logged at WARNING at most this often."""


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether a bind endpoint is reachable from this host only: ``ipc://``/``inproc://``, or
    ``tcp://`` on 127.0.0.0/8, ::1 or ``localhost``. A wildcard (``*``, 0.0.0.0), an interface
    name or any other address is not."""
    import ipaddress

    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


INSECURE_BIND_HINT = (
    "make keys with `asyncrl keygen KEYS_DIR` and pass --keys KEYS_DIR "
    "(or pass --insecure / sampler.insecure=true to accept unauthenticated workers)"
)


def check_bind_security(bind: str, keys: str, insecure: bool) -> str:
    """'' if ``bind`` may be used as given, else the one-line reason it is refused: a
    non-loopback bind needs CURVE keys unless the user explicitly asked for ``insecure``."""
    if not bind or keys or insecure or is_loopback_endpoint(bind):
        return ""
    return (
        f"refusing to bind {bind} without keys: any host that reaches it could join as a "
        f"worker and feed batches into training; {INSECURE_BIND_HINT}"
    )


class AuthenticationFailed(ConnectionError):
    """The server refused this client's CURVE key (or the handshake failed)."""


def generate_keypair(key_dir: str | os.PathLike, name: str = "asyncrl") -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (secret, mode 600) into ``key_dir``.

    Returns (public_file, secret_file). Give the public file to the other side: a worker's
    public file goes into the coordinator's allowed-keys directory; the server's public file
    goes to every worker.
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(str(key_dir), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def write_key_file(
    path: str | os.PathLike, public: bytes | str, secret: bytes | str | None = None
) -> Path:
    """Write a key file in ZeroMQ's certificate format (what ``load_keypair`` and the
    authenticator read) from z85 key text: a public file, or with ``secret`` a secret one (mode
    600). Used where key material arrives as data, e.g. in a launched worker (runtime/cluster.py)."""

    def text(key: bytes | str) -> str:
        return key.decode("ascii") if isinstance(key, bytes) else key

    path = Path(path)
    lines = ["metadata", "curve", f'    public-key = "{text(public)}"']
    if secret is not None:
        lines.append(f'    secret-key = "{text(secret)}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def load_keypair(secret_file: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``.key_secret`` file."""
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key; pass the .key_secret file")
    return public, secret


def load_public_key(public_file: str | os.PathLike) -> bytes:
    """The z85 public key from a ``.key`` (or ``.key_secret``) file."""
    public, _ = zmq.auth.load_certificate(str(public_file))
    return public


class _KeyDirectory:
    """Credentials provider: a client key is allowed when its public file is in ``key_dir``.

    The directory is re-read when an unknown key shows up, so a key added while the coordinator
    runs is accepted without a restart. ``extra_keys`` are allowed as well, without a file (the
    per-run key of launcher-started workers, next to a user's own key directory).
    """

    def __init__(self, key_dir: Path, authenticator: KeyDirectoryAuthenticator, extra_keys=()):
        self.key_dir = key_dir
        self.authenticator = authenticator
        self.keys: set[bytes] = set()
        self.extra: frozenset[bytes] = frozenset(extra_keys)
        self._last_warned: dict[bytes, float] = {}
        self.reload()

    def reload(self) -> None:
        if not self.key_dir.is_dir():
            raise FileNotFoundError(f"allowed-keys directory {self.key_dir} does not exist")
        self.keys = set(zmq.auth.load_certificates(str(self.key_dir)))

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key in self.keys or client_key in self.extra:
            return True
        self.reload()
        if client_key in self.keys:
            return True
        address = self.authenticator.current_address
        self.authenticator.refused.append((client_key.decode("ascii", "replace"), address))
        now = time.monotonic()
        if now - self._last_warned.get(client_key, -1e9) >= REFUSAL_LOG_INTERVAL_S:
            self._last_warned[client_key] = now
            log.warning(
                "refused CURVE client key %s from %s: not in %s",
                client_key.decode("ascii", "replace"),
                address,
                self.key_dir,
            )
        else:
            log.debug("refused CURVE client key %s from %s again", client_key, address)
        return False


class KeyDirectoryAuthenticator(AsyncioAuthenticator):
    """ZAP handler on the asyncio loop that allows only the public keys in one directory.

    ``refused`` lists (client key, address) of every refused handshake, for tests and status.
    """

    def __init__(self, context: zmq.Context, allowed_dir: str | os.PathLike, extra_keys=()):
        super().__init__(context, log=logging.getLogger(__name__ + ".zap"))
        self.current_address = ""
        self.refused: list[tuple[str, str]] = []
        self.provider = _KeyDirectory(Path(allowed_dir), self, extra_keys)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The credentials callback sees only the key; remember the address for the log line.
        # ZAP requests are handled one at a time, so this attribute cannot be interleaved.
        self.current_address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)


def start_authenticator(
    context: zmq.Context, allowed_dir: str | os.PathLike, extra_keys=()
) -> KeyDirectoryAuthenticator:
    """Start the ZAP authenticator for ``context``; call inside the running loop, before bind.
    It allows the public keys in ``allowed_dir`` and the z85 ``extra_keys``.

    Stop it with ``.stop()`` when the server socket is closed.
    """
    authenticator = KeyDirectoryAuthenticator(context, allowed_dir, extra_keys)
    authenticator.start()
    authenticator.configure_curve_callback(ZAP_DOMAIN, credentials_provider=authenticator.provider)
    return authenticator


@dataclass(frozen=True)
class ServerCurve:
    """CURVE server setup for a ROUTER: its secret key file and the running authenticator.

    The authenticator is required: without a ZAP handler libzmq would accept any client key.
    """

    secret_file: str | os.PathLike
    authenticator: KeyDirectoryAuthenticator

    def apply(self, socket: zmq.Socket) -> None:
        if self.authenticator.zap_socket is None:
            raise RuntimeError("start the authenticator (start_authenticator) before the server")
        public, secret = load_keypair(self.secret_file)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True
        socket.zap_domain = ZAP_DOMAIN.encode()


@dataclass(frozen=True)
class ClientCurve:
    """CURVE client setup for a DEALER: its own secret key file and the server's public key."""

    secret_file: str | os.PathLike
    server_public_file: str | os.PathLike

    def apply(self, socket: zmq.Socket) -> None:
        public, secret = load_keypair(self.secret_file)
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = load_public_key(self.server_public_file)


_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class HandshakeWatch:
    """Tells a client whether its (CURVE) handshake succeeded: create before ``connect``.

    ``await watch.wait(timeout)`` returns on success, raises ``AuthenticationFailed`` when the
    server refused the key and ``TimeoutError`` when nothing happened (server unreachable).
    """

    def __init__(self, socket: Any):
        self.socket = socket
        self.monitor = socket.get_monitor_socket(_HANDSHAKE_EVENTS)

    async def wait(self, timeout: float) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0 or not await self.monitor.poll(remaining * 1000):
                    raise TimeoutError(f"no handshake with the server within {timeout:.1f} s")
                event = parse_monitor_message(await self.monitor.recv_multipart())
                kind = event["event"]
                if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return
                if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    raise AuthenticationFailed(
                        f"server {event['endpoint'].decode(errors='replace')} refused this "
                        f"client's key (ZAP status {event['value']}); add its public key file to "
                        "the server's allowed-keys directory"
                    )
                raise AuthenticationFailed(
                    f"handshake with {event['endpoint'].decode(errors='replace')} failed "
                    f"(event {kind!r}, value {event['value']}): wrong server key or not CURVE?"
                )
        finally:
            self.close()

    def close(self) -> None:
        if self.monitor is not None:
            try:
                self.socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            self.monitor = None


async def watch_handshakes(sock: Any, endpoint: str, on_refused) -> None:
    """Server side: count (``on_refused()``) and log connections refused during the CURVE
    handshake, until cancelled. The ZAP handler logs an unknown key itself; a peer without
    CURVE or with another server key fails before ZAP is asked, and only this monitor sees it
    (logged once a minute: a peer retrying in a loop must not flood the log)."""
    import time

    from zmq.utils.monitor import parse_monitor_message

    events = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )
    monitor = sock.get_monitor_socket(events)
    last_logged = -1e9
    try:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            on_refused()
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                continue  # logged by the ZAP handler, with the key
            now = time.monotonic()
            if now - last_logged >= 60.0:
                last_logged = now
                log.warning(
                    "refused a connection to %s: CURVE handshake failed (a worker without "
                    "keys, or with another coordinator's server.key)",
                    endpoint,
                )
    finally:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(linger=0)
