-- Adds a member to a room, atomically with the checks a single process makes under its lock.
-- The rules are those of `admit` in signaling/src/room.rs (stale orb, room full, replacement of
-- the user's earlier socket, the orb request), in the same order: change them there and here
-- together; the conformance tests run both.
-- KEYS[1] the room hash, KEYS[2] the epoch key, KEYS[3] the joining replica's room set.
-- ARGV: epoch, inbox channel prefix, room id, user id, member JSON, max participants,
--       mode ("join" or "restore").
-- Room hash fields: "m:<userId>" member JSON; "seq" membership sequence; "req" an orb was
-- requested; "ai" the orb's last status; "coach", "client", "session" for the orb request.
-- A refusal is an error whose first word is its code (EPOCH, TAKEN, STALE, FULL). It needs words
-- after it: Redis 7.0 turns an error of one word into "ERR <word>".
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('EPOCH Redis lost its data since this replica registered')
end
local room, me_json, max, mode = KEYS[1], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local me = cjson.decode(me_json)
local field = 'm:' .. ARGV[4]
local members, meta = read_room(room)
local before, before_json, old = {}, {}, nil
for _, m in ipairs(members) do
  if m._field == field then
    old = m
  else
    before[#before + 1] = m
    before_json[#before_json + 1] = m._json
  end
end
local seq = tonumber(meta.seq or '0')
if old then
  if old.replica == me.replica and old.conn == me.conn then
    return cjson.encode({ seq = seq, unchanged = true })
  end
  -- Restoring after an outage must not take the place of a newer connection of the user.
  if mode == 'restore' then
    return redis.error_reply('TAKEN the user joined again on another connection')
  end
end
local is_ai = me.participantType == 'ai'
-- The orb with the newer token is the live one, whoever it is: the joiner's own earlier entry
-- (an attempt of the same AiOrb has the same user id) counts too.
if is_ai and me.issuedAt then
  for _, m in ipairs(members) do
    if m.participantType == 'ai' and m.issuedAt and m.issuedAt > me.issuedAt then
      return redis.error_reply('STALE a newer orb serves the room')
    end
  end
end
if not old and #before >= max then
  return redis.error_reply('FULL the room is full')
end
local has_ai = false
for _, m in ipairs(before) do
  if m.participantType == 'ai' then has_ai = true end
end
local request = false
if not is_ai then
  if me.role == 'coach' then meta.coach = me.userId; redis.call('HSET', room, 'coach', me.userId) end
  if me.role == 'client' then meta.client = me.userId; redis.call('HSET', room, 'client', me.userId) end
  if not meta.session and me.sessionId then
    meta.session = me.sessionId
    redis.call('HSET', room, 'session', me.sessionId)
  end
  -- The first human asks for an orb, and a human arriving after the last attempt came to
  -- nothing asks again. A restore never asks (the orb exists).
  local retry = meta.ai == 'unavailable' or meta.ai == 'ended'
  if mode == 'join' and not has_ai and (meta.req ~= '1' or retry) then
    request = true
    redis.call('HSET', room, 'req', '1')
    redis.call('HDEL', room, 'ai')
    meta.ai = nil
  elseif mode == 'restore' then
    redis.call('HSET', room, 'req', '1')
  end
end
seq = redis.call('HINCRBY', room, 'seq', 1)
-- The join's number orders the members as a single process lists them (in joining order).
me_json = string.sub(me_json, 1, -2) .. ',"joinSeq":' .. seq .. '}'
redis.call('HSET', room, field, me_json)
redis.call('SADD', KEYS[3], ARGV[3])
local event = '{"k":"joined","room":' .. cjson.encode(ARGV[3]) .. ',"seq":' .. seq ..
  ',"member":' .. me_json .. (old and (',"replaced":' .. old._json) or '') ..
  (request and ',"request":true' or '') .. '}'
local told = before
if old then told = { old, unpack(before) } end
tell_replicas(ARGV[2], told, event)
return '{"seq":' .. seq .. ',"request":' .. tostring(request) ..
  ',"members":[' .. table.concat(before_json, ',') .. ']' ..
  (old and (',"replaced":' .. old._json) or '') ..
  (meta.ai and (',"aiStatus":' .. cjson.encode(meta.ai)) or '') ..
  (meta.coach and (',"coachId":' .. cjson.encode(meta.coach)) or '') ..
  (meta.client and (',"clientId":' .. cjson.encode(meta.client)) or '') ..
  (meta.session and (',"sessionId":' .. cjson.encode(meta.session)) or '') .. '}'
