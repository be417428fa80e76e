//! The Lua scripts that keep the shared session: each check-and-set is one atomic step, and
//! every key a script touches shares the scope's hash tag, so each runs on one cluster node.
//! Times are Redis's own clock (`TIME`), the one clock every replica's pause and expiry are
//! measured on. Anything but a hash under the session key (a foreign format) reads as
//! generation 0 with a set that cannot be read, and is replaced by the next write.

use redis::Script;

/// Helpers every script that needs them is prefixed with.
const PRELUDE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function kind(key)
  return redis.call('TYPE', key)['ok']
end
local function generation(key)
  if kind(key) ~= 'hash' then return 0 end
  return tonumber(redis.call('HGET', key, 'gen')) or 0
end
-- A non-hash under the key is dropped before a write.
local function writable(key)
  local k = kind(key)
  if k ~= 'hash' and k ~= 'none' then redis.call('DEL', key) end
end
local function ms(n) return string.format('%.0f', n) end
-- The failed auth calls of the last minute, as Redis times, from a comma-separated list.
local function failed_calls(list, now)
  local kept = {}
  if list then
    for at in string.gmatch(list, '[^,]+') do
      local t = tonumber(at)
      if t and now - t < 60000 then table.insert(kept, t) end
    end
  end
  return kept
end
";

/// The shared session, or nothing: generation, sealed set, refreshing mark, pause left (ms),
/// expiry left (ms, -1 if unknown), the sealing key's id, failures in a row, and the ages (ms)
/// of the failed calls of the last minute.
const READ: &str = r"
local k = kind(KEYS[1])
if k == 'none' then return false end
if k ~= 'hash' then return {'0', 'foreign', '', '0', '-1', '', '0', ''} end
local f = redis.call('HMGET', KEYS[1], 'gen', 'set', 'refreshing', 'paused_until',
  'expires_at', 'key', 'failures', 'failed')
local now = now_ms()
local paused = 0
if tonumber(f[4]) then paused = math.max(0, tonumber(f[4]) - now) end
local expires = -1
if tonumber(f[5]) then expires = math.max(0, tonumber(f[5]) - now) end
local ages = {}
for _, t in ipairs(failed_calls(f[8], now)) do table.insert(ages, ms(now - t)) end
return {f[1] or '0', f[2] or '', f[3] or '', ms(paused), ms(expires), f[6] or '',
  f[7] or '0', table.concat(ages, ',')}
";

/// The shared generation alone: what a waiting replica polls.
const GENERATION: &str = r"
return generation(KEYS[1])
";

/// Takes the lease for the fencing value the replica chose, if it is free or already this
/// one's (an earlier try whose answer was lost); returns 1 if held.
const TRY_LEASE: &str = r"
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

const MARK_REFRESHING: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if generation(KEYS[1]) ~= tonumber(ARGV[2]) then return 0 end
writable(KEYS[1])
redis.call('HSET', KEYS[1], 'refreshing', '1')
return 1
";

/// Publishes a set (ARGV: fence, expected generation, sealed set, floor, lifetime in ms, the
/// sealing key's id, the ids of every key the replica opens with) unless the lease is lost, the
/// generation moved on, or the set there is sealed under a key the replica does not hold. The
/// record of failed calls survives; the failures in a row and the pause end.
const PUBLISH: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local current = generation(KEYS[1])
if current ~= tonumber(ARGV[2]) then return false end
local failed = false
if kind(KEYS[1]) == 'hash' then
  local f = redis.call('HMGET', KEYS[1], 'set', 'key', 'failed')
  if f[1] and f[1] ~= '' and f[2] and f[2] ~= '' then
    local known = false
    for id in string.gmatch(ARGV[7], '[^,]+') do
      if id == f[2] then known = true end
    end
    if not known then return false end
  end
  failed = f[3]
end
redis.call('DEL', KEYS[1])
local next = math.max(current, tonumber(ARGV[4])) + 1
redis.call('HSET', KEYS[1], 'gen', next, 'set', ARGV[3], 'key', ARGV[6],
  'expires_at', ms(now_ms() + tonumber(ARGV[5])))
if failed then redis.call('HSET', KEYS[1], 'failed', failed) end
return next
";

/// Records the lease holder's failed renewal (ARGV: fence, pause in ms, the failed calls' ages
/// in ms, comma-separated).
const RECORD_FAILURE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
writable(KEYS[1])
local now = now_ms()
local kept = failed_calls(redis.call('HGET', KEYS[1], 'failed'), now)
for age in string.gmatch(ARGV[3], '[^,]+') do
  if tonumber(age) then table.insert(kept, now - tonumber(age)) end
end
while #kept > 64 do table.remove(kept, 1) end
local list = {}
for _, t in ipairs(kept) do table.insert(list, ms(t)) end
redis.call('HSET', KEYS[1], 'paused_until', ms(now + tonumber(ARGV[2])),
  'failed', table.concat(list, ','))
redis.call('HINCRBY', KEYS[1], 'failures', 1)
return 1
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Removes the set (a logout); the generation moves on and the failed calls stay counted.
const CLEAR: &str = r"
local current = generation(KEYS[1])
local failed = false
if kind(KEYS[1]) == 'hash' then failed = redis.call('HGET', KEYS[1], 'failed') end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', current + 1)
if failed then redis.call('HSET', KEYS[1], 'failed', failed) end
return current + 1
";

/// The scripts, hashed once.
pub(super) struct Scripts {
    pub(super) read: Script,
    pub(super) generation: Script,
    pub(super) try_lease: Script,
    pub(super) mark_refreshing: Script,
    pub(super) publish: Script,
    pub(super) record_failure: Script,
    pub(super) release: Script,
    pub(super) clear: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_prelude = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            read: with_prelude(READ),
            generation: with_prelude(GENERATION),
            try_lease: Script::new(TRY_LEASE),
            mark_refreshing: with_prelude(MARK_REFRESHING),
            publish: with_prelude(PUBLISH),
            record_failure: with_prelude(RECORD_FAILURE),
            release: Script::new(RELEASE),
            clear: with_prelude(CLEAR),
        }
    }
}
