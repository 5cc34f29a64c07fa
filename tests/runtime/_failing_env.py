"""An env that builds in the training process and fails in every sampler worker process
(``python -m workers.sampler``): a local worker slot that can never sample, for the
supervision tests. Use it as ``tests.runtime._failing_env:FailsInWorkers``."""

from __future__ import annotations

import sys

from tests.envs.toy_envs import ToyEnv


def _in_a_worker() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == "workers.sampler"


class FailsInWorkers(ToyEnv):
    def __init__(self, length: int = 5):
        if _in_a_worker():
            raise RuntimeError("this env cannot be built in a sampler worker (a test)")
        super().__init__(length)
