"""Lua scripts of the Redis components, one named constant each.

Every script's header names its ``KEYS[n]``, ``ARGV[n]`` and return value. Components register
a script once (``client.register_script``) and call it by SHA: redis-py sends ``EVALSHA`` and
falls back to loading the script on ``NOSCRIPT``. Sections are appended per component.
"""

from __future__ import annotations

# -- RedisTagIndex -------------------------------------------------------------------------------
#
# Every key of one tag index shares the hash tag ``{prefix}`` (see _keys.py), so these scripts
# may touch keys they derive from data (the old tags of a key, the keys an expiry sweep finds)
# besides the ones they declare: all of them live in the slot of KEYS[1]. Only the fixed keys
# are declared; the others are built from the name prefixes passed in ARGV, exactly as
# _keys.py builds them on the Python side.

# Lua shared by the tag-index scripts (not a script on its own).
_TAG_INDEX_LUA = """
local function shard_of(member, shards, shard_prefix)
  -- Same rule as _keys.tag_index_shard_of: first 32 bits of SHA-1, modulo the shard count.
  local h = tonumber(string.sub(redis.sha1hex(member), 1, 8), 16)
  return shard_prefix .. tostring(h % tonumber(shards))
end

local function check_layout(layout_key, shards)
  -- Instances with different shard counts would look for a key in different shards.
  local stored = redis.call('GET', layout_key)
  if not stored then
    redis.call('SET', layout_key, shards)
    return nil
  end
  if stored ~= shards then
    return 'LAYERCACHE_LAYOUT the tag index uses ' .. stored ..
      ' known-keys shards, this client is configured with ' .. shards
  end
  return nil
end

local function forget(member, expiry, shards, tag_prefix, key_prefix, shard_prefix)
  local key_set = key_prefix .. member
  local tags = redis.call('SMEMBERS', key_set)
  for i = 1, #tags do
    redis.call('SREM', tag_prefix .. tags[i], member)
  end
  redis.call('DEL', key_set)
  redis.call('SREM', shard_of(member, shards, shard_prefix), member)
  redis.call('ZREM', expiry, member)
end

local function sweep(now, limit, expiry, shards, tag_prefix, key_prefix, shard_prefix)
  -- Forget at most `limit` keys whose expiry is at or before `now`.
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, limit)
  for i = 1, #due do
    forget(due[i], expiry, shards, tag_prefix, key_prefix, shard_prefix)
  end
  return #due
end

local function replace_tags(member, expires_at, tags, key_set, shard, expiry, tag_prefix)
  -- Give `member` exactly the tags of the list `tags` (empty: forget it): it leaves the tag
  -- sets of the tags it no longer has, joins the new ones, and its known-keys shard and
  -- expiry entry follow. `expires_at` is a wall-clock time in seconds, or '' for none.
  local wanted = {}
  for i = 1, #tags do
    wanted[tags[i]] = true
  end
  local old = redis.call('SMEMBERS', key_set)
  for i = 1, #old do
    if not wanted[old[i]] then
      redis.call('SREM', tag_prefix .. old[i], member)
    end
  end
  redis.call('DEL', key_set)
  if #tags == 0 then
    redis.call('SREM', shard, member)
    redis.call('ZREM', expiry, member)
    return
  end
  redis.call('SADD', key_set, unpack(tags))
  for i = 1, #tags do
    redis.call('SADD', tag_prefix .. tags[i], member)
  end
  redis.call('SADD', shard, member)
  if expires_at == '' then
    redis.call('ZREM', expiry, member)
  else
    redis.call('ZADD', expiry, expires_at, member)
  end
end
"""

TAG_INDEX_RECORD = (
    _TAG_INDEX_LUA
    + """
-- Replace the tags of one key atomically, after forgetting a few expired keys.
-- KEYS[1]  the key's tag set ({prefix}:key:<key>)
-- KEYS[2]  the key's known-keys shard ({prefix}:keys:<n>)
-- KEYS[3]  the expiry sorted set ({prefix}:expiry)
-- KEYS[4]  the layout string ({prefix}:layout)
-- KEYS[5..] the tag sets of the new tags, in the order of ARGV[9..]
-- ARGV[1]  the key
-- ARGV[2]  its wall-clock expiry in seconds, or '' for none
-- ARGV[3]  the current wall-clock time in seconds
-- ARGV[4]  how many expired keys to forget on the way (0: none)
-- ARGV[5]  the known-keys shard count
-- ARGV[6]  tag set name prefix, ARGV[7] key set name prefix, ARGV[8] shard name prefix
-- ARGV[9..] the new tags (none: the key is forgotten)
-- Returns the number of expired keys forgotten; an error reply LAYERCACHE_LAYOUT ... if the
-- index was created with another shard count.
local err = check_layout(KEYS[4], ARGV[5])
if err then
  return redis.error_reply(err)
end
-- The sweep runs first so that it can never forget the key recorded below.
local swept = sweep(ARGV[3], ARGV[4], KEYS[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
-- KEYS[5..] name the same tag sets that replace_tags derives from ARGV[6] and the tags.
replace_tags(ARGV[1], ARGV[2], {unpack(ARGV, 9)}, KEYS[1], KEYS[2], KEYS[3], ARGV[6])
return swept
"""
)

TAG_INDEX_RECORD_MANY = (
    _TAG_INDEX_LUA
    + """
-- Replace the tags of several keys, in order, each exactly as TAG_INDEX_RECORD would: before
-- each key, a few expired keys are forgotten (so the result equals one TAG_INDEX_RECORD call
-- per key at the same `now`). Atomic as a whole.
-- KEYS[1]  the expiry sorted set ({prefix}:expiry)
-- KEYS[2]  the layout string ({prefix}:layout)
-- ARGV[1]  the current wall-clock time in seconds
-- ARGV[2]  how many expired keys to forget before each key (0: none)
-- ARGV[3]  the known-keys shard count
-- ARGV[4]  tag set name prefix, ARGV[5] key set name prefix, ARGV[6] shard name prefix
-- ARGV[7..] per key: the key, its wall-clock expiry in seconds or '', the number n of its
--           tags, then its n tags (n = 0: the key is forgotten)
-- Returns the number of expired keys forgotten; an error reply LAYERCACHE_LAYOUT ... on a
-- shard-count mismatch (nothing is changed then).
local err = check_layout(KEYS[2], ARGV[3])
if err then
  return redis.error_reply(err)
end
local swept = 0
local i = 7
while i <= #ARGV do
  local member = ARGV[i]
  local count = tonumber(ARGV[i + 2])
  local tags = {}
  for j = 1, count do
    tags[j] = ARGV[i + 2 + j]
  end
  swept = swept + sweep(ARGV[1], ARGV[2], KEYS[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  replace_tags(member, ARGV[i + 1], tags, ARGV[5] .. member,
    shard_of(member, ARGV[3], ARGV[6]), KEYS[1], ARGV[4])
  i = i + 3 + count
end
return swept
"""
)

TAG_INDEX_REMOVE = (
    _TAG_INDEX_LUA
    + """
-- Forget several keys atomically: their tag sets, their entries in the tag sets, the
-- known-keys shards and the expiry set.
-- KEYS[1]  the expiry sorted set ({prefix}:expiry)
-- KEYS[2]  the layout string ({prefix}:layout)
-- ARGV[1]  the known-keys shard count
-- ARGV[2]  tag set name prefix, ARGV[3] key set name prefix, ARGV[4] shard name prefix
-- ARGV[5..] the keys
-- Returns the number of keys given; an error reply LAYERCACHE_LAYOUT ... on a shard-count
-- mismatch.
local err = check_layout(KEYS[2], ARGV[1])
if err then
  return redis.error_reply(err)
end
for i = 5, #ARGV do
  forget(ARGV[i], KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end
return #ARGV - 4
"""
)

TAG_INDEX_CLEANUP = (
    _TAG_INDEX_LUA
    + """
-- Forget keys whose expiry has passed, at most ARGV[2] of them.
-- KEYS[1]  the expiry sorted set ({prefix}:expiry)
-- KEYS[2]  the layout string ({prefix}:layout)
-- ARGV[1]  the current wall-clock time in seconds
-- ARGV[2]  the most keys to forget
-- ARGV[3]  the known-keys shard count
-- ARGV[4]  tag set name prefix, ARGV[5] key set name prefix, ARGV[6] shard name prefix
-- Returns the number of keys forgotten; an error reply LAYERCACHE_LAYOUT ... on a shard-count
-- mismatch.
local err = check_layout(KEYS[2], ARGV[3])
if err then
  return redis.error_reply(err)
end
return sweep(ARGV[1], ARGV[2], KEYS[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)


# -- RedisSingleFlightCoordinator ---------------------------------------------------------------
#
# Each script touches exactly one key, the lock of one cache key (``prefix:lock:{key}``), so it
# runs on a cluster as well as on a single server.

SINGLE_FLIGHT_ACQUIRE = """
-- Take the lock if nobody holds it (SET NX PX); otherwise tell how long the holder's lease lasts.
-- KEYS[1]  the lock
-- ARGV[1]  this caller's random token
-- ARGV[2]  the lease in milliseconds
-- Returns {1, 0} when the lock was taken; {0, pttl} when another token holds it, pttl being
-- the holder's remaining lease in milliseconds (-1: a lock without expiry).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, 0}
end
return {0, redis.call('PTTL', KEYS[1])}
"""

SINGLE_FLIGHT_RENEW = """
-- Extend the lease, only while the lock is still ours (compare-and-pexpire).
-- KEYS[1]  the lock
-- ARGV[1]  the holder's token
-- ARGV[2]  the new lease in milliseconds
-- Returns 1 when the lease was extended, 0 when the lock is gone or holds another token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

SINGLE_FLIGHT_RELEASE = """
-- Delete the lock only if it is still ours (compare-and-delete), then optionally announce the
-- end of the fetch. Both happen in one atomic step, so a waiter woken by the notice always
-- finds the lock gone (unless another caller took it since).
-- KEYS[1]  the lock
-- ARGV[1]  the holder's token
-- ARGV[2]  (optional) the pub/sub channel to notify
-- ARGV[3]  (with ARGV[2]) the message, the cache key
-- Returns 1 when the lock was deleted, 0 when it was gone or held another token; the notice is
-- published either way (a stale holder's value is still in the shared layers).
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  released = redis.call('DEL', KEYS[1])
end
if #ARGV >= 3 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return released
"""


# --- Key generations (RedisInvalidationBus) ---------------------------------------------------

GENERATION_BUMP = """
-- KEYS[1]: the generation counter
-- ARGV[1]: the smallest acceptable new generation (the caller's current one + 1)
-- Returns: the new generation: the counter incremented, and raised to ARGV[1] if lower,
--          so instances that started from a configured generation never move backwards.
local value = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if value < floor then
  redis.call('SET', KEYS[1], floor)
  value = floor
end
return value
"""


# --- LayerCacheBackend.incr / decr (Django integration) ----------------------------------------
#
# The stored value is an EntryCodec envelope, which Lua cannot decode, so the backend reads the
# bytes, computes the new envelope in Python and commits it with this compare-and-set. It
# touches one key, so it runs on a cluster as well as on a single server.

COUNTER_COMPARE_AND_SET = """
-- Replace a value only if it still holds the bytes the caller read, keeping its expiry.
-- KEYS[1]  the stored entry
-- ARGV[1]  the bytes the caller read
-- ARGV[2]  the new bytes
-- Returns 1 when the value was replaced; 0 when the key is gone or holds other bytes (another
-- writer won: the caller reads again).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
-- PTTL (not SET KEEPTTL) so that servers older than Redis 6 keep the expiry too.
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
elseif ttl == -1 then
  redis.call('SET', KEYS[1], ARGV[2])
else
  return 0
end
return 1
"""
