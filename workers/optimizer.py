"""The learner process of asynchronous runs: the algorithm and its model on their device.

Receives: REGISTERED (the run's config, the learner slots' shared-memory handles, the checkpoint
to resume from), LEARN (learner slot ``k`` holds a [T, B] batch; final observations of time
limits as frames; or, with a ``source``, a remote worker's [T, m] batch itself as frames: it is
learned as a batch of that source, after the first local one), LEARNER_STATE (write the agent's and the algorithm's state to a file), STOP.
Sends: LEARNED (done with slot ``k``: the loss info, updates, the new policy version and acting
state, the parameters as frames; first with no slot when ready), LEARNER_STATE (written),
ERROR (the update failed: one line, then it exits; first it writes its state to the run's
``rescue`` path, from which the run's final checkpoint is made). With ``learners = N`` it is
learner 0 of a data-parallel group: it starts the others (asyncrl/runners/learners.py) and hands
them every batch; a learner that exits fails the update as above.

Started by the coordinator's launcher (``python -m workers.optimizer --connect ipc://...``);
connects a DEALER (identity ``learner``) to the coordinator's learner socket. It never sees a
worker or an env; it exits when the training process dies (``--parent-pid``). Messages are
handled in order, so a state request is answered after the batches queued before it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np

log = logging.getLogger("asyncrl.learner")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.optimizer")
    p.add_argument("--connect", required=True)
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s learner %(levelname)s %(message)s",
    )
    import zmq

    from asyncrl.runtime.protocol import Header, MsgType, ProtocolError, decode, encode

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"learner")
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(args.connect)
    run_id = ""

    def send(header, tree=None) -> None:
        header.run_id = run_id
        sock.send_multipart(encode(header, tree), copy=False)

    def recv(timeout_s: float):
        if not sock.poll(int(timeout_s * 1000)):
            return None, None
        return decode(sock.recv_multipart(copy=False))

    sock.send_multipart(encode(Header(MsgType.REGISTER, meta={"pid": os.getpid()})))
    header, _ = recv(60.0)
    if header is None or header.type != MsgType.REGISTERED:
        print("asyncrl learner: the coordinator did not answer REGISTER", file=sys.stderr)
        sock.close(0)
        ctx.term()
        return 4
    run_id = header.run_id
    try:
        learner = Learner(header.meta)
    except Exception as e:  # noqa: BLE001 - one line to the coordinator, then exit
        send(Header(MsgType.ERROR, meta={"reason": f"{type(e).__name__}: {e}"[:500]}))
        log.debug("learner setup failed", exc_info=True)  # the coordinator says it, once
        sock.close(1000)
        ctx.term()
        return 1
    send(*learner.report(0, {}, {}))  # ready: slot None
    code = 0
    try:
        while True:
            if args.parent_pid and os.getppid() != args.parent_pid:  # re-parented: it died
                log.warning("parent %d is gone; exiting", args.parent_pid)
                break
            try:
                header, tree = recv(1.0)
            except ProtocolError as e:
                log.warning("dropped a malformed message: %s", e.reason)
                continue
            if header is None:
                continue
            if header.type == MsgType.STOP:
                break
            if header.type == MsgType.LEARN:
                for seq, meta, info in learner.handle(header.seq, header.meta, tree):
                    send(*learner.report(seq, meta, info))
            elif header.type == MsgType.LEARNER_STATE:
                learner.write_state(header.meta["path"])
                send(
                    Header(
                        MsgType.LEARNER_STATE, seq=header.seq, meta={"path": header.meta["path"]}
                    )
                )
    except Exception as e:  # noqa: BLE001 - one line to the coordinator, then exit
        log.debug("learner failed", exc_info=True)  # the coordinator says it, once
        learner.rescue()  # first: the run's final checkpoint reads it once it hears the error
        send(Header(MsgType.ERROR, meta={"reason": f"{type(e).__name__}: {e}"[:500]}))
        code = 1
    finally:
        learner.close()
        sock.close(1000)
        ctx.term()
    return code


class Learner:
    """The algorithm over the learner slots (shared memory written by the coordinator)."""

    def __init__(self, meta: dict):
        import torch

        from asyncrl.algos import ALGOS
        from asyncrl.configs.config import config_from_dict
        from asyncrl.data import SharedArrayTree
        from asyncrl.envs import make_env

        cfg = config_from_dict(meta["config"])
        self.cfg = cfg
        torch.set_num_threads(max(1, int(meta.get("torch_threads", 1))))
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        env = make_env(cfg.env)
        try:
            obs_space, action_space = env.observation_space, env.action_space
        finally:
            env.close()
        entry = ALGOS[cfg.algo]
        self.agent = entry.make_agent(
            obs_space, action_space, cfg.model, cfg.device, cfg.algo_params
        )
        self.algo = entry.make_algo(self.agent, cfg.algo_params, cfg.seed)
        resume = meta.get("resume") or ""
        if resume:
            from asyncrl.logging.checkpoint import load_checkpoint

            ckpt = load_checkpoint(resume, map_location="cpu")
            self.agent.load_state_tensors(ckpt["agent"], ckpt.get("policy_version", 0))
            self.algo.load_state_dict(ckpt["algo"])
            if hasattr(self.agent, "load_rng_state"):
                self.agent.load_rng_state(ckpt.get("agent_rng", {}))
        self.agent.eval_mode()
        # learners > 1: this process is learner 0 of a data-parallel group
        from asyncrl.runners.learners import start_learners

        self.rescue_path = str(meta.get("rescue") or "")
        self.algo = start_learners(cfg, self.agent, self.algo, obs_space, action_space)
        self.slots = [SharedArrayTree.attach(h) for h in meta["slots"]]
        self.horizon = int(meta["horizon"])
        self.total_steps = max(int(meta.get("total_steps", cfg.steps)), 1)
        self.names = list(self.agent.state_tensors().keys())
        self.updates_time = 0.0
        self.lag_dropped_total = 0  # steps left out of the loss for their lag, whole run
        self.local_learned = False  # has a learner slot been learned yet?
        self.held: list = []  # remote batches that came before it
        if hasattr(self.algo, "source_envs_limit"):  # rings of remote sources, in envs
            self.algo.source_envs_limit = int(cfg.sampler.max_remote_envs)

    def handle(self, seq: int, meta: dict, tree) -> list[tuple[int, dict, dict]]:
        """One LEARN: the (seq, meta, info) of every batch learned now. A remote batch that
        comes before the first local one waits for it (the replay's primary ring is the local
        workers' columns)."""
        from asyncrl.data import tree_map

        if meta.get("source") and not self.local_learned:
            self.held.append((seq, meta, tree_map(np.array, tree)))  # frames are reused
            return []
        done = [(seq, meta, self.learn(meta, tree))]
        if not meta.get("source") and not self.local_learned:
            self.local_learned = True
            held, self.held = self.held, []
            done += [(s, m, self.learn(m, t)) for s, m, t in held]
        return done

    def learn(self, meta: dict, tree) -> dict:
        from asyncrl.data import tree_map
        from asyncrl.envs import EpisodeStats
        from asyncrl.samplers.base import SampleBatch

        source = str(meta.get("source") or "")
        if source:  # a remote worker's batch, in the message itself
            samples, bootstrap, final_tree = tree.samples, tree.bootstrap_value, tree.finals
            width = np.shape(bootstrap)[0]
            acted = np.full(width, int(meta.get("acted", 0)), np.int64)
        else:
            slot = self.slots[int(meta["slot"])].tree
            samples, bootstrap, final_tree = slot.samples, slot.bootstrap_value, tree
            width = slot.bootstrap_value.shape[0]
            acted = slot.policy_version.astype(np.int64)
        finals = []
        for i, (t, b) in enumerate(meta.get("finals", [])):
            finals.append((int(t), int(b), tree_map(lambda x, i=i: np.array(x[i]), final_tree)))
        lag = self.agent.policy_version - acted
        batch = SampleBatch(
            samples=samples,
            bootstrap_value=bootstrap,
            next_observation=None,
            final_observations=finals,
            episodes=EpisodeStats([], []),
            env_steps=self.horizon * width,
            policy_lag=lag,
            source=source,
        )
        t0 = time.perf_counter()
        info = self.algo.optimize(
            batch, progress=min(float(meta.get("env_steps", 0)) / self.total_steps, 1.0)
        )
        self.updates_time += time.perf_counter() - t0
        info = {k: float(v) for k, v in (info or {}).items()}
        self.lag_dropped_total += int(info.get("lag_dropped_samples", 0))
        if "lag_dropped_samples" in info:
            info["lag_dropped_total"] = float(self.lag_dropped_total)
        info.setdefault("policy_lag_min", float(lag.min()))
        info.setdefault("policy_lag_mean", float(lag.mean()))
        info.setdefault("policy_lag_max", float(lag.max()))
        return info

    def report(self, seq: int, learned: dict, info: dict):
        """LEARNED for the batch of ``learned`` (a LEARN's meta; {} for the ready message)."""
        from asyncrl.data import namedarraytuple
        from asyncrl.runtime.protocol import Header, MsgType

        state = self.agent.state_tensors()
        Params = namedarraytuple("Params", [f"p{i}" for i in range(len(state))])
        params = Params(*(t.detach().cpu().numpy() for t in state.values()))
        replay = getattr(self.algo, "replay", None)
        meta = {
            "slot": learned.get("slot"),
            "source": learned.get("source", ""),
            "replay_sources": len(getattr(replay, "sources", ())) or int(replay is not None),
            "info": info,
            "updates": int(getattr(self.algo, "updates", 0)),
            "names": self.names,
            "acting": self.agent.acting_state(),
            "learn_s": self.updates_time,
        }
        header = Header(
            MsgType.LEARNED, seq=seq, policy_version=int(self.agent.policy_version), meta=meta
        )
        return header, params

    def write_state(self, path: str) -> None:
        import torch

        state = {
            "agent": self.agent.state_tensors(),
            "policy_version": self.agent.policy_version,
            "algo": self.algo.state_dict(),
            "agent_rng": self.agent.rng_state() if hasattr(self.agent, "rng_state") else {},
        }
        tmp = f"{path}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)

    def rescue(self) -> None:
        """After a failure: write the state to the run's rescue path (its final checkpoint),
        if the run named one; a failure to write is logged, not raised."""
        if not self.rescue_path:
            return
        try:
            self.write_state(self.rescue_path)
        except Exception as e:  # noqa: BLE001 - the error being reported matters more: one line
            log.warning("could not write the learner's state after the failure: %s", e)

    def close(self) -> None:
        for s in self.slots:
            s.release()
        if hasattr(self.algo, "close"):
            self.algo.close()


if __name__ == "__main__":
    sys.exit(main())
