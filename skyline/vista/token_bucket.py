"""The token bucket the Redis budgets keep (create_budget.py, request_budget.py): one hash with
``tokens`` and ``at`` (Redis ``TIME`` of the last refill), refilled in their Lua step.

:data:`REFILL` is the start of such a step: with ``B`` (the hash's key), ``rate`` (tokens per
second) and ``cap`` (the bucket's size) set, it sets ``now`` and ``tokens`` (refilled up to
``cap``); the step ends with :data:`STORE`. Redis' own clock, so no host's clock matters.
"""

REFILL = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tokens = tonumber(redis.call('HGET', B, 'tokens') or cap)
local at = tonumber(redis.call('HGET', B, 'at') or now)
if now > at then tokens = math.min(cap, tokens + (now - at) * rate) end
if tokens > cap then tokens = cap end
"""

STORE = r"""
redis.call('HSET', B, 'tokens', tostring(tokens), 'at', tostring(now))
"""
