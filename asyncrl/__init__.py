"""asyncrl: deep RL (Q-learning, policy gradients, Q-value policy gradients) on one runtime.

From a script::

    import asyncrl
    cfg = asyncrl.resolve_config("ppo", "CartPole-v1", sets=["steps=50000"])
    result = asyncrl.train(cfg)      # result.agent is the trained agent
"""

__version__ = "0.1.0"

# Every import of an asyncrl module runs this file first, so this line registers the algorithms
# (asyncrl.algos.register_algo fills asyncrl/configs/registry.py) before any config is built,
# whichever entry point builds it: the CLI, a script, workers/sampler.py, a test.
import asyncrl.algos  # noqa: E402, F401
from asyncrl.configs.config import ConfigError, TrainConfig, load_config, resolve_config  # noqa: E402
from asyncrl.runners.train import TrainResult, train  # noqa: E402

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "load_config", "resolve_config", "train"]
