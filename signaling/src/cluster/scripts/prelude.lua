-- Shared by every script (prepended to each): reading a room hash and telling replicas.

-- The members of a room hash, decoded (with their JSON and field), and its other fields.
local function read_room(key)
  local members, meta = {}, {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local k, v = flat[i], flat[i + 1]
    if string.sub(k, 1, 2) == 'm:' then
      local m = cjson.decode(v)
      m._field, m._json = k, v
      members[#members + 1] = m
    else
      meta[k] = v
    end
  end
  return members, meta
end

-- Publishes `event` once to the inbox of every replica holding one of `members`.
local function tell_replicas(prefix, members, event)
  local told = {}
  for _, m in ipairs(members) do
    if not told[m.replica] then
      told[m.replica] = true
      redis.call('PUBLISH', prefix .. m.replica, event)
    end
  end
end

