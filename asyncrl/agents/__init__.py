"""Agents: act on batches of observations; parameters as plain tensors with a policy version."""

from asyncrl.agents.base import Agent
from asyncrl.agents.pg import PgAgent, PgAgentInfo

__all__ = ["Agent", "PgAgent", "PgAgentInfo"]
