"""Learners 1..N-1 of a data-parallel group (``learners = N``): the same algorithm and model as
learner 0, fed every batch learner 0 gets, each computing its share of every minibatch.

Started by learner 0 (asyncrl/runners/learners.py) with the group's rendezvous, this learner's
rank and device. Receives, over the group (algos/ddp.py): the run's config and the spaces, then
learner 0's state, then one command per batch until "stop". It never sees a socket, a worker or
an env, publishes nothing and writes no checkpoint. It exits when learner 0's process is gone
(``--parent-pid``, checked by a thread, since the main thread waits in a collective), or when a
collective fails because another learner died (one line on stderr, exit code 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:  # re-parented: learner 0 died
            os._exit(3)
        time.sleep(0.5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.peer")
    p.add_argument("--init", required=True, help="the group's rendezvous (file:// or tcp://)")
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.parent_pid:
        threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True).start()
    import torch

    from asyncrl.algos import ALGOS, ddp
    from asyncrl.configs.config import config_from_dict

    torch.set_num_threads(max(args.torch_threads, 1))
    try:
        ddp.init_group(args.rank, args.world, args.init, args.device)
        cfg_dict, obs_space, action_space = ddp.broadcast()
        cfg = config_from_dict(cfg_dict)
        torch.manual_seed(cfg.seed)
        entry = ALGOS[cfg.algo]
        agent = entry.make_agent(obs_space, action_space, cfg.model, args.device, cfg.algo_params)
        algo = entry.make_algo(agent, cfg.algo_params, cfg.seed)
        ddp.share_state(agent, algo)
        ddp.serve(algo)
    except Exception as e:  # noqa: BLE001 - one line; learner 0 reports the run's end
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"asyncrl learner {args.rank}: {type(e).__name__}: {first[:300]}", file=sys.stderr)
        return 1
    finally:
        ddp.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
