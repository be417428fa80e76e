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
-- When IQM's rate-limit window opens (Redis time, ms); 0 if it was never closed.
local function window_end(key)
  return tonumber(redis.call('GET', key)) or 0
end
-- A session made by this write gets an epoch: the writer's name and Redis's time, unique.
local function epoch_of(key, writer)
  local e = false
  if kind(key) == 'hash' then e = redis.call('HGET', key, 'epoch') end
  return e or (writer .. ':' .. ms(now_ms()))
end
";

/// The shared session, or nothing: generation, sealed set, refreshing mark, pause left (ms),
/// expiry left (ms, -1 if unknown), the sealing key's id, failures in a row, the epoch, how
/// many replicas read it in the last hour (KEYS[2], by name: ARGV[1]; this one included), how
/// long ago the set was obtained (ms, -1 if unknown), how long IQM's window stays closed
/// (KEYS[3], ms), and Redis's clock (ms). Registering the reader is best effort: a Redis that
/// refuses writes still answers the read.
const READ: &str = r"
local now = now_ms()
local rk = kind(KEYS[2])
if rk ~= 'zset' and rk ~= 'none' then redis.pcall('DEL', KEYS[2]) end
redis.pcall('ZADD', KEYS[2], now, ARGV[1])
redis.pcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 3600000)
redis.pcall('PEXPIRE', KEYS[2], 3600000)
local counted = redis.pcall('ZCARD', KEYS[2])
local replicas = '0'
if type(counted) == 'number' then replicas = tostring(counted) end
local closed = ms(math.max(0, window_end(KEYS[3]) - now))
local k = kind(KEYS[1])
if k == 'none' then return false end
if k ~= 'hash' then
  return {'0', 'foreign', '', '0', '-1', '', '0', '', replicas, '-1', closed, ms(now)}
end
local f = redis.call('HMGET', KEYS[1], 'gen', 'set', 'refreshing', 'paused_until',
  'expires_at', 'key', 'failures', 'epoch', 'obtained_at')
local paused = 0
if tonumber(f[4]) then paused = math.max(0, tonumber(f[4]) - now) end
local expires = -1
if tonumber(f[5]) then expires = math.max(0, tonumber(f[5]) - now) end
local published = -1
if tonumber(f[9]) then published = math.max(0, now - tonumber(f[9])) end
return {f[1] or '0', f[2] or '', f[3] or '', ms(paused), ms(expires), f[6] or '',
  f[7] or '0', f[8] or '', replicas, ms(published), closed, ms(now)}
";

/// The shared generation alone: what a waiting replica polls.
const GENERATION: &str = r"
return generation(KEYS[1])
";

/// Takes the lease for the fencing value the replica chose, if it is free or already this
/// one's (an earlier try whose answer was lost); returns 1 if held.
const TRY_LEASE: &str = r"
local k = redis.call('TYPE', KEYS[1])['ok']
if k ~= 'string' and k ~= 'none' then redis.call('DEL', KEYS[1]) end
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
/// sealing key's id, the ids of every key the replica opens with, the writer's name, the
/// publication's id, the expiry on Redis's clock as the writer reckons it or '', how long ago
/// the set was obtained (ms), and when on Redis's clock as the writer reckons it or '') unless the
/// lease is lost, the generation moved on, or the set there is sealed under a key the replica
/// does not hold. A publication already there (a client's retry) answers its generation. The
/// expiry is the earlier of the writer's and now plus the lifetime, so a command that waited in
/// a stalled Redis does not lengthen it. The failures in a row and the pause end.
const PUBLISH: &str = r"
if kind(KEYS[1]) == 'hash' and redis.call('HGET', KEYS[1], 'publication') == ARGV[9] then
  return generation(KEYS[1])
end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
local current = generation(KEYS[1])
if current ~= tonumber(ARGV[2]) then return false end
local epoch = epoch_of(KEYS[1], ARGV[8])
if kind(KEYS[1]) == 'hash' then
  local f = redis.call('HMGET', KEYS[1], 'set', 'key')
  if f[1] and f[1] ~= '' and f[2] and f[2] ~= '' then
    local known = false
    for id in string.gmatch(ARGV[7], '[^,]+') do
      if id == f[2] then known = true end
    end
    if not known then return false end
  end
end
redis.call('DEL', KEYS[1])
local next = math.max(current, tonumber(ARGV[4])) + 1
local now = now_ms()
local expires_at = now + tonumber(ARGV[5])
if tonumber(ARGV[10]) then expires_at = math.min(expires_at, tonumber(ARGV[10])) end
local obtained_at = now - tonumber(ARGV[11])
if tonumber(ARGV[12]) then obtained_at = math.min(obtained_at, tonumber(ARGV[12])) end
redis.call('HSET', KEYS[1], 'gen', next, 'set', ARGV[3], 'key', ARGV[6],
  'expires_at', ms(expires_at), 'obtained_at', ms(obtained_at), 'epoch', epoch,
  'publication', ARGV[9])
return next
";

/// Records the lease holder's failed renewal (ARGV: fence, pause in ms, the writer's name).
const RECORD_FAILURE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
writable(KEYS[1])
redis.call('HSET', KEYS[1], 'epoch', epoch_of(KEYS[1], ARGV[3]),
  'paused_until', ms(now_ms() + tonumber(ARGV[2])))
redis.call('HINCRBY', KEYS[1], 'failures', 1)
return 1
";

/// Takes one auth call from the fleet's budget for failed calls (KEYS: the calls of the last
/// minute, a sorted set by Redis time; when the burst is full again. ARGV: the call's name,
/// calls a minute, calls in a row). Returns 0, or the milliseconds until a call may be sent. A
/// call already taken (a client's retry) is taken once.
const RESERVE_CALL: &str = r"
local now = now_ms()
if kind(KEYS[1]) ~= 'zset' and kind(KEYS[1]) ~= 'none' then redis.call('DEL', KEYS[1]) end
if kind(KEYS[2]) ~= 'string' and kind(KEYS[2]) ~= 'none' then redis.call('DEL', KEYS[2]) end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return '0' end
local per_minute = math.max(1, tonumber(ARGV[2]))
local burst = math.max(1, tonumber(ARGV[3]))
local interval = 60000 / per_minute
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local wait = 0
if redis.call('ZCARD', KEYS[1]) >= per_minute then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  wait = math.max(wait, tonumber(oldest[2]) + 60000 - now)
end
local full_at = math.max(tonumber(redis.call('GET', KEYS[2])) or now, now)
wait = math.max(wait, full_at - now - interval * (burst - 1))
if wait > 0 then return ms(math.ceil(wait)) end
redis.call('SET', KEYS[2], ms(full_at + interval), 'PX', 120000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], 120000)
return '0'
";

/// Closes IQM's rate-limit window (KEYS[1]) for ARGV[1] ms from now, unless it is closed
/// longer; returns how long it stays closed (ms).
const CLOSE_WINDOW: &str = r"
local now = now_ms()
local until_ = math.max(now + tonumber(ARGV[1]), window_end(KEYS[1]))
redis.call('SET', KEYS[1], ms(until_), 'PX', ms(until_ - now + 60000))
return ms(until_ - now)
";

/// The fleet's line of turns (KEYS[1], a sorted set of names by the Redis time of their turn,
/// in microseconds; an auth call's name starts with `a|`) and IQM's window (KEYS[2]). `book`
/// gives `member` the first turn at or after `from` at least one interval from the others (for
/// an auth call, from the turns already come and other auth calls': the API requests' turns not
/// yet come move back as little as it takes); it is refused, and holds no turn, if that is
/// later than `max_wait`. Returns the wait (µs), or `r` and the wait when refused.
const LINE: &str = r"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function first_free(taken, from, interval)
  local slot = from
  for _, at in ipairs(taken) do
    if at + interval <= slot then
    elseif at >= slot + interval then break
    else slot = at + interval end
  end
  return slot
end
local function insert_sorted(taken, at)
  local place = #taken + 1
  for i, t in ipairs(taken) do
    if t > at then place = i break end
  end
  table.insert(taken, place, at)
end
local function book(key, member, from, now, interval, max_wait, auth)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ms(now - interval))
  local list = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local taken, pending = {}, {}
  for i = 1, #list, 2 do
    local m, at = list[i], tonumber(list[i + 1])
    if m ~= member then
      if auth and at > now and string.sub(m, 1, 2) ~= 'a|' then
        table.insert(pending, {m, at})
      else
        table.insert(taken, at)
      end
    end
  end
  local slot = first_free(taken, math.max(from, now), interval)
  if slot - now > max_wait then
    redis.call('ZREM', key, member)
    return 'r' .. ms(slot - now)
  end
  redis.call('ZADD', key, ms(slot), member)
  insert_sorted(taken, slot)
  for _, p in ipairs(pending) do
    local moved = first_free(taken, p[2], interval)
    if moved ~= p[2] then redis.call('ZADD', key, ms(moved), p[1]) end
    insert_sorted(taken, moved)
  end
  redis.call('PEXPIRE', key, ms((math.max(max_wait, interval) + slot - now) / 1000 + 60000))
  return ms(slot - now)
end
";

/// Takes a turn (ARGV: the member, interval µs, max wait µs, `1` for an auth call).
const TAKE_TURN: &str = r"
local now = now_us()
return book(KEYS[1], ARGV[1], window_end(KEYS[2]) * 1000, now, tonumber(ARGV[2]),
  tonumber(ARGV[3]), ARGV[4] == '1')
";

/// Confirms a turn when it comes (ARGV as `TAKE_TURN`, the max wait being the time left): `0`
/// to go; the wait if it moved back; booked anew past the window if IQM's window closed over it
/// since, or if it was lost.
const CONFIRM_TURN: &str = r"
local now = now_us()
local interval, max_wait = tonumber(ARGV[2]), tonumber(ARGV[3])
local at = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local closed = window_end(KEYS[2]) * 1000
if at == nil or (closed > now and at < closed) then
  return book(KEYS[1], ARGV[1], closed, now, interval, max_wait, ARGV[4] == '1')
end
if at <= now then return '0' end
if at - now > max_wait then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 'r' .. ms(at - now)
end
return ms(at - now)
";

/// Gives up a turn (ARGV: the member).
const CANCEL_TURN: &str = r"
return redis.call('ZREM', KEYS[1], ARGV[1])
";

/// Gives back a call that yielded a token (ARGV: its name, calls a minute).
const REFUND_CALL: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local full_at = tonumber(redis.call('GET', KEYS[2]))
  if full_at then
    redis.call('SET', KEYS[2], ms(full_at - 60000 / math.max(1, tonumber(ARGV[2]))), 'PX', 120000)
  end
end
return 1
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Removes the set (a logout; ARGV: the writer's name); the generation moves on within the
/// epoch.
const CLEAR: &str = r"
local current = generation(KEYS[1])
local epoch = epoch_of(KEYS[1], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', current + 1, 'epoch', epoch)
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
    pub(super) reserve_call: Script,
    pub(super) refund_call: Script,
    pub(super) release: Script,
    pub(super) clear: Script,
    pub(super) close_window: Script,
    pub(super) take_turn: Script,
    pub(super) confirm_turn: Script,
    pub(super) cancel_turn: Script,
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
            reserve_call: with_prelude(RESERVE_CALL),
            refund_call: with_prelude(REFUND_CALL),
            release: Script::new(RELEASE),
            clear: with_prelude(CLEAR),
            close_window: with_prelude(CLOSE_WINDOW),
            take_turn: Script::new(&format!("{PRELUDE}{LINE}{TAKE_TURN}")),
            confirm_turn: Script::new(&format!("{PRELUDE}{LINE}{CONFIRM_TURN}")),
            cancel_turn: Script::new(CANCEL_TURN),
        }
    }
}
