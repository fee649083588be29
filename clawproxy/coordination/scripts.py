"""The Lua that runs inside Redis: each decision in one atomic call, timed by Redis's clock.

Every script reads the time with ``TIME`` (Redis's own clock, so instances whose clocks
disagree still agree on expiries), and touches only the keys it is given, all under one
hash tag (``{prefix}``), so the scripts run on Redis Cluster too.

Slots: one sorted set per node; member = lease id, score = its expiry in ms.
"""

from __future__ import annotations

# KEYS: the ranked candidates' slot sets. ARGV: lease id, ttl ms, then each key's cap.
# Drops expired leases, then gives the lease to the first node with room.
# Returns {index (1-based, 0: none), leases reclaimed}.
ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local reclaimed = 0
for i, key in ipairs(KEYS) do
  reclaimed = reclaimed + redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) < tonumber(ARGV[i + 2]) then
    redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
    return {i, reclaimed}
  end
end
return {0, reclaimed}
"""

# KEYS: one slot set per held lease, then the instances set. ARGV: ttl ms, this instance's
# id, then the lease ids in KEYS' order. Renews each lease still present (reports the lost
# ones), and this instance's heartbeat. Returns {lost indexes..., -1, live instances}.
RENEW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[1])
local lost = {}
local n = #KEYS - 1
for i = 1, n do
  if redis.call('ZSCORE', KEYS[i], ARGV[i + 2]) then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[i + 2])
  else
    table.insert(lost, i)
  end
end
local instances = KEYS[n + 1]
redis.call('ZADD', instances, now + ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', instances, '-inf', now)
table.insert(lost, -1)
table.insert(lost, redis.call('ZCARD', instances))
return lost
"""

# KEYS: one slot set per held lease. ARGV: ttl ms, then the lease ids. Puts every lease
# back (Redis came back, or lost its data): they are real requests, over a cap or not.
REREGISTER = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[1]), ARGV[i + 1])
end
return #KEYS
"""

# KEYS: the client's bucket. ARGV: emission interval ms, burst (requests). GCRA: the
# bucket is the "theoretical arrival time"; a request is admitted when it does not push
# that more than burst intervals ahead of now. Returns 0, or the ms to wait.
RATE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return allow_at - now
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1)
return 0
"""
