"""Multi-turn chat: a session with a cross-turn KV cache, context policies, sampling and streaming."""

from mmdialog.chat.policies import POLICIES, Full, LastK, Policy, Summary, TokenBudget, make_policy, parse_policy
from mmdialog.chat.sampling import SamplingParams
from mmdialog.chat.session import ChatSession, Reply, ReplyStream

__all__ = ["ChatSession", "Reply", "ReplyStream", "SamplingParams", "Policy", "POLICIES", "Full", "LastK", "TokenBudget",
           "Summary", "make_policy", "parse_policy"]
