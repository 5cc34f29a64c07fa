"""The asyncrl wire protocol: message types, the msgpack header, and frames <-> (header, tree).

Owns what a message is and how it is checked; it does not own sockets (``transport.py``), keys
(``auth.py``) or what a coordinator does with a message. Never pickles: a peer can only send data.

A message is a list of ZeroMQ frames::

    frame 0      msgpack map: the ``Header`` (type, protocol version, run id, worker id,
                 sequence number, policy version, array schema or shared-memory slot, meta)
    frame 1..n   the raw bytes of each array leaf of the tree, depth first (``asyncrl.data.flatten``)

The schema (plain data from ``asyncrl.data.flatten``) sits in the header as an embedded msgpack
``bin``: a sender packs it once per batch layout, and a receiver checks each distinct schema once
(with ``asyncrl.data.unflatten``) and afterwards rebuilds trees from a cached plan, so a stream of
same-shaped batches costs a few microseconds per message on each side.

Array frames are passed to ZeroMQ as the numpy arrays themselves (no copy on send) and come back
as numpy views of the received frames (no copy on receive). A message whose arrays live
in a shared-memory slot carries no array frames: its header names the slot instead (see
``transport.ShmReceiver``).

``decode`` trusts nothing: garbage bytes, truncated or extra frames, frames of the wrong size,
oversize messages, unknown message types, unknown header keys and values of the wrong type all
raise one exception type, ``ProtocolError(reason)``; a peer speaking another protocol version
raises its subclass ``VersionMismatch`` so the coordinator can tell the peer why it is refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from asyncrl.data import (
    WireError,
    example_schema,
    flatten,
    is_namedarraytuple,
    tree_leaves,
    unflatten,
)

PROTOCOL_VERSION = 1
"""Bump on any change a peer of the previous version could not read (types, keys, meaning)."""

PROTOCOL_KEY = "asyncrl"
"""Header key whose value is the protocol version; its absence marks a foreign message."""

DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20
"""Largest accepted message (all frames together); Pong 8 envs x T=128 is 29 MB."""

MAX_HEADER_BYTES = 256 * 2**10
"""Largest accepted header frame (a schema of a few hundred leaves is a few kB, a worker's
config a few kB). msgpack expands hostile bytes ~65x into Python objects: 16 MB at most,
transient (parsed headers are never kept; see the plan cache below)."""

MAX_FRAMES = 1 + 1024
"""Most frames in a message: the header and up to 1024 array leaves (Samples have ~15)."""

# msgpack containers in a header: no legitimate header has a longer array or a bigger map.
_UNPACK_LIMITS = {"max_array_len": 65_536, "max_map_len": 4_096}

SHM_NAME_PREFIX = "asyncrl_"
"""Shared-memory segments named in a header must start with this (see asyncrl.data.buffer)."""


class MsgType(enum.IntEnum):
    """What a message means. Values are on the wire: append, never renumber."""

    REGISTER = 1  # worker -> coordinator: hello; meta: host identity / locality probe, envs
    REGISTERED = 2  # coordinator -> worker: accepted; meta: transport path, run settings
    REFUSED = 3  # coordinator -> worker: not accepted; meta["reason"] says why
    HEARTBEAT = 4  # both ways: I am alive (meta may carry counters)
    SAMPLES = 5  # worker -> coordinator: one batch of T steps (frames or shm slot)
    PARAMS = 6  # coordinator/optimizer -> workers: agent parameters at policy_version
    ACT_REQUEST = 7  # worker -> inference: observations to act on
    ACT_REPLY = 8  # inference -> worker: actions (and agent info)
    CONFIG = 9  # coordinator -> worker: plain-data env spec / agent config
    STOP = 10  # coordinator -> worker: finish and exit
    ERROR = 11  # either way: your message was dropped; meta["reason"] says why
    RELEASE = 12  # receiver -> sender: shm slot ``slot`` may be reused
    BYE = 13  # worker -> coordinator: leaving on purpose
    METRICS = 14  # worker -> coordinator: episode returns/lengths etc. in meta
    REPLAY_CONFIG = 15  # learner -> replay service: buffer kind and settings, example step
    REPLAY_APPEND = 16  # -> replay service: [t, B] steps (+ final observations of truncations)
    REPLAY_SAMPLE = 17  # learner -> replay service: meta batch_size (and beta)
    REPLAY_BATCH = 18  # replay service -> learner: one sampled minibatch
    REPLAY_PRIORITIES = 19  # learner -> replay service: indices and new |TD errors|
    REPLAY_STATE = 20  # learner -> replay service: send (or, with arrays, load) the contents
    REPLAY_OK = 21  # replay service -> learner: done (meta: size, steps written)
    LEARN = 22  # coordinator -> learner: learner slot ``meta.slot`` holds a batch; finals as frames
    LEARNED = 23  # learner -> coordinator: done with a slot (or, no slot: ready); params as frames
    LEARNER_STATE = 24  # coordinator <-> learner: write the state to meta.path / it is written


class ProtocolError(ValueError):
    """A message that is not a valid asyncrl message; ``reason`` says what is wrong.

    ``peer`` is the ROUTER identity of the sender when known (set by ``transport.recv_from``).
    """

    def __init__(self, reason: str, peer: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.peer = peer


class VersionMismatch(ProtocolError):
    """A well-formed header of another protocol version (``peer_version``)."""

    def __init__(self, peer_version: Any, peer: bytes | None = None):
        super().__init__(
            f"peer speaks asyncrl protocol {peer_version!r}, this side speaks {PROTOCOL_VERSION}",
            peer,
        )
        self.peer_version = peer_version


@dataclass
class Header:
    """The msgpack header of every message (frame 0).

    ``schema`` is set by ``encode`` from the tree (plain data from ``asyncrl.data.flatten``);
    ``slot``/``shm`` name a shared-memory slot instead (``shm`` is ``{"name": ...}``, or the
    full ``SharedHandle.to_dict()`` the first time a receiver sees that segment).
    ``meta`` is a small free-form plain-data dict (reasons, counters, host identity).
    """

    type: MsgType
    run_id: str = ""
    worker_id: str = ""
    seq: int = 0
    policy_version: int = 0
    schema: Any = None
    slot: int | None = None
    shm: dict | None = None
    meta: dict = field(default_factory=dict)
    version: int = PROTOCOL_VERSION

    def to_wire(self, schema_bytes: bytes | None = None) -> dict:
        """The msgpack-ready map; ``schema_bytes`` is ``pack_schema(self.schema)`` if known."""
        d = {
            PROTOCOL_KEY: self.version,
            "type": int(self.type),
            "run_id": self.run_id,
            "worker_id": self.worker_id,
            "seq": self.seq,
            "policy_version": self.policy_version,
        }
        # Optional keys are omitted when empty so that slot notifications stay small.
        if self.schema is not None:
            d["schema"] = schema_bytes if schema_bytes is not None else pack_schema(self.schema)
        if self.slot is not None:
            d["slot"] = self.slot
        if self.shm is not None:
            d["shm"] = self.shm
        if self.meta:
            d["meta"] = self.meta
        return d

    def reply(self, type: MsgType, **changes: Any) -> Header:
        """A header of ``type`` for the same run and worker (e.g. RELEASE for a slot)."""
        h = Header(type, self.run_id, self.worker_id, self.seq, self.policy_version)
        for k, v in changes.items():
            setattr(h, k, v)
        return h


_ZmqFrame = zmq.Frame

_REQUIRED = {PROTOCOL_KEY, "type", "run_id", "worker_id", "seq", "policy_version"}
_KNOWN = _REQUIRED | {"schema", "slot", "shm", "meta"}


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def pack_schema(schema: Any) -> bytes:
    return msgpack.packb(schema, use_bin_type=True)


def pack_header(header: Header, schema_bytes: bytes | None = None) -> bytes:
    return msgpack.packb(header.to_wire(schema_bytes), use_bin_type=True)


def encode(header: Header, tree: Any = None) -> list[Any]:
    """Frames for ``header`` and (optionally) an array tree: [msgpack header, *leaf arrays].

    The leaves are returned as the (contiguous) arrays themselves; send with ``copy=False`` so
    that ZeroMQ reads them in place. Non-contiguous leaves and torch tensors are handled by
    ``flatten`` (copied once / viewed). A message with a ``slot`` carries no tree.
    """
    if tree is None:
        return [pack_header(header)]
    if header.slot is not None:
        raise ValueError("a shared-memory slot message carries no tree; pass tree=None")
    schema, buffers = flatten(tree)
    header.schema = schema
    return [pack_header(header), *buffers]


class _Plan:
    """A schema already checked against real frames: leaf (dtype, shape, nbytes), a template."""

    __slots__ = ("schema", "leaves", "assemble")

    def __init__(self, schema: Any, tree: Any):
        self.schema = schema
        self.assemble = _assembler(tree)
        self.leaves = [(leaf.dtype, leaf.shape, leaf.nbytes) for leaf in tree_leaves(tree)]

    def build(self, buffers: list[Any]) -> Any:
        if len(buffers) != len(self.leaves):
            more = "more" if len(buffers) > len(self.leaves) else "fewer"
            raise ProtocolError(
                f"frames do not match the schema: {more} frames ({len(buffers)}) than the "
                f"schema names ({len(self.leaves)})"
            )
        arrays = []
        for buf, (dtype, shape, nbytes) in zip(buffers, self.leaves):
            size = buf.nbytes if type(buf) is memoryview else _nbytes(buf)
            if size != nbytes:
                raise ProtocolError(
                    f"frames do not match the schema: frame of {size} bytes, "
                    f"schema expects {nbytes}"
                )
            arrays.append(np.frombuffer(buf, dtype).reshape(shape))
        return self.assemble(iter(arrays))


def _assembler(template: Any) -> Any:
    """A function that rebuilds ``template``'s tree type from an iterator over its leaves."""
    if is_namedarraytuple(template):
        cls = type(template)
        parts = [_assembler(child) for child in template]
        return lambda leaves: cls(*[part(leaves) for part in parts])
    if template is None:
        return lambda leaves: None
    return next


def _unpack_schema(schema_bytes: bytes) -> Any:
    try:
        schema = msgpack.unpackb(
            schema_bytes, raw=False, strict_map_key=True, ext_hook=_refuse_ext, **_UNPACK_LIMITS
        )
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError(f"schema is not msgpack: {type(e).__name__}"[:200]) from None
    if not isinstance(schema, dict):
        raise ProtocolError("header 'schema' must be a map")
    return schema


def _first_build(schema_bytes: bytes, buffers: list[Any]) -> tuple[Any, Any]:
    """Check a new schema against its frames with ``asyncrl.data.unflatten``; remember it."""
    schema = _unpack_schema(schema_bytes)
    try:
        tree = unflatten(schema, buffers)
    except WireError as e:
        raise ProtocolError(f"frames do not match the schema: {e}") from None
    except (ValueError, TypeError, RecursionError, KeyError) as e:
        raise ProtocolError(f"malformed schema: {type(e).__name__}: {e}"[:200]) from None
    # Keep the schema as rebuilt from the tree (``example_schema``): whatever else a peer put
    # into its schema (unknown keys, padding) is gone before anything is remembered.
    schema = example_schema(tree)
    global _PLAN_BYTES
    if len(schema_bytes) <= _MAX_PLAN_KEY_BYTES:
        if _PLAN_BYTES + len(schema_bytes) > _MAX_PLAN_BYTES or len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
            _PLAN_BYTES = 0
        _PLANS[schema_bytes] = _Plan(schema, tree)
        _PLAN_BYTES += len(schema_bytes)
    return schema, tree


# The plan cache: distinct schemas remembered (a peer cycling schemas only costs CPU). Bounded
# in bytes: keys of at most 64 KiB, 4 MiB of keys in all; a plan holds a canonical schema and
# one (dtype, shape, nbytes) per leaf, about the size of its key.
_PLANS: dict[bytes, _Plan] = {}
_PLAN_BYTES = 0
_MAX_PLANS = 256
_MAX_PLAN_KEY_BYTES = 64 * 2**10
_MAX_PLAN_BYTES = 4 * 2**20


def _nbytes(frame: Any) -> int:
    try:
        return memoryview(frame).nbytes
    except TypeError:
        raise ProtocolError(f"frame of type {type(frame).__name__} is not a buffer") from None


def _int(d: dict, key: str, minimum: int | None = None) -> int:
    v = d[key]
    if type(v) is not int or (minimum is not None and v < minimum):
        raise ProtocolError(f"header {key!r} must be an int >= {minimum}, got {v!r}"[:200])
    return v


def _str(d: dict, key: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise ProtocolError(f"header {key!r} must be a string, got {type(v).__name__}")
    return v


def _parse_header(frame: Any) -> tuple[Header, bytes | None]:
    """Parse and check frame 0: (header without its schema, the packed schema or None)."""
    size = _nbytes(frame)
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        d = msgpack.unpackb(
            frame, raw=False, strict_map_key=True, ext_hook=_refuse_ext, **_UNPACK_LIMITS
        )
    except ProtocolError:
        raise
    except Exception as e:  # any failure to parse foreign bytes is the same verdict
        raise ProtocolError(f"header is not msgpack: {type(e).__name__}: {e}"[:200]) from None
    if type(d) is not dict or PROTOCOL_KEY not in d:
        raise ProtocolError("not an asyncrl message (no protocol key in the header)")
    version = d[PROTOCOL_KEY]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise VersionMismatch(version)
    if not _REQUIRED <= d.keys() <= _KNOWN:
        missing, unknown = _REQUIRED - d.keys(), d.keys() - _KNOWN
        if missing:
            raise ProtocolError(f"header lacks {sorted(missing)}")
        raise ProtocolError(f"header has unknown keys {sorted(unknown)[:5]}")
    type_value, run_id, worker_id = d["type"], d["run_id"], d["worker_id"]
    seq, policy_version = d["seq"], d["policy_version"]
    get = d.get
    schema_bytes, slot, shm, meta = get("schema"), get("slot"), get("shm"), get("meta", {})
    # One test for the common, valid case; the detailed checks below name what is wrong.
    valid = (
        type(type_value) is int
        and type_value in _TYPES
        and type(run_id) is str
        and type(worker_id) is str
        and type(seq) is int
        and seq >= 0
        and type(policy_version) is int
        and type(meta) is dict
        and (slot is None) == (shm is None)
        and (schema_bytes is None or (type(schema_bytes) is bytes and slot is None))
        and (slot is None or (type(slot) is int and slot >= 0 and _valid_shm(shm)))
    )
    if not valid:
        _explain(d)
    return Header(
        _TYPES[type_value], run_id, worker_id, seq, policy_version, None, slot, shm, meta, version
    ), schema_bytes


_TYPES = {int(t): t for t in MsgType}


def _valid_shm(shm: Any) -> bool:
    name = shm.get("name") if type(shm) is dict else None
    return type(name) is str and name.startswith(SHM_NAME_PREFIX) and len(name) <= 64


def _explain(d: dict) -> None:
    """Raise the ProtocolError that says what is wrong with a header that failed the fast test."""
    type_value = _int(d, "type")
    if type_value not in _TYPES:
        raise ProtocolError(f"unknown message type {type_value}")
    _str(d, "run_id")
    _str(d, "worker_id")
    _int(d, "seq", 0)
    _int(d, "policy_version")
    schema_bytes, slot, shm = d.get("schema"), d.get("slot"), d.get("shm")
    if schema_bytes is not None and type(schema_bytes) is not bytes:
        raise ProtocolError("header 'schema' must be msgpack bin (an embedded schema)")
    if slot is not None and (type(slot) is not int or slot < 0):
        raise ProtocolError(f"header 'slot' must be an int >= 0, got {slot!r}"[:200])
    if shm is not None and not _valid_shm(shm):
        raise ProtocolError(f"header 'shm' must name an {SHM_NAME_PREFIX}* segment")
    if (slot is None) != (shm is None):
        raise ProtocolError("header 'slot' and 'shm' come together")
    if slot is not None and schema_bytes is not None:
        raise ProtocolError("a message has either a schema (frames) or a slot (shm), not both")
    if type(d.get("meta", {})) is not dict:
        raise ProtocolError("header 'meta' must be a map")
    raise ProtocolError("malformed header")  # pragma: no cover - the fast test and this agree


def decode_header(frame: Any) -> Header:
    """Parse and check frame 0 alone (its schema unchecked against any frames).

    Raises ``ProtocolError`` / ``VersionMismatch``.
    """
    header, schema_bytes = _parse_header(frame)
    if schema_bytes is not None:
        header.schema = _unpack_schema(schema_bytes)
    return header


def decode(frames: list[Any], max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> tuple[Header, Any]:
    """Check and parse a message: (``Header``, tree of views of the frames, or None).

    ``frames`` are bytes, memoryviews, numpy arrays or ``zmq.Frame`` objects. Any defect raises
    ``ProtocolError`` (``VersionMismatch`` for another protocol version); nothing is unpickled.
    For a shared-memory message the tree is None here; ``transport`` resolves the slot.
    """
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError("empty message")
    if len(frames) > MAX_FRAMES:
        raise ProtocolError(f"message of {len(frames)} frames exceeds the limit of {MAX_FRAMES}")
    # zmq.Frame -> its memoryview; bytes, memoryviews and arrays are buffers already.
    buffers = [f.buffer if type(f) is _ZmqFrame else f for f in frames]
    total = 0
    for b in buffers:
        total += len(b) if type(b) is bytes else _nbytes(b)
    if total > max_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {max_bytes}")
    header, schema_bytes = _parse_header(buffers[0])
    if schema_bytes is None:
        if len(frames) != 1:
            raise ProtocolError(f"{len(frames) - 1} array frames but no schema in the header")
        return header, None
    plan = _PLANS.get(schema_bytes)
    if plan is None:
        header.schema, tree = _first_build(schema_bytes, buffers[1:])
        return header, tree
    # ``header.schema`` is shared by the messages of one layout: read it, do not modify it.
    header.schema = plan.schema
    return header, plan.build(buffers[1:])
