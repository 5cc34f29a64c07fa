"""Replay store process: holds one replay buffer (uniform, prioritized, frame-based) and serves
the learner: appends of sampler batches (from the local workers, or from a named remote source,
each in its own ring: asyncrl/replay/sources.py), minibatches, priority updates, save/load of contents.
The buffer objects are the same ones the serial mode runs in-process (asyncrl/replay).

Run as ``python -m workers.replay --bind ipc:///path/replay.sock`` (the learner's
``asyncrl.replay.service.ReplayService`` starts it). Pattern: ROUTER here, one DEALER per client;
messages from one client are handled in order (an APPEND before a SAMPLE is in the sample).

Messages: receives REPLAY_CONFIG (kind, settings, example step), REPLAY_APPEND (steps [t, B] and
final observations), REPLAY_SAMPLE (batch size, beta), REPLAY_PRIORITIES, REPLAY_STATE (without
arrays: send contents; with arrays: load them), HEARTBEAT, STOP; sends REPLAY_OK, REPLAY_BATCH,
ERROR (meta reason) for a request it cannot serve. Exits when its parent dies (checked after a
second without messages), removing the socket folder its parent can no longer remove.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np

log = logging.getLogger("asyncrl.replay_service")


def _make_buffer(meta: dict, example):
    from asyncrl.replay import (
        FrameReplay,
        PrioritizedFrameReplay,
        PrioritizedReplay,
        UniformReplay,
    )

    kinds = {
        "uniform": UniformReplay,
        "prioritized": PrioritizedReplay,
        "frame": FrameReplay,
        "prioritized_frame": PrioritizedFrameReplay,
    }
    kind = meta.get("kind")
    if kind not in kinds:
        raise ValueError(f"unknown replay kind {kind!r}; valid: {', '.join(kinds)}")
    kwargs = dict(meta.get("kwargs", {}))
    return kinds[kind](
        example, int(meta["size"]), int(meta["n_envs"]), seed=meta.get("seed"), **kwargs
    )


def serve(bind: str, parent_pid: int = 0, poll_ms: int = 1000) -> int:
    import zmq

    from asyncrl.data import namedarraytuple, tree_map
    from asyncrl.replay.sources import SourcedReplay, holds_sources
    from asyncrl.runtime.protocol import Header, MsgType, ProtocolError, decode, encode
    from asyncrl.runtime.transport import remove_orphaned_ipc

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 500
    sock.sndtimeo = 30_000
    sock.bind(bind)
    buffer = None
    State = None
    orphaned = False

    def reply(peer: bytes, header: Header, tree=None) -> None:
        sock.send_multipart([peer, *encode(header, tree)], copy=False)

    try:
        while True:
            if not sock.poll(poll_ms):
                if parent_pid and os.getppid() != parent_pid:
                    log.warning("parent gone; exiting")
                    orphaned = True
                    return 0
                continue
            frames = sock.recv_multipart(copy=False)
            peer = frames[0].bytes
            try:
                header, tree = decode(frames[1:])
            except ProtocolError as e:
                log.warning("dropped a malformed message: %s", e.reason)
                continue
            t = header.type
            try:
                if t == MsgType.STOP:
                    reply(peer, header.reply(MsgType.REPLAY_OK))
                    return 0
                if t == MsgType.HEARTBEAT:
                    reply(peer, header.reply(MsgType.HEARTBEAT))
                elif t == MsgType.REPLAY_CONFIG:
                    buffer = _make_buffer(header.meta, tree)
                    reply(peer, header.reply(MsgType.REPLAY_OK, meta={"size": buffer.size}))
                elif buffer is None:
                    raise ValueError(f"{t.name} before REPLAY_CONFIG")
                elif t == MsgType.REPLAY_APPEND:
                    final_idx = header.meta.get("final", [])
                    finals = None
                    if final_idx:
                        finals = [
                            (int(tt), int(b), tree_map(lambda x, i=i: x[i], tree.final_observation))
                            for i, (tt, b) in enumerate(final_idx)
                        ]
                    source = header.meta.get("source") or ""
                    if source:  # a remote source: a ring of its own
                        if not isinstance(buffer, SourcedReplay):
                            buffer = SourcedReplay(buffer, int(header.meta.get("max_envs", 1024)))
                        buffer.append(tree.samples, finals, source=str(source))
                    else:
                        buffer.append(tree.samples, finals)
                    if header.meta.get("ack"):
                        reply(peer, header.reply(MsgType.REPLAY_OK, meta={"len": len(buffer)}))
                elif t == MsgType.REPLAY_SAMPLE:
                    if "beta_progress" in header.meta and hasattr(buffer, "anneal_beta"):
                        buffer.anneal_beta(float(header.meta["beta_progress"]))
                    batch = buffer.sample(
                        int(header.meta["batch_size"])
                    )  # the buffer's own seeded rng
                    reply(peer, header.reply(MsgType.REPLAY_BATCH), batch)
                elif t == MsgType.REPLAY_PRIORITIES:
                    buffer.update_priorities(np.asarray(tree.indices), np.asarray(tree.priorities))
                elif t == MsgType.REPLAY_STATE:
                    if tree is None:  # send the contents
                        state = buffer.state_dict()
                        names = sorted(state)
                        State = namedarraytuple("ReplayState", [f"a{i}" for i in range(len(names))])
                        arrays = State(*(np.asarray(state[n]) for n in names))
                        reply(
                            peer, header.reply(MsgType.REPLAY_STATE, meta={"names": names}), arrays
                        )
                    else:  # load them
                        names = header.meta["names"]
                        if holds_sources(names) and not isinstance(buffer, SourcedReplay):
                            buffer = SourcedReplay(buffer)
                        buffer.load_state_dict({n: np.array(a) for n, a in zip(names, tree)})
                        reply(peer, header.reply(MsgType.REPLAY_OK, meta={"len": len(buffer)}))
                else:
                    raise ValueError(f"unexpected message {t.name}")
            except Exception as e:  # noqa: BLE001 - answer the client, keep serving
                log.warning("request %s failed: %s: %s", t.name, type(e).__name__, e)
                reply(
                    peer,
                    header.reply(MsgType.ERROR, meta={"reason": f"{type(e).__name__}: {e}"[:500]}),
                )
    finally:
        sock.close(linger=0)
        ctx.term()
        _ = State
        if orphaned:  # nobody else is left to remove the socket folder
            remove_orphaned_ipc(bind, "asyncrl-replay-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.replay")
    p.add_argument("--bind", required=True)
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s replay %(levelname)s: %(message)s"
    )
    try:
        return serve(args.bind, args.parent_pid)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
