"""The Lua scripts behind ``chatkit.RedisState``: one per state-changing operation.

Each runs atomically in Redis, so processes sharing a Redis see every
operation of one provider in one order, exactly as ``InMemoryStore`` runs them
in one process: the arithmetic here is ``InMemoryStore``'s and ``RateBudget``'s,
line for line. Numbers travel as strings (``%.17g``, exact for a double):
Redis would truncate a Lua number to an integer. All keys of a script share
one hash tag (``{<identity hash>}``), so the scripts also run on a cluster.
"""

from __future__ import annotations

__all__ = ["ADMIT", "LATENCY", "LEARN", "RECORD", "RELEASE", "RESERVE"]

_FMT = """
local function fmt(x)
  if x == nil then return '' end
  return string.format('%.17g', x)
end
"""

# KEYS: breaker hash (state, open_until, cooldown), failures list, probes zset
# (lease id -> expiry). Replies: allowed, probe, state, open_until, cooldown,
# probes in flight, then the failure times.
_BREAKER = (
    _FMT
    + """
local function snapshot(allowed, probe)
  local b = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'cooldown')
  local out = {tostring(allowed), tostring(probe), b[1] or 'closed', b[2] or '', b[3] or '',
               tostring(redis.call('ZCARD', KEYS[3]))}
  local failures = redis.call('LRANGE', KEYS[2], 0, -1)
  for i = 1, #failures do out[#out + 1] = failures[i] end
  return out
end
local function touch(ttl)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
local now = tonumber(ARGV[1])
"""
)

# ARGV: now, half_open_probes, lease id, lease expiry, ttl (ms)
ADMIT = (
    _BREAKER
    + """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return snapshot(1, 0) end
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
  if open_until ~= nil and now < open_until then return snapshot(0, 0) end
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  redis.call('DEL', KEYS[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
local allowed = 0
if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
  allowed = 1
end
touch(tonumber(ARGV[5]))
return snapshot(allowed, allowed)
"""
)

# ARGV: now, failed ('1', '0' or '': no verdict), probe lease id (or ''),
# failure_threshold, window, cooldown, max_cooldown, retry_after (or ''), ttl (ms)
RECORD = (
    _BREAKER
    + """
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[3], ARGV[3]) end
if ARGV[2] == '' then return snapshot(0, 0) end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local function open(cooldown)
  local hold = math.max(cooldown, tonumber(ARGV[8]) or 0)
  redis.call('HSET', KEYS[1], 'state', 'open', 'cooldown', fmt(cooldown),
             'open_until', fmt(now + hold))
  redis.call('DEL', KEYS[2], KEYS[3])
end
if ARGV[2] == '0' then
  if state ~= 'closed' then redis.call('DEL', KEYS[1], KEYS[2]) end
elseif state == 'half_open' then
  local current = tonumber(redis.call('HGET', KEYS[1], 'cooldown')) or tonumber(ARGV[6])
  open(math.min(2 * current, tonumber(ARGV[7])))
elseif state == 'closed' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  local oldest = now - tonumber(ARGV[5])
  while true do
    local first = redis.call('LINDEX', KEYS[2], 0)
    if first and tonumber(first) <= oldest then redis.call('LPOP', KEYS[2]) else break end
  end
  if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[4]) then open(tonumber(ARGV[6])) end
end
touch(tonumber(ARGV[9]))
return snapshot(0, 0)
"""
)

# KEYS: budget hash (sig, rl/ru: requests level/updated, tl/tu: tokens, blocked),
# slots zset (lease id -> expiry). ARGV: now, limit signature, rpm, tpm,
# max_concurrency (each '' when unlimited), ttl (ms), then the operation's.
# Replies: wait ('0', seconds or 'inf'), rl, ru, tl, tu, live leases.
_BUDGET = (
    _FMT
    + """
local now = tonumber(ARGV[1])
local rpm, tpm, conc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local b = {}
local saved = redis.call('HMGET', KEYS[1], 'sig', 'rl', 'ru', 'tl', 'tu', 'blocked')
if saved[1] == ARGV[2] then
  b.rl, b.ru, b.tl = tonumber(saved[2]), tonumber(saved[3]), tonumber(saved[4])
  b.tu, b.blocked = tonumber(saved[5]), tonumber(saved[6])
else
  b.rl, b.ru, b.tl, b.tu, b.blocked = rpm or 0, now, tpm or 0, now, 0
end
local function refill(level, updated, cap)
  return math.min(cap, level + math.max(now - updated, 0) * cap / 60), now
end
local function refill_requests() if rpm then b.rl, b.ru = refill(b.rl, b.ru, rpm) end end
local function refill_tokens() if tpm then b.tl, b.tu = refill(b.tl, b.tu, tpm) end end
local function live()
  if conc == nil then return 0 end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  return redis.call('ZCARD', KEYS[2])
end
local function save()
  redis.call('HSET', KEYS[1], 'sig', ARGV[2], 'rl', fmt(b.rl), 'ru', fmt(b.ru),
             'tl', fmt(b.tl), 'tu', fmt(b.tu), 'blocked', fmt(b.blocked))
  local ttl = math.max(tonumber(ARGV[6]), math.ceil((b.blocked - now) * 1000) + 120000)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local function reply(wait, inflight)
  return {wait, fmt(b.rl), fmt(b.ru), fmt(b.tl), fmt(b.tu), tostring(inflight)}
end
"""
)

# ARGV[7..]: tokens, lease id, lease expiry
RESERVE = (
    _BUDGET
    + """
local tokens = tonumber(ARGV[7])
local function wait_for(level, cap, amount)
  return math.max(math.min(amount, cap) - level, 0) * 60 / cap
end
local wait = math.max(b.blocked - now, 0)
if rpm then refill_requests(); wait = math.max(wait, wait_for(b.rl, rpm, 1)) end
if tpm then refill_tokens(); wait = math.max(wait, wait_for(b.tl, tpm, tokens)) end
local inflight = live()
local full = conc ~= nil and inflight >= conc
if wait <= 0 and not full then
  if rpm then b.rl = b.rl - 1 end
  if tpm then b.tl = b.tl - math.min(tokens, tpm) end
  if conc ~= nil then
    redis.call('ZADD', KEYS[2], ARGV[9], ARGV[8])
    inflight = inflight + 1
  end
  save()
  return reply('0', inflight)
end
save()
if full then return reply('inf', inflight) end
return reply(fmt(wait), inflight)
"""
)

# ARGV[7..]: reserved tokens, used tokens (or ''), sent ('1' / '0'), lease id (or '')
RELEASE = (
    _BUDGET
    + """
if ARGV[10] ~= '' then redis.call('ZREM', KEYS[2], ARGV[10]) end
local reserved, used = tonumber(ARGV[7]), tonumber(ARGV[8])
if ARGV[9] == '1' then
  if tpm and used then
    refill_tokens()
    b.tl = math.min(tpm, b.tl + math.min(reserved, tpm) - used)
  end
else
  if rpm then b.rl = math.min(rpm, b.rl + math.min(1, rpm)) end
  if tpm then b.tl = math.min(tpm, b.tl + math.min(reserved, tpm)) end
end
save()
return reply('0', live())
"""
)

# ARGV[7..]: requests left (or ''), tokens left (or ''), blocked_for
LEARN = (
    _BUDGET
    + """
local requests, tokens, blocked_for = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
if rpm and requests then refill_requests(); b.rl = math.min(b.rl, requests) end
if tpm and tokens then refill_tokens(); b.tl = math.min(b.tl, tokens) end
if blocked_for > 0 then b.blocked = math.max(b.blocked, now + blocked_for) end
save()
return reply('0', live())
"""
)

# KEYS: latency average (string), samples list. ARGV: weight, samples kept,
# ttl (ms), then the new samples. Replies: the average, then the samples.
LATENCY = (
    _FMT
    + """
local average = tonumber(redis.call('GET', KEYS[1]))
local weight = tonumber(ARGV[1])
for i = 4, #ARGV do
  local x = tonumber(ARGV[i])
  if average == nil then average = x else average = average + weight * (x - average) end
  redis.call('RPUSH', KEYS[2], ARGV[i])
end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('SET', KEYS[1], fmt(average), 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local out = redis.call('LRANGE', KEYS[2], 0, -1)
table.insert(out, 1, fmt(average))
return out
"""
)
