"""Sampler worker process: builds envs from the plain-data spec the coordinator sends, steps them
as one vector, and either acts with its own CPU copy of the agent (parallel) or asks the central
agent for actions (central; alternating with two env groups). One SAMPLES message per batch of
T steps; never pickles.

Run as ``python -m workers.sampler --connect ENDPOINT`` (the coordinator starts local workers
this way; ``asyncrl worker --connect tcp://HOST:PORT`` attaches a remote one). Ray actors and
Slurm jobs run its ``main`` in their own process (``asyncrl/runtime/cluster.py:run_program``),
with ``--slot k --launch-token T``: a TCP worker that claims a slot must show the run's token.

Messages (ZeroMQ DEALER, the worker side of the coordinator's ROUTER):
  sends    REGISTER (locality probe, envs), HEARTBEAT (every heartbeat_s, with steps/s),
           METRICS (final observations of truncated steps, before the batch), SAMPLES (the
           [T, M] batch in a shared-memory slot or as frames), ACT_REQUEST (central modes), BYE
  receives REGISTERED (config, env offset, transport path) / REFUSED, PARAMS (parameters;
           meta "sample" asks for a batch), ACT_REPLY, RELEASE (slot free), HEARTBEAT, STOP
The worker exits when told to stop, when its parent process dies (local workers), or when the
coordinator has been silent for ``dead_after_s`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import logging
import os
import signal
import sys
import time
import uuid

import numpy as np

log = logging.getLogger("asyncrl.worker")
MAX_QUEUED_REQUESTS = 16  # batch requests a worker holds (an async coordinator sends <= 2)


def _params_to_state(names, tree):
    import torch

    return {n: torch.from_numpy(np.array(a)) for n, a in zip(names, tree)}


class RemoteActs:
    """Central modes: the agent lives in the coordinator; ask it for actions per env group."""

    def __init__(self, sock, worker_id: str, run_id: str):
        self.sock, self.worker_id, self.run_id = sock, worker_id, run_id
        self.futures: dict[int, asyncio.Future] = {}
        self.seq = 0
        self.oldest_version: int | None = None  # of the replies since the batch began

    async def request(
        self,
        obs,
        env_ids: np.ndarray,
        what: str = "act",
        reset: np.ndarray | None = None,
        reward: np.ndarray | None = None,
    ) -> asyncio.Future:
        """Ask for actions (or values, ``what="value"``; ``"final_value"``: a recurrent agent's
        value from the state the envs' episodes ended with) for ``obs`` of envs ``env_ids``;
        ``reset`` marks the envs whose episode ended on the previous step (the agent restarts
        their exploration or recurrent state, as the worker-side agent does in parallel mode);
        ``reward`` (recurrent agents) the previous step's rewards."""
        from asyncrl.data import namedarraytuple
        from asyncrl.runtime import Header, MsgType, send

        self.seq += 1
        fut = asyncio.get_running_loop().create_future()
        self.futures[self.seq] = fut
        header = Header(
            MsgType.ACT_REQUEST,
            run_id=self.run_id,
            worker_id=self.worker_id,
            seq=self.seq,
            meta={"what": what},
        )
        fields = {"observation": obs, "env_ids": env_ids.astype(np.int64)}
        if reset is not None and reset.any():
            fields["reset"] = np.asarray(reset, bool)
        if reward is not None:
            fields["reward"] = np.asarray(reward, np.float32)
        tree = namedarraytuple("ActRequest", list(fields))(*fields.values())
        await send(self.sock, header, tree)
        return fut

    def on_reply(self, header, tree) -> None:
        v = header.policy_version
        if self.oldest_version is None or v < self.oldest_version:
            self.oldest_version = v
        fut = self.futures.pop(header.seq, None)
        if fut is not None and not fut.done():
            fut.set_result(tree)


async def worker_main(args) -> int:
    import torch
    import zmq
    import zmq.asyncio

    from asyncrl.algos import ALGOS
    from asyncrl.configs.config import config_from_dict, is_recurrent
    from asyncrl.data import namedarraytuple, tree_map
    from asyncrl.envs import make_vec_env
    from asyncrl.runtime import (
        AuthenticationFailed,
        BatchSender,
        ClientCurve,
        Header,
        LocalityProbe,
        MsgType,
        ProtocolError,
        SocketOptions,
        connect_dealer,
        recv,
        send,
    )
    from asyncrl.runtime.transport import remove_orphaned_ipc
    from asyncrl.samplers.base import samples_example
    from asyncrl.samplers.collector import Collector

    worker_id = (
        args.id
        or f"{os.uname().nodename if hasattr(os, 'uname') else 'host'}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    ctx = zmq.asyncio.Context()
    curve = None
    if args.server_key:
        curve = ClientCurve(args.client_key, args.server_key)
    options = SocketOptions(send_timeout_s=30.0, recv_timeout_s=None)
    try:
        sock = await connect_dealer(
            ctx,
            args.connect,
            worker_id,
            options,
            curve=curve,
            handshake_timeout=args.connect_timeout,
        )
    except AuthenticationFailed as e:
        print(f"asyncrl worker: refused by {args.connect}: {e}", file=sys.stderr)
        ctx.term()
        return 3
    except TimeoutError:
        print(
            f"asyncrl worker: no coordinator answered at {args.connect} within {args.connect_timeout:.0f} s",
            file=sys.stderr,
        )
        ctx.destroy(linger=0)
        return 4
    probe = LocalityProbe()
    register = {"probe": probe.to_dict(), "envs": args.envs, "slot": args.slot, "pid": os.getpid()}
    if args.launch_token:  # started by the run's launcher: proves our claim to the slot
        register["launch_token"] = args.launch_token
    await send(sock, Header(MsgType.REGISTER, worker_id=worker_id, meta=register))
    try:
        header, _ = await recv(sock, timeout=args.connect_timeout)
    except TimeoutError:
        print("asyncrl worker: the coordinator did not answer REGISTER", file=sys.stderr)
        probe.close()
        sock.close(linger=0)
        ctx.term()
        return 4
    except ProtocolError as e:
        print(f"asyncrl worker: bad answer to REGISTER: {e.reason}", file=sys.stderr)
        probe.close()
        sock.close(linger=0)
        ctx.term()
        return 4
    probe.close()
    if header.type == MsgType.REFUSED:
        print(f"asyncrl worker: refused: {header.meta.get('reason', '?')}", file=sys.stderr)
        sock.close(linger=0)
        ctx.term()
        return 3
    if header.type != MsgType.REGISTERED:
        print(f"asyncrl worker: unexpected answer {header.type.name}", file=sys.stderr)
        sock.close(linger=0)
        ctx.term()
        return 4
    meta = header.meta
    run_id = header.run_id
    cfg = config_from_dict(meta["config"])
    offset, n_envs, horizon, mode = (
        int(meta["env_offset"]),
        int(meta["num_envs"]),
        int(meta["horizon"]),
        meta["mode"],
    )
    threads = max(1, int(meta.get("torch_threads", 1)))
    cpu = _pin(str(meta.get("affinity") or ""), args.slot)
    if cpu is not None:
        log.info("pinned to CPU %d", cpu)
    torch.set_num_threads(threads)
    # Parallel mode steps envs and agent in a worker thread (the loop keeps answering
    # heartbeats meanwhile). torch's thread count is per thread: set it there too, or a worker
    # started without OMP_NUM_THREADS (``asyncrl worker``) spins one thread per core per op.
    executor = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="collect", initializer=torch.set_num_threads, initargs=(threads,)
    )
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    entry = ALGOS[cfg.algo]
    groups = 2 if mode == "alternating" else 1
    if mode == "alternating" and n_envs < 2:
        groups = 1
    sizes = [n_envs // groups + (1 if g < n_envs % groups else 0) for g in range(groups)]
    starts = np.cumsum([0] + sizes[:-1])
    seed_base = cfg.seed + offset + int(meta.get("seed_offset", 0))
    envs = [
        make_vec_env(cfg.env, sizes[g], seed=seed_base + int(starts[g]), training=True)
        for g in range(groups)
    ]
    env0 = envs[0]
    env_ids = [
        np.arange(offset + int(starts[g]), offset + int(starts[g]) + sizes[g])
        for g in range(groups)
    ]
    remote = RemoteActs(sock, worker_id, run_id)
    if mode == "parallel":
        agent = entry.make_agent(
            env0.observation_space, env0.action_space, cfg.model, "cpu", cfg.algo_params
        )
        agent.eval_mode()
        info_example = agent.info_example()
        collector = Collector(env0, agent, env_ids[0])
        collector.reset(env0.action_example)
    else:
        agent = None
        info_example = meta_info_example(meta)
        obs_state = [e.reset() for e in envs]
        prev_action = [
            np.zeros(
                (sizes[g], *np.shape(env0.action_example)), np.asarray(env0.action_example).dtype
            )
            for g in range(groups)
        ]
    example = samples_example(env0.obs_example, env0.action_example, info_example)
    WorkerBatch = namedarraytuple("WorkerBatch", ["samples", "bootstrap_value"])
    batch_example = WorkerBatch(example, np.zeros((), np.float32))
    path = meta.get("path", "frames")
    # Slots hold [T, M] samples; bootstrap_value is [M]: allocate with leading dims per leaf.
    sender = BatchSender(sock, _batch_leading(batch_example, horizon, n_envs), path=path, slots=2)
    stop = asyncio.Event()
    last_heard = time.monotonic()
    steps_done = 0
    rate = 0.0
    names: list[str] = []

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass

    orphaned = False

    async def heartbeat():
        nonlocal orphaned
        parent = args.parent_pid
        while not stop.is_set():
            # Checked before sending: a send to a coordinator that is gone waits for its timeout.
            if parent and not _alive(parent):
                log.warning("parent %d is gone; exiting", parent)
                orphaned = True
                remove_orphaned_ipc(args.connect, "asyncrl-")
                stop.set()
                break
            if time.monotonic() - last_heard > args.dead_after:
                log.warning("coordinator silent for %.0f s; exiting", args.dead_after)
                stop.set()
                break
            try:
                await send(
                    sock,
                    Header(
                        MsgType.HEARTBEAT,
                        run_id=run_id,
                        worker_id=worker_id,
                        meta={"steps": steps_done, "steps_per_s": rate},
                    ),
                    timeout=max(args.heartbeat, 0.1),
                )
            except Exception:  # noqa: BLE001 - coordinator gone or slow; the silence check decides
                pass
            try:
                await asyncio.wait_for(stop.wait(), args.heartbeat)
            except asyncio.TimeoutError:
                pass

    # Episode ends on a batch's last step, per group, told with the next batch's first request;
    # at the start every env begins an episode (a replacement worker's envs too).
    ended: list = [np.ones(sizes[g], bool) for g in range(groups)]
    recurrent = is_recurrent(cfg)
    rewards: list = [np.zeros(sizes[g], np.float32) if recurrent else None for g in range(groups)]

    # Agents with a value head (policy gradients) bootstrap from values the server computes.
    want_values = info_example is not None and "value" in getattr(info_example, "_fields", ())

    async def collect_central(buf):
        """Central/alternating: each group asks for actions while the other group steps."""
        final: list = []
        timeout_value = buf.env.env_info.timeout_value
        timeout_value[:] = 0
        col = [slice(int(starts[g]), int(starts[g]) + sizes[g]) for g in range(groups)]
        pending = [
            await remote.request(obs_state[g], env_ids[g], reset=ended[g], reward=rewards[g])
            for g in range(groups)
        ]
        ended[:] = [None] * groups
        for t in range(horizon):
            for g in range(groups):
                reply = await pending[g]
                action, info = reply.action, reply.agent_info
                view = buf[t, col[g]]
                view.env.observation[:] = obs_state[g]
                view.agent.action[:] = action
                view.agent.prev_action[:] = prev_action[g]
                if info is not None and view.agent.agent_info is not None:
                    view.agent.agent_info[:] = info
                obs, reward, terminated, truncated, fo = envs[g].step(np.array(action))
                view.env.reward[:] = reward
                view.env.terminated[:] = terminated
                view.env.truncated[:] = truncated
                done = terminated | truncated
                prev_action[g] = np.array(action, copy=True)
                prev_action[g][done] = 0
                obs_state[g] = obs
                if recurrent:
                    rewards[g] = np.asarray(reward, np.float32)
                for b, o in fo:
                    final.append((t, int(starts[g]) + b, o))
                if t + 1 < horizon:
                    pending[g] = await remote.request(
                        obs_state[g], env_ids[g], reset=done, reward=rewards[g]
                    )
                elif done.any():
                    ended[g] = done.copy()  # told with the first request of the next batch
                if recurrent and fo and want_values:
                    # The value of a time limit's final observation, from the state its episode
                    # ended with: after the reset sent just now (the agent keeps that state),
                    # or, on the batch's last step, before the reset (still the current one).
                    stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, o in fo])
                    ids = env_ids[g][[b for b, _ in fo]]
                    last = t + 1 == horizon  # then this step's rewards go with it
                    reply = await (
                        await remote.request(
                            stacked,
                            ids,
                            what="value" if last else "final_value",
                            reward=rewards[g][[b for b, _ in fo]] if last else None,
                        )
                    )
                    for (b, _), v in zip(fo, reply.action):
                        view.env.env_info.timeout_value[b] = v
                await asyncio.sleep(0)
        # Values for bootstrapping: after the last step and at truncations.
        boot = np.zeros(n_envs, np.float32)
        if want_values:
            for g in range(groups):
                # recurrent: the ends of the last step reset the state now, so the bootstrap
                # value of an env whose episode ended is the new episode's (as in serial mode)
                reset = ended[g] if recurrent else None
                reply = await (
                    await remote.request(
                        obs_state[g], env_ids[g], what="value", reward=rewards[g], reset=reset
                    )
                )
                if recurrent:
                    ended[g] = None
                boot[col[g]] = reply.action
            if final and not recurrent:
                stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in final])
                ids = np.array([offset + b for _, b, _ in final], np.int64)
                reply = await (await remote.request(stacked, ids, what="value"))
                for (t, b, _), v in zip(final, reply.action):
                    timeout_value[t, b] = v
        episodes = [e.pop_episode_stats() for e in envs]
        returns = [r for s in episodes for r in s.returns]
        lengths = [n for s in episodes for n in s.lengths]
        return final, boot, returns, lengths

    # Same-host central/alternating workers: actions through shared memory (the inference
    # channel, attached below), stepped in the collect thread; the loop keeps answering
    # heartbeats meanwhile.
    channel = None

    async def attach_channel():
        from asyncrl.runtime.inference import InferenceClient, slot_example

        slot = slot_example(env0.obs_example, env0.action_example, info_example)
        spin_s = float(meta.get("inference_spin_s", 0.0) or 0.0)
        return await loop.run_in_executor(  # the socket is the collect thread's
            executor,
            lambda: InferenceClient(
                meta["inference"],
                worker_id,
                env_ids,
                slot,
                timeout_s=args.dead_after,
                should_stop=stop.is_set,
                spin_s=spin_s,
            ),
        )

    def ask(obs, ids, what, reward=None, reset=None):
        """From the collect thread: a value request on the message path (variable size)."""

        async def go():
            fut = await remote.request(obs, ids, what=what, reward=reward, reset=reset)
            return await asyncio.wait_for(fut, args.dead_after)

        return asyncio.run_coroutine_threadsafe(go(), loop).result()

    def collect_shm(buf):
        """collect_central's steps, on the shared-memory channel (in the collect thread)."""
        from asyncrl.runtime.inference import KIND_ACT, KIND_VALUE

        final: list = []
        timeout_value = buf.env.env_info.timeout_value
        timeout_value[:] = 0
        col = [slice(int(starts[g]), int(starts[g]) + sizes[g]) for g in range(groups)]
        views = channel.views
        channel.oldest_version = None
        # the batch's leaves, written per step in place (no per-step tree of views)
        obs_buf, action_buf, prev_buf = buf.env.observation, buf.agent.action, buf.agent.prev_action
        info_buf = buf.agent.agent_info
        reward_buf, term_buf, trunc_buf = buf.env.reward, buf.env.terminated, buf.env.truncated

        def request(g, kind, reset, reward):
            view = views[g]
            has_reset = reset is not None and bool(reset.any())
            if has_reset:
                view.reset[:] = reset
            if reward is not None:
                view.reward[:] = reward
            channel.request(g, kind, reset=has_reset, reward=reward is not None)

        for g in range(groups):
            views[g].observation[:] = obs_state[g]
            request(g, KIND_ACT, ended[g], rewards[g])
        ended[:] = [None] * groups
        replied = [False] * groups  # a reply already taken (recurrent final values)
        for t in range(horizon):
            for g in range(groups):
                if not replied[g]:
                    channel.wait(g)
                replied[g] = False
                slot_view = views[g]
                action = np.array(slot_view.action)  # the next request's reply overwrites it
                c = col[g]
                obs_buf[t, c] = obs_state[g]
                action_buf[t, c] = action
                prev_buf[t, c] = prev_action[g]
                if info_buf is not None and slot_view.agent_info is not None:
                    info_buf[t, c] = slot_view.agent_info
                obs, reward, terminated, truncated, fo = envs[g].step(action)
                reward_buf[t, c] = reward
                term_buf[t, c] = terminated
                trunc_buf[t, c] = truncated
                done = terminated | truncated
                prev_action[g] = action
                prev_action[g][done] = 0
                obs_state[g] = obs
                if recurrent:
                    rewards[g] = np.asarray(reward, np.float32)
                for b, o in fo:
                    final.append((t, int(starts[g]) + b, o))
                last = t + 1 == horizon
                if not last:
                    slot_view.observation[:] = obs
                    request(g, KIND_ACT, done, rewards[g])
                elif done.any():
                    ended[g] = done.copy()  # told with the first request of the next batch
                if recurrent and fo and want_values:
                    # As in collect_central; the act request just sent (with its resets) is
                    # answered first, so the server has kept the ended episodes' states.
                    if not last:
                        channel.wait(g)
                        replied[g] = True
                    stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, o in fo])
                    idx = [b for b, _ in fo]
                    reply = ask(
                        stacked,
                        env_ids[g][idx],
                        "value" if last else "final_value",
                        reward=rewards[g][idx] if last else None,
                    )
                    for (b, _), v in zip(fo, reply.action):
                        timeout_value[t, int(starts[g]) + b] = v
        boot = np.zeros(n_envs, np.float32)
        if want_values:
            for g in range(groups):
                views[g].observation[:] = obs_state[g]
                request(g, KIND_VALUE, ended[g] if recurrent else None, rewards[g])
                if recurrent:
                    ended[g] = None
            for g in range(groups):
                channel.wait(g)
                boot[col[g]] = views[g].value
            if final and not recurrent:
                stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in final])
                ids = np.array([offset + b for _, b, _ in final], np.int64)
                reply = ask(stacked, ids, "value")
                for (t, b, _), v in zip(final, reply.action):
                    timeout_value[t, b] = v
        channel.end()
        episodes = [e.pop_episode_stats() for e in envs]
        returns = [r for s in episodes for r in s.returns]
        lengths = [n for s in episodes for n in s.lengths]
        return final, boot, returns, lengths

    async def do_sample(itr: int, policy_version: int):
        nonlocal steps_done, rate
        t0 = time.perf_counter()
        slot, tree = await sender.acquire(timeout=60.0)
        if mode == "parallel":
            final, boot, episodes = await loop.run_in_executor(
                executor, collector.collect, tree.samples
            )
            returns, lengths = episodes.returns, episodes.lengths
            if boot is not None:
                tree.bootstrap_value[:] = boot
        else:
            remote.oldest_version = None
            if channel is not None:
                final, boot, returns, lengths = await loop.run_in_executor(
                    executor, collect_shm, tree.samples
                )
            else:
                final, boot, returns, lengths = await collect_central(tree.samples)
            tree.bootstrap_value[:] = boot
            versions = [remote.oldest_version]
            if channel is not None:
                versions.append(channel.oldest_version)
            versions = [v for v in versions if v is not None]
            if versions:  # the oldest policy that acted in it
                policy_version = min(versions)
        steps_done += horizon * n_envs
        rate = horizon * n_envs / max(time.perf_counter() - t0, 1e-9)
        if final:
            stacked = tree_map(lambda *xs: np.stack(xs), *[o for _, _, o in final])
            await send(
                sock,
                Header(
                    MsgType.METRICS,
                    run_id=run_id,
                    worker_id=worker_id,
                    seq=itr,
                    meta={"final": [[int(t), int(b)] for t, b, _ in final]},
                ),
                stacked,
            )
        header = Header(
            MsgType.SAMPLES,
            run_id=run_id,
            worker_id=worker_id,
            seq=itr,
            policy_version=policy_version,
            meta={
                "returns": [float(r) for r in returns],
                "lengths": [int(n) for n in lengths],
                "steps_per_s": rate,
            },
        )
        await sender.send(header, slot, timeout=30.0)

    requests: collections.deque = collections.deque()
    sample_task: asyncio.Task | None = None

    def start_next(done: asyncio.Task | None = None) -> None:
        nonlocal sample_task, names
        if stop.is_set() or (sample_task is not None and not sample_task.done()):
            return
        if done is not None and (done.cancelled() or done.exception() is not None):
            return  # _report_failure stops the worker
        while requests:
            header, tree = requests.popleft()
            if tree is not None and agent is not None:
                names = header.meta.get("names", names)
                agent.load_state_tensors(_params_to_state(names, tree), header.policy_version)
            if agent is not None and isinstance(header.meta.get("acting"), dict):
                agent.load_acting_state(header.meta["acting"])
            if "sample" in header.meta:
                sample_task = asyncio.create_task(
                    do_sample(int(header.meta["sample"]), header.policy_version)
                )
                sample_task.add_done_callback(_report_failure(stop))
                sample_task.add_done_callback(start_next)
                return

    hb = asyncio.create_task(heartbeat())
    exit_code = 0
    try:
        if mode != "parallel" and meta.get("inference"):
            try:
                channel = await attach_channel()
            except Exception as e:  # noqa: BLE001 - one line, then the worker exits
                print(
                    f"asyncrl worker: cannot attach to the inference server: {e}", file=sys.stderr
                )
                exit_code = 4
                stop.set()
        while not stop.is_set():
            recv_task = asyncio.ensure_future(recv(sock))
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait(
                {recv_task, stop_task}, timeout=args.heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            stop_task.cancel()
            if recv_task not in done:
                recv_task.cancel()
                try:
                    await recv_task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
                continue
            try:
                header, tree = recv_task.result()
            except ProtocolError as e:
                log.warning("dropped a malformed message: %s", e.reason)
                continue
            last_heard = time.monotonic()
            t = header.type
            if t == MsgType.STOP:
                break
            if t == MsgType.RELEASE:
                sender.on_release(header)
            elif t == MsgType.ACT_REPLY:
                remote.on_reply(header, tree)
            elif t == MsgType.PARAMS:
                # Requests queue up (an asynchronous coordinator asks for the next batch
                # while this one is collected); parameters and acting state that come with a
                # request are applied just before its batch, never under a running one.
                if len(requests) >= MAX_QUEUED_REQUESTS:
                    log.warning("more than %d batch requests queued; dropped one", len(requests))
                    continue
                requests.append((header, tree))
                start_next()
            elif t == MsgType.REFUSED:
                log.error("coordinator refused us: %s", header.meta.get("reason"))
                exit_code = 3
                break
    finally:
        stop.set()
        for task in (hb, sample_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
        if not orphaned:  # nobody to say goodbye to otherwise
            try:
                bye = Header(MsgType.BYE, run_id=run_id, worker_id=worker_id)
                await send(sock, bye, timeout=1.0)
            except Exception:  # noqa: BLE001
                pass
        executor.shutdown(wait=True, cancel_futures=True)  # a batch being stepped finishes first
        if channel is not None:  # (its socket was the collect thread's, which has finished)
            channel.close()
        sender.close()
        for e in envs:
            e.close()
        sock.close(linger=200)
        ctx.term()
    return exit_code


def meta_info_example(meta):
    """Central modes: the agent-info layout (one step) the coordinator sent, or None."""
    from asyncrl.data import buffer_from_schema

    schema = meta.get("info_schema")
    return None if schema is None else buffer_from_schema(schema, ())


def _batch_leading(batch_example, horizon: int, n_envs: int):
    """An example tree whose leaves already carry the leading dims ([T, M] or [M])."""
    from asyncrl.data import buffer_from_example

    samples = buffer_from_example(batch_example.samples, (horizon, n_envs))
    boot = np.zeros(n_envs, np.float32)
    return type(batch_example)(samples, boot)


def _report_failure(stop: asyncio.Event):
    def cb(task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("sampling failed: %s: %s", type(exc).__name__, exc)
            stop.set()

    return cb


def _pin(affinity: str, slot: int) -> int | None:
    """sampler.worker_affinity: "auto" pins local worker k to CPU k mod (CPUs this process may
    use); "2,3" to CPU list[k mod len]. Linux only (elsewhere nothing is pinned)."""
    if not affinity or slot is None or slot < 0 or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed if affinity == "auto" else [int(c) for c in affinity.split(",")]
    cpu = cpus[slot % len(cpus)]
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:
        log.warning("cannot pin to CPU %d: %s", cpu, e)
        return None
    return cpu


def _alive(pid: int) -> bool:
    """Our parent ``pid`` still runs (once it dies we are re-parented, so getppid changes)."""
    return os.getppid() == pid


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="asyncrl worker", description="asyncrl sampler worker")
    p.add_argument("--connect", required=True, help="coordinator endpoint, e.g. tcp://HOST:PORT")
    p.add_argument(
        "--envs", type=int, default=0, help="envs in this worker (0: the coordinator decides)"
    )
    p.add_argument("--id", default="", help="worker id (default: host-pid-random)")
    p.add_argument(
        "--slot", type=int, default=-1, help="local worker slot (set by the coordinator)"
    )
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this process dies")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    p.add_argument(
        "--dead-after", type=float, default=30.0, help="exit after this long without word"
    )
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--server-key", default="", help="coordinator's public key file (CURVE)")
    p.add_argument("--client-key", default="", help="this worker's secret key file (CURVE)")
    p.add_argument(
        "--launch-token", default="", help="the run's launch token (set by a remote launcher)"
    )
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s worker %(levelname)s: %(message)s"
    )
    if args.server_key and not args.client_key:
        print(
            "asyncrl worker: --server-key needs --client-key (this worker's secret key file)",
            file=sys.stderr,
        )
        return 2
    from asyncrl.runtime import install_event_loop

    install_event_loop()
    try:
        return asyncio.run(worker_main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
