"""The Lua script behind :meth:`RedisStore.apply <sa_stockpyle.stores.RedisStore.apply>`:
every conditional write of a call, atomic on the server, built from the codec's markers
and :class:`~sa_stockpyle.stores.OpKind`'s letters so that the two never disagree."""

from __future__ import annotations

import re
import string

from sa_stockpyle.codec import LEASE_MAGIC, TOMBSTONE_MAGIC, VERSIONED_HEAD
from sa_stockpyle.stores.ops import OpKind

__all__ = ["APPLY"]


def _lua_pattern(literal: bytes) -> str:
    """A Lua pattern matching ``literal`` (ASCII) exactly: its magic characters escaped."""
    return re.sub(r"([\^$()%.\[\]*+?-])", r"%\1", literal.decode("ascii"))


#: The conditional writes of BaseKeyValueStore.apply, atomic per call.  ARGV: the
#: tombstone TTL in ms, the number of keys that only get a tombstone (they come first, and
#: have no reply) and the number of keys that are only read once everything is written
#: (they come last; a GET reads a missing key as false, which Redis returns as nil),
#: then per other key: kind, value, TTL in ms (0: none), argument (the lease a fill
#: expects, the version a newer write carries, the time an add compares tombstones with).
#: Tombstones and leases are stamped with the server's clock (TIME).  What records and
#: markers begin with comes from the codec, which writes them; the kinds' letters, from
#: :class:`OpKind`.
APPLY = string.Template("""
-- the first bytes of a tombstone and of a lease, and patterns matching their fields and
-- the version an entry begins with (codec.py writes them)
local TOMB, LEASE, HEAD = '$tombstone', '$lease', $head
local TOMB_TAKEN, LEASE_TOKEN = '^$tombstone_pattern:([%d.]+):', '^$lease_pattern:([^:]+):'
local VERSION = '^$versioned_pattern(%d+),'
local tomb_ms, tombs, reads = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local tomb = TOMB .. ':' .. now .. ':0'
local replies = {}
-- What a key holds that this store wrote, or false: another type of value (a list), or a
-- marker without a TTL (each of ours has one: a forged one would never expire) is nothing.
local function held(key)
  local value = redis.pcall('GET', key)
  if type(value) ~= 'string' then return false end
  local head = string.sub(value, 1, HEAD)
  if (head == LEASE or head == TOMB) and redis.call('PTTL', key) == -1 then return false end
  return value
end
-- the first ``tombs`` keys only get a tombstone: no value, TTL or argument is passed, and
-- no reply (PSETEX: fewer arguments to parse than SET PX, for the commonest write)
for i = 1, tombs do
  redis.call('PSETEX', KEYS[i], tomb_ms, tomb)
end
for i = tombs + 1, #KEYS - reads do
  local key = KEYS[i]
  local at = 3 + (i - tombs - 1) * 4
  local kind, raw, px, arg = ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4]
  local current = kind ~= '$kind_set' and held(key)
  local head = current and string.sub(current, 1, HEAD)
  local done = false
  if kind == '$kind_set' then
    done = true
  elseif kind == '$kind_tombstone' then
    raw, px, done = tomb, tomb_ms, true
  elseif kind == '$kind_add' then
    if not current then
      done = true
    elseif head == TOMB and arg ~= '' then
      -- a tombstone written before the reader's lease: the database read saw its commit
      local written = tonumber(string.match(current, TOMB_TAKEN))
      done = written ~= nil and written < tonumber(arg)
    end
  elseif kind == '$kind_fill' or kind == '$kind_release' then
    -- by token: a lease taken over a tombstone was stored with a longer expiry
    local token = string.match(arg, LEASE_TOKEN)
    done = head == LEASE and string.match(current, LEASE_TOKEN) == token
    if done and kind == '$kind_release' then raw, px = tomb, tomb_ms end
  elseif kind == '$kind_newer' then
    if head == LEASE or head == TOMB then
      -- not written over a marker (a removal there may be newer), but stamped now: a
      -- lease holder may have read an older state, and so may a reader that adds
      redis.call('SET', key, tomb, 'PX', tomb_ms)
    elseif not current then
      done = true
    elseif head ~= TOMB then
      local held = string.match(current, VERSION)
      done = held == nil or tonumber(held) < tonumber(arg)
    end
  elseif not current or head == TOMB then
    if current then
      -- never shorten a tombstone: it outlives readers that missed before it
      local left = redis.call('PTTL', key)
      if left > px then px = left end
    end
    local token = string.match(raw, LEASE_TOKEN)
    raw, done = LEASE .. ':' .. token .. ':' .. now .. ':0', true
  end
  if done then
    if px > 0 then redis.call('SET', key, raw, 'PX', px) else redis.call('SET', key, raw) end
    replies[i - tombs] = kind == '$kind_lease' and {now} or 1
  elseif kind == '$kind_lease' then
    replies[i - tombs] = {current, now}
  else
    replies[i - tombs] = 0
  end
end
for i = #KEYS - reads + 1, #KEYS do
  local value = redis.pcall('GET', KEYS[i])
  replies[i - tombs] = type(value) == 'string' and value or false
end
return replies
""").substitute(
    tombstone=TOMBSTONE_MAGIC.decode(),
    lease=LEASE_MAGIC.decode(),
    head=len(TOMBSTONE_MAGIC),
    tombstone_pattern=_lua_pattern(TOMBSTONE_MAGIC),
    lease_pattern=_lua_pattern(LEASE_MAGIC),
    versioned_pattern=_lua_pattern(VERSIONED_HEAD),
    **{f"kind_{kind.name.lower()}": kind.value for kind in OpKind},
)
