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

-- Most members (or keys) per command a script sends: Lua's unpack and each command stay bounded.
local CHUNK = 1000

local function call_chunked(command, name, items)
  -- `command name item...` (or `command item...` when name is nil), CHUNK items at a time.
  for first = 1, #items, CHUNK do
    local last = math.min(first + CHUNK - 1, #items)
    if name then
      redis.call(command, name, unpack(items, first, last))
    else
      redis.call(command, unpack(items, first, last))
    end
  end
end

local function add_to(groups, name, member)
  local list = groups[name]
  if list == nil then
    groups[name] = {member}
  else
    list[#list + 1] = member
  end
end

local function each_group(command, groups, prefix)
  -- One command per set with all of its members (in chunks); the sets are independent, so
  -- their order does not matter. The groups are keyed by name, or by what follows `prefix`
  -- in the name (the tag: the name is then built once per set, not once per member).
  for name, list in pairs(groups) do
    call_chunked(command, prefix and prefix .. name or name, list)
  end
end

local function forget_many(members, expiry, shards, tag_prefix, key_prefix, shard_prefix)
  -- Forget keys: their tag sets, their entries in the tag sets, the known-keys shards and the
  -- expiry set. One SMEMBERS per key; then one SREM per tag set and per shard, one DEL and
  -- one ZREM, each with many members, instead of a few commands per key. (TAG_INDEX_REMOVE
  -- does the same with the shards its caller computed.)
  if #members == 0 then
    return
  end
  local tag_groups, shard_groups, key_sets = {}, {}, {}
  for i = 1, #members do
    local member = members[i]
    local key_set = key_prefix .. member
    local tags = redis.call('SMEMBERS', key_set)
    for j = 1, #tags do
      add_to(tag_groups, tags[j], member)
    end
    add_to(shard_groups, shard_of(member, shards, shard_prefix), member)
    key_sets[i] = key_set
  end
  each_group('SREM', tag_groups, tag_prefix)
  each_group('SREM', shard_groups)
  call_chunked('DEL', nil, key_sets)
  call_chunked('ZREM', expiry, members)
end

local function sweep(now, limit, expiry, shards, tag_prefix, key_prefix, shard_prefix)
  -- Forget at most `limit` keys whose expiry is at or before `now`.
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, limit)
  forget_many(due, expiry, shards, tag_prefix, key_prefix, shard_prefix)
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

local function replace_many(items, expiry, shards, tag_prefix, key_prefix, shard_prefix)
  -- replace_tags for several keys (`items`: {member, expires_at, tags} each, the tags
  -- unique), with the same result: a key given twice ends with its last item. Per key one
  -- SMEMBERS, and its tag set is rewritten only when its tags changed; the tag sets, shards and
  -- the expiry set get one command each with all of their members.
  local last = {}
  for i = 1, #items do
    last[items[i][1]] = i
  end
  local adds, removes, shard_adds, shard_removes = {}, {}, {}, {}
  local expiring, lasting = {}, {}
  for i = 1, #items do
    local member, expires_at, tags = items[i][1], items[i][2], items[i][3]
    if last[member] == i then
      local key_set = key_prefix .. member
      local old = redis.call('SMEMBERS', key_set)
      local wanted, had = {}, {}
      for j = 1, #tags do
        wanted[tags[j]] = true
      end
      for j = 1, #old do
        had[old[j]] = true
        if not wanted[old[j]] then
          add_to(removes, old[j], member)
        end
      end
      -- Every wanted tag set gets the key, also one its old tags name: an entry expired by
      -- TAG_INDEX_EXPIRE left the invalidated tags' sets while its tag set still names them.
      -- The tags are unique: as many as before and none new means the same tag set, which is
      -- then not rewritten.
      local same = #old == #tags
      for j = 1, #tags do
        if not had[tags[j]] then
          same = false
        end
        add_to(adds, tags[j], member)
      end
      if not same then
        if #old > 0 then
          redis.call('DEL', key_set)
        end
        if #tags > 0 then
          redis.call('SADD', key_set, unpack(tags))
        end
      end
      local shard = shard_of(member, shards, shard_prefix)
      if #tags == 0 then
        add_to(shard_removes, shard, member)
        lasting[#lasting + 1] = member
      else
        add_to(shard_adds, shard, member)
        if expires_at == '' then
          lasting[#lasting + 1] = member
        else
          expiring[#expiring + 1] = expires_at
          expiring[#expiring + 1] = member
        end
      end
    end
  end
  each_group('SREM', removes, tag_prefix)
  each_group('SADD', adds, tag_prefix)
  each_group('SREM', shard_removes)
  each_group('SADD', shard_adds)
  call_chunked('ZREM', expiry, lasting)
  -- CHUNK is even: every chunk of score, member pairs starts with a score.
  call_chunked('ZADD', expiry, expiring)
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
-- Replace the tags of several keys, in order, with the result of one TAG_INDEX_RECORD call
-- per key at the same `now` (which forgets a few expired keys before each key). Atomic as a
-- whole.
-- KEYS[1]  the expiry sorted set ({prefix}:expiry)
-- KEYS[2]  the layout string ({prefix}:layout)
-- ARGV[1]  the current wall-clock time in seconds
-- ARGV[2]  how many expired keys to forget before each key (0: none)
-- ARGV[3]  the known-keys shard count
-- ARGV[4]  tag set name prefix, ARGV[5] key set name prefix, ARGV[6] shard name prefix
-- ARGV[7]  the keys, joined by newlines (a key or tag never holds a control character)
-- ARGV[8]  their wall-clock expiries in seconds ('-' for none), joined by newlines
-- ARGV[9]  the number of each key's tag list among ARGV[10..], joined by newlines
-- ARGV[10..] the tag lists, each with its tags (unique) joined by newlines ('' for none:
--           the key is forgotten)
-- Returns the number of expired keys forgotten; an error reply LAYERCACHE_LAYOUT ... on a
-- shard-count mismatch (nothing is changed then).
local err = check_layout(KEYS[2], ARGV[3])
if err then
  return redis.error_reply(err)
end
local lists = {}
for j = 10, #ARGV do
  local tags = {}
  for tag in string.gmatch(ARGV[j], '[^\\n]+') do
    tags[#tags + 1] = tag
  end
  lists[j - 9] = tags
end
local items = {}
local past = false
local now = tonumber(ARGV[1])
local next_expiry = string.gmatch(ARGV[8], '[^\\n]+')
local next_list = string.gmatch(ARGV[9], '[^\\n]+')
for member in string.gmatch(ARGV[7], '[^\\n]+') do
  local expires_at = next_expiry()
  if expires_at == '-' then
    expires_at = ''
  elseif tonumber(expires_at) <= now then
    past = true
  end
  items[#items + 1] = {member, expires_at, lists[tonumber(next_list())]}
end
local per_key = tonumber(ARGV[2])
if not past then
  -- The usual case, in bulk: no item expires by `now`, so a key recorded here is not due any
  -- more afterwards (it leaves the expiry set or gets a later score) and no key becomes due
  -- during the batch. The per-key sweeps would then forget, before each item, the next
  -- `per_key` due keys (in ZRANGEBYSCORE order) that are neither forgotten nor recorded by
  -- then. That is worked out here on one read of the due keys, which holds enough of them
  -- (each item takes at most one key off the list before the sweeps reach it); then the keys
  -- are forgotten at once, and every item's tags replaced at once. Forgetting a key before
  -- it is recorded is what its own sweep would have done; the other forgotten keys are not
  -- among the items, so the order does not matter for them.
  local forget = {}
  local limit = per_key * #items
  if limit > 0 then
    local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit + #items)
    local recorded = {}
    local next_due = 1
    for n = 1, #items do
      local budget = per_key
      while budget > 0 and next_due <= #due do
        local member = due[next_due]
        next_due = next_due + 1
        if not recorded[member] then
          forget[#forget + 1] = member
          budget = budget - 1
        end
      end
      recorded[items[n][1]] = true
    end
  end
  forget_many(forget, KEYS[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  replace_many(items, KEYS[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  return #forget
end
-- Otherwise one key at a time, exactly as TAG_INDEX_RECORD.
local swept = 0
for n = 1, #items do
  local member = items[n][1]
  swept = swept + sweep(ARGV[1], ARGV[2], KEYS[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  replace_tags(member, items[n][2], items[n][3], ARGV[5] .. member,
    shard_of(member, ARGV[3], ARGV[6]), KEYS[1], ARGV[4])
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
-- ARGV[5]  '' (forget every key given), or a wall-clock time: forget only the keys whose
--          expiry is at or before it (the expiry sweep: a key recorded again since it was
--          found due has a later expiry, or none, and stays)
-- ARGV[6..] the keys by known-keys shard (computed by the caller with the rule of shard_of):
--           per shard its number, then its keys joined by newlines (a key never holds a
--           control character; one argument instead of one per key costs the client less)
-- Returns the number of keys forgotten; an error reply LAYERCACHE_LAYOUT ... on a
-- shard-count mismatch.
local err = check_layout(KEYS[2], ARGV[1])
if err then
  return redis.error_reply(err)
end
local due_by = tonumber(ARGV[5])

local function still_due(members)
  -- The members whose expiry score is at or before due_by (one ZMSCORE per CHUNK).
  local kept = {}
  for first = 1, #members, CHUNK do
    local last = math.min(first + CHUNK - 1, #members)
    local scores = redis.call('ZMSCORE', KEYS[1], unpack(members, first, last))
    for i = first, last do
      local score = scores[i - first + 1]
      if score and tonumber(score) <= due_by then
        kept[#kept + 1] = members[i]
      end
    end
  end
  return kept
end
-- forget_many's work, with each shard's keys as given: per key one SMEMBERS (its tags) and
-- nothing else; then one SREM per shard and per tag set, one DEL and one ZREM, each with many
-- members.
local key_prefix = ARGV[3]
local members, key_sets, tag_groups = {}, {}, {}
local count = 0
for i = 6, #ARGV, 2 do
  local shard_members = {}
  for member in string.gmatch(ARGV[i + 1], '[^\\n]+') do
    shard_members[#shard_members + 1] = member
  end
  if due_by then
    shard_members = still_due(shard_members)
  end
  for n = 1, #shard_members do
    local member = shard_members[n]
    count = count + 1
    members[count] = member
    local key_set = key_prefix .. member
    key_sets[count] = key_set
    local tags = redis.call('SMEMBERS', key_set)
    for j = 1, #tags do
      local list = tag_groups[tags[j]]
      if list == nil then
        tag_groups[tags[j]] = {member}
      else
        list[#list + 1] = member
      end
    end
  end
  call_chunked('SREM', ARGV[4] .. ARGV[i], shard_members)
end
each_group('SREM', tag_groups, ARGV[2])
call_chunked('DEL', nil, key_sets)
call_chunked('ZREM', KEYS[1], members)
return count
"""
)

TAG_INDEX_EXPIRE = (
    _TAG_INDEX_LUA
    + """
-- Expire the index entries of several keys now, atomically, and take them out of the given
-- tag sets: each key gets the expiry score 0 (due: the next expiry sweep, of any instance,
-- forgets its tag set, its other tag sets' entries and its shard entry, unless the key is
-- recorded again first, which gives it a new score). Per key no read and no command of its
-- own: one ZADD for all of them and one SREM per given tag set.
-- KEYS[1]  the expiry sorted set ({prefix}:expiry)
-- KEYS[2]  the layout string ({prefix}:layout)
-- ARGV[1]  the known-keys shard count
-- ARGV[2]  tag set name prefix, ARGV[3] key set name prefix, ARGV[4] shard name prefix
-- ARGV[5]  the tags whose sets lose the keys, joined by newlines ('' for none)
-- ARGV[6]  the keys, joined by newlines (a key never holds a control character)
-- Returns how many of the keys had live entries (not already expired by an earlier call:
-- ZADD's CH count); an error reply LAYERCACHE_LAYOUT ... on a shard-count mismatch.
local err = check_layout(KEYS[2], ARGV[1])
if err then
  return redis.error_reply(err)
end
local members, scored = {}, {}
for member in string.gmatch(ARGV[6], '[^\\n]+') do
  members[#members + 1] = member
  scored[#scored + 1] = 0
  scored[#scored + 1] = member
end
-- CHUNK is even: every chunk of score, member pairs starts with a score.
local live = 0
for first = 1, #scored, CHUNK do
  local last = math.min(first + CHUNK - 1, #scored)
  live = live + redis.call('ZADD', KEYS[1], 'CH', unpack(scored, first, last))
end
for tag in string.gmatch(ARGV[5], '[^\\n]+') do
  call_chunked('SREM', ARGV[2] .. tag, members)
end
return live
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


# -- RedisLayer: leases (conditional stores), tombstones and fences ----------------------------
#
# See redis/_lease.py. A tombstone is '\193LT' (bytes C1 4C 54) followed by the server time in
# ascii decimal microseconds, ':' and the writing call's random nonce; a fence holds the server
# time alone. Times come from TIME inside the script, so one clock (the node's) decides. The
# scripts that take several KEYS loop over them: on a single server one call carries a batch of
# keys, on a cluster (keys of different slots cannot share a script) the layer sends one call
# per hash slot with that slot's keys, in a pipeline, and the same script serves both.

# Lua shared by the lease scripts (not a script on its own).
_LEASE_LUA = """
local TOMBSTONE = '\\193LT'

-- Servers before Redis 5 refuse writes after TIME unless effects are replicated (later ones
-- always replicate effects, and keep this call as a no-op).
local function allow_time_then_write()
  if redis.replicate_commands then
    redis.replicate_commands()
  end
end

-- The server clock in integer microseconds (exact in a Lua number until the year 2255).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function decimal(n)
  return string.format('%.0f', n)
end

-- Whether the value of `key` is a tombstone (false for an absent key or another type).
local function is_tombstone(key)
  return redis.pcall('GETRANGE', key, 0, 2) == TOMBSTONE
end
"""

LEASE_TOMBSTONE = (
    _LEASE_LUA
    + """
-- Delete keys by writing a tombstone under each, so that a fetch that read the key before the
-- delete sees different bytes when it tries to store. The tombstone of each call is new bytes:
-- the server time and a random nonce the caller draws for the call, so no earlier read saw
-- them, whatever the key held (a tombstone of the same microsecond, one written while the
-- clock stood later, or the tombstone of another instance's delete too). So it is written
-- blind: one SET per key, no read of the old value (which cost as much again).
-- KEYS[1..]  data keys
-- ARGV[1]    the tombstones' lifetime in milliseconds (the layer's lease_ttl)
-- ARGV[2]    the call's nonce (16 random hex digits)
-- ARGV[3]    (optional, a single server only) more data keys, joined by newlines: one
--            argument instead of one per key costs the client less (a cache key never holds
--            a control character)
-- Returns the number of keys.
allow_time_then_write()
local tombstone = TOMBSTONE .. decimal(now_us()) .. ':' .. ARGV[2]
local px = ARGV[1]
local count = #KEYS
for i = 1, count do
  redis.call('SET', KEYS[i], tombstone, 'PX', px)
end
if ARGV[3] then
  for key in string.gmatch(ARGV[3], '[^\\n]+') do
    redis.call('SET', key, tombstone, 'PX', px)
    count = count + 1
  end
end
return count
"""
)

LEASE_FENCE = (
    _LEASE_LUA
    + """
-- Write fences: each holds the server time now, so every lease read before it is refused.
-- KEYS[1..]  fence keys
-- ARGV[1]    their lifetime in milliseconds (the layer's lease_ttl)
-- Returns the time written (ascii microseconds).
allow_time_then_write()
local now = decimal(now_us())
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], now, 'PX', ARGV[1])
end
return now
"""
)

LEASE_SET = (
    _LEASE_LUA
    + """
-- Store a fetched value only if nothing changed the key since the read that leased it.
-- KEYS[1]    the data key
-- KEYS[2..]  fences to check: the all-fence and the tag fences (none on a cluster, where they
--            live in other slots and the layer reads them after this script)
-- ARGV[1]    the lease's read time (server microseconds, a lower bound)
-- ARGV[2]    the lease lifetime in microseconds
-- ARGV[3]    SHA-1 hex of the bytes the read saw, '' if the key was absent
-- ARGV[4]    the entry to store
-- ARGV[5]    its lifetime in milliseconds, '' for none
-- Returns 1 when stored; 0 when the lease is too old, -1 when the key holds something other
-- than what the read saw (absent is always fine), -2 when a fence is as new as the read.
allow_time_then_write()
local read_at = tonumber(ARGV[1])
if now_us() - read_at >= tonumber(ARGV[2]) then
  return 0
end
-- GETRANGE 0 -1 reads the whole value like GET (an absent key reads as ''), and keeps the
-- server's GET statistics a count of the clients' own reads.
local current = redis.pcall('GETRANGE', KEYS[1], 0, -1)
if current and current ~= '' then
  -- Another type under the key (an error reply, a table) never equals what was seen.
  if type(current) ~= 'string' or ARGV[3] == '' or redis.sha1hex(current) ~= ARGV[3] then
    return -1
  end
end
if #KEYS > 1 then
  local fences = redis.call('MGET', unpack(KEYS, 2))
  for i = 1, #fences do
    local fence = tonumber(fences[i] or '')
    if fence and fence >= read_at then
      return -2
    end
  end
end
if ARGV[5] == '' then
  redis.call('SET', KEYS[1], ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
end
return 1
"""
)

LEASE_UNDO = """
-- Take back a store that a fence read afterwards refused (cluster only): remove the key only if
-- it still holds exactly what was stored (a newer value or a tombstone stays).
-- KEYS[1]  the data key
-- ARGV[1]  SHA-1 hex of the stored entry
-- Returns 1 when the key was removed, 0 otherwise.
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'string' and redis.sha1hex(current) == ARGV[1] then
  return redis.call('UNLINK', KEYS[1])
end
return 0
"""

LEASE_PEEK = (
    _LEASE_LUA
    + """
-- PTTL that reads a tombstone as absent (has() and ttl()).
-- KEYS[1]  the data key
-- Returns the remaining lifetime in milliseconds, -1 for none, -2 when absent or a tombstone.
if is_tombstone(KEYS[1]) then
  return -2
end
return redis.call('PTTL', KEYS[1])
"""
)

LEASE_LIVE = (
    _LEASE_LUA
    + """
-- Which keys hold something other than a tombstone (keys() and size() drop the others).
-- KEYS[1..]  keys found by SCAN
-- Returns one flag per key: 1 live, 0 tombstone or gone since the SCAN.
local flags = {}
for i = 1, #KEYS do
  if is_tombstone(KEYS[i]) then
    flags[i] = 0
  else
    flags[i] = redis.call('EXISTS', KEYS[i])
  end
end
return flags
"""
)

LEASE_UNLINK_LIVE = (
    _LEASE_LUA
    + """
-- Remove keys and count those that held something other than a tombstone (delete_matching()
-- reports how many values it removed, not how many deletes it swept up).
-- KEYS[1..]  keys found by SCAN
-- Returns the number of live keys removed.
local removed = 0
for i = 1, #KEYS do
  local tombstone = is_tombstone(KEYS[i])
  if redis.call('UNLINK', KEYS[i]) == 1 and not tombstone then
    removed = removed + 1
  end
end
return removed
"""
)
