"""The Lua scripts that make the Redis store's compare-and-set atomic (Redis runs a script alone).

Every script takes a batch of leases: ARGV[1] and ARGV[2] are the script's own (the lease in
ms, a mode), then three KEYS and three ARGV per lease i (1-based):

    KEYS[3i-2]  the lease's key: `claim:KIND:NAME` or `node:ID`
    KEYS[3i-1]  the members set of a group key: `members:KIND:NAME` (a claim repeats its key)
    KEYS[3i]    the members' health of a group key: `health:KIND:NAME` (a claim repeats its key)
    ARGV[3i]    kind: "c" (a value held alone: a claim or a node record), "m" (a healthy
                member) or "u" (an unhealthy member)
    ARGV[3i+1]  the value the key must hold: the owner ("x NODE HOLDER"), the group ("g NAME")
                or the node record's JSON
    ARGV[3i+2]  the member ("NODE HOLDER"); "" for kind "c"

A group key is a string holding "g NAME" beside a sorted set of members scored by the time
(ms, the server's clock) their own lease ends, and a hash of the members last written
unhealthy (a member absent from it is healthy: a healthy group costs no hash). Every
acquire and renewal of a member writes its health, so a lost write is mended within a
renewal interval. The three keys expire with the longest member lease, so a group with no
live member disappears as a claim does. Times come from `TIME` on the server: no node's
clock is trusted, and every node sees the same expiry.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "LOOKUP", "RELEASE", "RENEW"]

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(x) return string.format('%.0f', x) end
-- The key, the members set and their health live exactly as long as the longest member lease.
local function stretch(key, mkey, hkey, now)
  local top = redis.call('ZRANGE', mkey, -1, -1, 'WITHSCORES')
  if #top == 0 then return false end
  local left = int(tonumber(top[2]) - now)
  redis.call('PEXPIRE', key, left)
  redis.call('PEXPIRE', mkey, left)
  redis.call('PEXPIRE', hkey, left)
  return true
end
local function set_health(hkey, member, kind)
  if kind == 'u' then
    redis.call('HSET', hkey, member, '0')
  else
    redis.call('HDEL', hkey, member)
  end
end
local function member_alive(mkey, member, now)
  local score = redis.call('ZSCORE', mkey, member)
  return score and tonumber(score) > now
end
"""

#: ARGV[1] = lease ms, ARGV[2] = "1" (all or nothing) or "0" (each on its own).
#: Returns the indices (1-based) of the leases refused.
ACQUIRE = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
local atomic = ARGV[2] == '1'
local n = #KEYS / 3
local refused, ok = {}, {}
for i = 1, n do
  local cur = redis.call('GET', KEYS[3*i-2])
  if cur and cur ~= ARGV[3*i+1] then
    refused[#refused+1] = i
  else
    ok[#ok+1] = i
  end
end
if atomic and #refused > 0 then return refused end
local now = now_ms()
for _, i in ipairs(ok) do
  local key, mkey, hkey, value = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], ARGV[3*i+1]
  if ARGV[3*i] == 'c' then
    redis.call('SET', key, value, 'PX', ttl)
  else
    redis.call('ZREMRANGEBYSCORE', mkey, '-inf', int(now))
    redis.call('ZADD', mkey, int(now + ttl), ARGV[3*i+2])
    set_health(hkey, ARGV[3*i+2], ARGV[3*i])
    redis.call('SET', key, value)
    stretch(key, mkey, hkey, now)
  end
end
return refused
"""
)

#: ARGV[1] = lease ms, ARGV[2] unused. Returns the indices of the leases no longer held.
RENEW = (
    _PRELUDE
    + """
local ttl = tonumber(ARGV[1])
local now = now_ms()
local lost = {}
for i = 1, #KEYS / 3 do
  local key, mkey, hkey, value = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], ARGV[3*i+1]
  local held = redis.call('GET', key) == value
  if ARGV[3*i] == 'c' then
    if held then redis.call('PEXPIRE', key, ttl) else lost[#lost+1] = i end
  else
    local member = ARGV[3*i+2]
    if held and member_alive(mkey, member, now) then
      redis.call('ZADD', mkey, 'XX', int(now + ttl), member)
      set_health(hkey, member, ARGV[3*i])
      stretch(key, mkey, hkey, now)
    else
      redis.call('ZREMRANGEBYSCORE', mkey, '-inf', int(now))
      lost[#lost+1] = i
    end
  end
end
return lost
"""
)

#: ARGV[1], ARGV[2] unused. Returns how many of the leases were held (and are now given up).
RELEASE = (
    _PRELUDE
    + """
local now = now_ms()
local released = 0
for i = 1, #KEYS / 3 do
  local key, mkey, hkey, value = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i], ARGV[3*i+1]
  local held = redis.call('GET', key) == value
  if ARGV[3*i] == 'c' then
    if held then
      redis.call('DEL', key)
      released = released + 1
    end
  else
    local member = ARGV[3*i+2]
    if held and member_alive(mkey, member, now) then released = released + 1 end
    redis.call('ZREM', mkey, member)
    redis.call('HDEL', hkey, member)
    redis.call('ZREMRANGEBYSCORE', mkey, '-inf', int(now))
    if held and not stretch(key, mkey, hkey, now) then redis.call('DEL', key, hkey) end
  end
end
return released
"""
)

#: KEYS as above (claim keys only), ARGV unused. Returns per key: {} when free, else
#: {value, ms left} and, for a group, a flat list {member, ms left, healthy (1 or 0), ...}.
LOOKUP = (
    _PRELUDE
    + """
local now = now_ms()
local out = {}
for i = 1, #KEYS / 3 do
  local key, mkey, hkey = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local value = redis.call('GET', key)
  if not value then
    out[i] = {}
  else
    local item = {value, redis.call('PTTL', key)}
    if string.sub(value, 1, 2) == 'g ' then
      local members = {}
      local scored = redis.call('ZRANGEBYSCORE', mkey, '(' .. int(now), '+inf', 'WITHSCORES')
      for j = 1, #scored, 2 do
        members[#members+1] = scored[j]
        members[#members+1] = tonumber(scored[j+1]) - now
        members[#members+1] = 1 - redis.call('HEXISTS', hkey, scored[j])
      end
      item[3] = members
    end
    out[i] = item
  end
end
return out
"""
)
