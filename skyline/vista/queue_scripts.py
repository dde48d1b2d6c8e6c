"""Lua scripts that make every queue transition atomic in Redis.

KEYS (always in this order): 1 queue set, 2 in-flight hash, 3 pending hash, 4 dead-letter hash,
5 attempts hash, 6 workers zset, 7 the watermark hash acks write (flux.last.metric_data, or
vista.last.metric_data with the Flux sink, see constants.VISTA_WATERMARK_HASH), 8 the progress
hash (item -> last timestamp the sink confirmed, for a partly delivered item). An item's
attempts and progress are removed wherever the item leaves the queue for good. Per-metric keys
(chains, flux.last.<metric>, vista.last.resolution.<metric>) are derived from prefixes passed
in ARGV, so the queue needs a single Redis (or Sentinel) server, not a Cluster.
"""

from __future__ import annotations

COMMON = r"""
local Q, INF, PEND, DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ATT, WORKERS, WMH, PROG = KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- The item is gone for good (acknowledged or dead-lettered): forget its counters.
local function forget(item)
  redis.call('HDEL', ATT, item)
  redis.call('HDEL', PROG, item)
end

-- Whether a key made from a metric name holds (or may hold) the given type: never one of the
-- queue's shared keys, never a key of another type. A metric's name must not let it replace
-- or break a structure every metric shares (e.g. flux.last.<metric> for a metric named
-- 'metric_data' is the watermark hash), and a foreign key of the wrong type must only cost
-- that metric its write, not fail the script for every item of the batch (WRONGTYPE).
local function key_is(key, kind)
  for _, shared in ipairs(KEYS) do
    if shared == key then return false end
  end
  local found = redis.call('TYPE', key)['ok']
  return found == 'none' or found == kind
end

-- Release the next item of a metric's chain, or clear the metric's pending mark, once the
-- metric's current head item has been acknowledged or dead-lettered.
local function advance_chain(chain_prefix, metric, item)
  if metric == '' or redis.call('HGET', PEND, metric) ~= item then return end
  local chain = chain_prefix .. metric
  local nxt = key_is(chain, 'list') and redis.call('LPOP', chain)
  if nxt then
    redis.call('SADD', Q, nxt)
    redis.call('HSET', PEND, metric, nxt)
  else
    redis.call('HDEL', PEND, metric)
  end
end
"""

# ARGV: chain_prefix, then groups of (metric, n, item_1 .. item_n). A metric already pending is
# skipped (its earlier item is still queued or in flight). Returns the number of metrics queued.
PUSH = (
    COMMON
    + r"""
local chain_prefix = ARGV[1]
local i, queued = 2, 0
while i <= #ARGV do
  local metric, n = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('HEXISTS', PEND, metric) == 0
      and (n == 1 or key_is(chain_prefix .. metric, 'list')) then
    redis.call('SADD', Q, ARGV[i + 2])
    redis.call('HSET', PEND, metric, ARGV[i + 2])
    for k = 2, n do redis.call('RPUSH', chain_prefix .. metric, ARGV[i + 1 + k]) end
    queued = queued + 1
  end
  i = i + 2 + n
end
return queued
"""
)

# ARGV: worker, count, now, lease_until. Moves up to count items from the queue into the
# in-flight hash under this worker and renews the worker's lease. Returns item, progress
# (the last timestamp the sink confirmed for the item, or nil), item, progress, ...
CLAIM = r"""
local Q, INF, WORKERS, PROG = KEYS[1], KEYS[2], KEYS[6], KEYS[8]
local worker, count, now, lease = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
redis.call('ZADD', WORKERS, lease, worker)
local items = redis.call('SPOP', Q, count)
local tag = cjson.encode({worker = worker, claimed_at = tonumber(now)})
local out = {}
for _, item in ipairs(items) do
  redis.call('HSET', INF, item, tag)
  out[#out + 1] = item
  out[#out + 1] = redis.call('HGET', PROG, item)
end
return out
"""

# ARGV: worker, chain_prefix, wm_key_prefix ('' = do not write flux.last.<metric>), wm_key_ttl,
# res_prefix, res_ttl, vista_metrics_key,
# then groups of 9: item, metric, wm_ts ('' = none), wm_hash_value, wm_key_value,
# resolution ('' = none), delivered ('1'/'0'), keep ('1'/'0'), n_dead, then n_dead pairs
# (dead_id, dead_json). Acknowledges processed items; with keep, only the watermark, the item's
# progress (wm_ts: its last point the sink confirmed) and dead letters are written and the item
# stays held (it is then released). The watermark and the progress only ever move forward.
# Returns the number of items removed.
ACK = (
    COMMON
    + r"""
local worker, chain_prefix, wm_prefix, wm_ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local res_prefix, res_ttl, vista_metrics = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local i, acked = 8, 0
while i <= #ARGV do
  local item, metric, wm_ts, wm_hash, wm_key = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local resolution, delivered, keep = ARGV[i+5], ARGV[i+6], ARGV[i+7] == '1'
  local n_dead = tonumber(ARGV[i+8])
  if wm_ts ~= '' then
    local current = redis.call('HGET', WMH, metric)
    local current_ts = current and
      tonumber(string.match(current, "timestamp['\"]?%s*:%s*(-?[%d%.]+)"))
    local old_key = wm_prefix ~= '' and wm_prefix .. metric
    local old_ok = old_key and key_is(old_key, 'string')
    if not current and old_ok then
      -- No hash field yet: an older flux keeps the watermark in flux.last.<metric> only.
      local old = redis.call('GET', old_key)
      current_ts = old and tonumber(string.match(old, "^%s*[%[%(]%s*(-?[%d%.]+)"))
    end
    if (not current_ts) or tonumber(wm_ts) > current_ts then
      redis.call('HSET', WMH, metric, wm_hash)
      if old_ok then redis.call('SETEX', old_key, wm_ttl, wm_key) end
    end
  end
  if resolution ~= '' and key_is(res_prefix .. metric, 'string') then
    redis.call('SETEX', res_prefix .. metric, res_ttl, resolution)
  end
  if delivered == '1' then redis.call('SADD', vista_metrics, metric) end
  for d = 1, n_dead do
    redis.call('HSET', DEAD, ARGV[i + 7 + 2 * d], ARGV[i + 8 + 2 * d])
  end
  if keep and wm_ts ~= '' then
    local done = tonumber(redis.call('HGET', PROG, item))
    if (not done) or tonumber(wm_ts) > done then redis.call('HSET', PROG, item, wm_ts) end
  elseif not keep then
    redis.call('HDEL', INF, item)
    forget(item)
    redis.call('SREM', Q, item)
    advance_chain(chain_prefix, metric, item)
    acked = acked + 1
  end
  i = i + 9 + 2 * n_dead
end
return acked
"""
)

# ARGV: worker, count_attempt ('1'/'0'), max_attempts, chain_prefix, now, then groups of 4:
# item, metric, dead_id, dead_json_if_exhausted. Puts items this worker holds back in the queue;
# with count_attempt, an item that has failed max_attempts times is dead-lettered instead.
# Returns {released, dead}.
RELEASE = (
    COMMON
    + r"""
local worker, count_attempt, max_attempts = ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local chain_prefix = ARGV[4]
local released, dead = 0, 0
for i = 6, #ARGV, 4 do
  local item, metric, dead_id, dead_json = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local tag = redis.call('HGET', INF, item)
  if tag and cjson.decode(tag)['worker'] == worker then
    redis.call('HDEL', INF, item)
    local attempts = 0
    if count_attempt then attempts = redis.call('HINCRBY', ATT, item, 1) end
    if count_attempt and attempts >= max_attempts then
      redis.call('HSET', DEAD, dead_id, dead_json)
      forget(item)
      advance_chain(chain_prefix, metric, item)
      dead = dead + 1
    else
      redis.call('SADD', Q, item)
      released = released + 1
    end
  end
end
return {released, dead}
"""
)

# ARGV: worker, then pairs (item, metric, dead_id, dead_json) -- groups of 4. Dead-letters items
# at once (undecodable, or every point permanently rejected).
DEAD_LETTER = (
    COMMON
    + r"""
local worker, chain_prefix = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV, 4 do
  local item, metric, dead_id, dead_json = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  redis.call('HDEL', INF, item)
  forget(item)
  redis.call('SREM', Q, item)
  redis.call('HSET', DEAD, dead_id, dead_json)
  advance_chain(chain_prefix, metric, item)
  n = n + 1
end
return n
"""
)

# ARGV: now, only_worker ('' = any worker whose lease expired or who has no lease).
# Puts the in-flight items of dead workers back in the queue. Returns the number recovered.
RECOVER = r"""
local Q, INF, WORKERS = KEYS[1], KEYS[2], KEYS[6]
local now, only = tonumber(ARGV[1]), ARGV[2]
local entries = redis.call('HGETALL', INF)
local recovered, dead_workers = 0, {}
for i = 1, #entries, 2 do
  local item, tag = entries[i], entries[i + 1]
  local ok, info = pcall(cjson.decode, tag)
  local worker = ok and info['worker'] or ''
  local expired
  if only ~= '' then
    expired = worker == only
  else
    local lease = tonumber(redis.call('ZSCORE', WORKERS, worker))
    expired = (not lease) or lease < now
  end
  if expired then
    redis.call('HDEL', INF, item)
    redis.call('SADD', Q, item)
    recovered = recovered + 1
    dead_workers[worker] = true
  end
end
if only ~= '' then redis.call('ZREM', WORKERS, only) end
local stale = redis.call('ZRANGEBYSCORE', WORKERS, '-inf', now)
for _, w in ipairs(stale) do redis.call('ZREM', WORKERS, w) end
return recovered
"""

# ARGV: chain_prefix. Clears pending marks whose head item is neither queued nor in flight
# (e.g. an operator deleted the queue set), releasing the chain's next item if there is one;
# forgets the progress of items neither queued nor in flight.
RECONCILE = (
    COMMON
    + r"""
local chain_prefix = ARGV[1]
local entries = redis.call('HGETALL', PEND)
local fixed = 0
for i = 1, #entries, 2 do
  local metric, item = entries[i], entries[i + 1]
  if redis.call('SISMEMBER', Q, item) == 0 and redis.call('HEXISTS', INF, item) == 0 then
    advance_chain(chain_prefix, metric, item)
    fixed = fixed + 1
  end
end
local kept = redis.call('HKEYS', PROG)
for _, item in ipairs(kept) do
  if redis.call('SISMEMBER', Q, item) == 0 and redis.call('HEXISTS', INF, item) == 0 then
    redis.call('HDEL', PROG, item)
  end
end
return fixed
"""
)

# KEYS: 1 configured hash, 2 pending hash, 3 Vista's watermark hash, 4 flux.last.metric_data,
# 5 vista.metrics, 6 failed-windows hash. ARGV: cutoff, carbon ('1': Vista wrote flux.last.*,
# so they go too; '0': Flux owns them, they stay), flux_key_prefix, resolution_prefix,
# chain_prefix, then metric names. Prunes the state of each metric that no Vista host has had
# in its settings since ``cutoff`` and that has no item queued or in flight (checked again
# here, atomically, so a metric added back meanwhile is kept). Returns the metrics pruned.
PRUNE = r"""
local CONF, PEND, VWMH, FWMH, VMETRICS, HOLES = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local cutoff, carbon = tonumber(ARGV[1]), ARGV[2] == '1'
local flux_prefix, res_prefix, chain_prefix = ARGV[3], ARGV[4], ARGV[5]
local pruned = {}
for i = 6, #ARGV do
  local metric = ARGV[i]
  local seen = tonumber(redis.call('HGET', CONF, metric))
  if seen and seen < cutoff and redis.call('HEXISTS', PEND, metric) == 0 then
    redis.call('HDEL', VWMH, metric)
    if carbon then
      redis.call('HDEL', FWMH, metric)
      local key = flux_prefix .. metric
      if key ~= FWMH and redis.call('TYPE', key)['ok'] == 'string' then redis.call('DEL', key) end
    end
    redis.call('SREM', VMETRICS, metric)
    local res = res_prefix .. metric
    if redis.call('TYPE', res)['ok'] == 'string' then redis.call('DEL', res) end
    local chain = chain_prefix .. metric
    if redis.call('TYPE', chain)['ok'] == 'list' then redis.call('DEL', chain) end
    redis.call('HDEL', HOLES, metric)
    redis.call('HDEL', CONF, metric)
    pruned[#pruned + 1] = metric
  end
end
return pruned
"""
