//! The Lua scripts that keep the shared session: each check-and-set is one atomic step, and
//! every key a script touches shares the scope's hash tag, so each runs on one cluster node.

use redis::Script;

/// The shared session, or nothing. A non-hash under the key (a foreign format) reads as
/// generation 0 with a set that cannot be read.
pub(super) const READ: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return false end
if kind ~= 'hash' then return {'0', 'foreign', '', '0'} end
local fields = redis.call('HMGET', KEYS[1], 'gen', 'set', 'refreshing', 'paused_until')
local paused = 0
if fields[4] then paused = math.max(0, tonumber(fields[4]) - now_ms()) end
return {fields[1] or '0', fields[2] or '', fields[3] or '', string.format('%.0f', paused)}
";

/// Takes the lease if it is free; returns its fencing value.
pub(super) const TRY_LEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fence = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence, 'PX', ARGV[2])
return fence
";

/// Redis's own clock in milliseconds, the one clock every replica's pause is measured on.
pub(super) const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Pauses the fleet's renewals (the lease holder only).
pub(super) const PAUSE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'paused_until', string.format('%.0f', now_ms() + tonumber(ARGV[2])))
return 1
";

/// The shared generation, reading anything but a hash as 0.
pub(super) const GENERATION: &str = r"
local function generation(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'hash' then return 0 end
  return tonumber(redis.call('HGET', key, 'gen')) or 0
end
";

pub(super) const MARK_REFRESHING: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if generation(KEYS[1]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'refreshing', '1')
return 1
";

pub(super) const PUBLISH: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local current = generation(KEYS[1])
if current ~= tonumber(ARGV[2]) then return false end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', current + 1, 'set', ARGV[3])
return current + 1
";

pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

pub(super) const CLEAR: &str = r"
local current = generation(KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', current + 1)
return current + 1
";
/// The scripts, hashed once.
pub(super) struct Scripts {
    pub(super) read: Script,
    pub(super) try_lease: Script,
    pub(super) mark_refreshing: Script,
    pub(super) publish: Script,
    pub(super) pause: Script,
    pub(super) release: Script,
    pub(super) clear: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_generation = |body: &str| Script::new(&format!("{GENERATION}{body}"));
        Self {
            read: Script::new(&format!("{NOW_MS}{READ}")),
            pause: Script::new(&format!("{NOW_MS}{PAUSE}")),
            try_lease: Script::new(TRY_LEASE),
            mark_refreshing: with_generation(MARK_REFRESHING),
            publish: with_generation(PUBLISH),
            release: Script::new(RELEASE),
            clear: with_generation(CLEAR),
        }
    }
}
