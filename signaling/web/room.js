// The room page: seed 001's TriPartyWebRTC in plain JavaScript. Every participant keeps one
// RTCPeerConnection per other participant (a mesh). Offers: humans always offer to the AI (the AI
// never offers); between humans the smaller userId offers. The page state is exposed as
// `window.orbCall` (and as data attributes) so that tests and curious developers can read it.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const roomId = decodeURIComponent(location.pathname.split('/').filter(Boolean)[1] || '');
  const role = params.get('role') === 'client' ? 'client' : 'coach';
  const userName = params.get('name') || role;

  const state = (window.orbCall = {
    roomId,
    role,
    userName,
    userId: null,
    joined: false,
    left: false,
    signaling: 'connecting',
    aiStatus: null,
    aiPeerId: null,
    // peerId -> { role, type, connectionState }
    peers: {},
    errors: [],
    // Times the page rejoined after losing signaling, and the userIds it saw leave.
    reconnects: 0,
    departures: [],
    audioLevel: 0,
    summary: null,
    muted: false,
    // The ICE servers the peer connections use (URLs only, never credentials) and where they came
    // from: 'http' (GET /ice-servers), 'socket' (the ice-servers message), 'none' (host
    // candidates only) while neither answered.
    iceServers: [],
    iceSource: 'none',
    // The media path to the AI: null (no AI peer), 'connecting', 'connected' or 'failed'. When it
    // fails (or does not connect in time) the page says so and the humans' call goes on.
    aiMedia: null,
    aiMediaFailed: false,
    // New connections to the AI made after its media path died mid-call.
    aiReconnects: 0,
    // What the page did and why, oldest first (also in the console).
    log: [],
    stats: inboundAudioBytes,
    // Per peer id, the candidate types of the selected pair ({local, remote, protocol,
    // relayProtocol}; null before one is selected): host, srflx, prflx or relay.
    selectedPairTypes,
    setMuted,
    // For tests and diagnostics: the loudest frequency heard so far (peak hold), in Hz, from the
    // orb and from this page's own microphone; null before any sound.
    orbPeakHz: () => null,
    micPeakHz: () => null,
  });

  const peers = new Map(); // peerId -> { pc, pending: [], role, type }
  // The RTCIceServer list with its credentials (state.iceServers shows the URLs only).
  let iceServers = [];
  let iceRefresh = null;
  // How long the AI's media may take to connect before the page says it could not.
  const AI_MEDIA_PATIENCE_MS = 20000;
  let aiMediaTimer = null;
  let ws = null;
  let localStream = null;
  let queue = Promise.resolve();
  // Closes after which reconnecting cannot help: a bad token (older signaling; a current one
  // refuses it before the upgrade, see refusedToken), a newer tab of the same user, a full room.
  // Anything else (a replica draining or gone, rooms briefly unavailable, a server at its
  // connection cap) is retried.
  const FINAL_CLOSES = new Set([4401, 4409, 4429]);
  let retryDelay = 500;

  const $ = (id) => document.getElementById(id);

  function note(text) {
    $('message').textContent = text;
  }

  function fail(err) {
    const text = String(err && err.message ? err.message : err);
    console.error('[orb-call]', err);
    state.errors.push(text);
    note(text);
  }

  function log(text) {
    console.info('[orb-call]', text);
    state.log.push(`${new Date().toISOString()} ${text}`);
  }

  function send(msg) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  }

  // ---- identity: the dev server mints a token; otherwise ?token= (from the app backend) -------

  function tokenSubject(token) {
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(payload)).sub || null;
    } catch (_) {
      return null;
    }
  }

  async function identity() {
    let token = params.get('token');
    let userId = params.get('userId') || `${role}-${Math.random().toString(36).slice(2, 10)}`;
    if (token) return { token, userId: tokenSubject(token) || userId };
    const q = new URLSearchParams({ room: roomId, role, user: userId });
    const res = await fetch(`/api/dev/token?${q}`).catch(() => null);
    if (res && res.ok) {
      const body = await res.json();
      return { token: body.token, userId: body.userId };
    }
    return { token: null, userId };
  }

  // ---- media -------------------------------------------------------------------------------

  async function setupLocalMedia() {
    try {
      localStream = await navigator.mediaDevices.getUserMedia({
        video: { width: 640, height: 480 },
        audio: true,
      });
      $('local-video').srcObject = localStream;
      try {
        if (localStream.getAudioTracks().length) state.micPeakHz = peakHold(localStream);
      } catch (err) {
        fail(err);
      }
    } catch (err) {
      // Seed 001: a call without a camera still goes on.
      fail(`no camera or microphone: ${err.message || err}`);
    }
  }

  // ---- ICE servers: from signaling, with TURN credentials minted for this user --------------

  const iceUrls = (list) => list.flatMap((server) => [].concat(server.urls || []));

  function useIceServers(list, source) {
    iceServers = Array.isArray(list) ? list : [];
    state.iceServers = iceServers.map((server) => ({ urls: [].concat(server.urls || []) }));
    state.iceSource = source;
    // Peer connections made before keep working; new credentials serve their next gathering.
    for (const { pc } of peers.values()) {
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
      } catch (err) {
        log(`could not update a peer connection's ICE servers: ${err.message || err}`);
      }
    }
  }

  // GET /ice-servers with the page's token, before any peer connection exists; asked again before
  // the credentials expire. Resolves to whether it answered.
  async function fetchIceServers(token) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 5000);
    try {
      const res = await fetch(`/ice-servers?room=${encodeURIComponent(roomId)}`, {
        headers,
        cache: 'no-store',
        signal: abort.signal,
      });
      const body = await res.json().catch(() => ({}));
      if (!res.ok) throw new Error(body.reason || `HTTP ${res.status}`);
      useIceServers(body.iceServers, 'http');
      const urls = iceUrls(state.iceServers);
      log(urls.length ? `ICE servers from /ice-servers: ${urls.join(', ')}` : 'no ICE servers configured: direct connections only');
      clearTimeout(iceRefresh);
      if (body.ttl > 0) iceRefresh = setTimeout(() => state.left || fetchIceServers(token), body.ttl * 800);
      return true;
    } catch (err) {
      const fallback = state.iceSource === 'http' ? 'keeping the ones from before' : "using the signaling socket's list if it sends one, else none";
      log(`could not fetch the ICE servers (${err.message || err}); ${fallback}`);
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  // A browser refuses a malformed list when the connection is made; the call goes on without it.
  function newPeerConnection() {
    try {
      return new RTCPeerConnection({ iceServers });
    } catch (err) {
      log(`the browser refused the ICE servers (${err.message || err}); connecting without them`);
      return new RTCPeerConnection({ iceServers: [] });
    }
  }

  // ---- the AI's media path: say so when it cannot connect ------------------------------------

  function setAiMedia(status, why) {
    state.aiMedia = status;
    if (status === 'failed' && !state.aiMediaFailed) log(`the AI's media could not connect: ${why}`);
    state.aiMediaFailed = status === 'failed';
    const notice = $('ai-media-notice');
    notice.hidden = !state.aiMediaFailed;
    notice.textContent = state.aiMediaFailed ? "The AI's audio could not connect; the call goes on without it." : '';
    $('tile-orb').dataset.media = status || 'none';
  }

  function watchAiMedia(peerId, pc) {
    clearTimeout(aiMediaTimer);
    setAiMedia('connecting');
    aiMediaTimer = setTimeout(() => {
      if (state.aiPeerId === peerId && peers.get(peerId)?.pc === pc && pc.connectionState !== 'connected') {
        setAiMedia('failed', `not connected after ${AI_MEDIA_PATIENCE_MS / 1000} s (${pc.connectionState})`);
        if (aiEverConnected.has(peerId)) recoverAi(peerId);
      }
    }, AI_MEDIA_PATIENCE_MS);
  }

  // A path to the AI that worked and died (the network changed, a NAT forgot its mapping, the
  // relay restarted) is not retried by the browser once the connection failed: offer again on a
  // new connection, with backoff, for as long as the AI is in the room. A path that never worked
  // is not retried: nothing would change.
  const aiEverConnected = new Set();
  let aiRecovery = null;
  let aiRecoveryDelayMs = 1000;

  function recoverAi(peerId) {
    clearTimeout(aiRecovery);
    const delay = aiRecoveryDelayMs;
    aiRecoveryDelayMs = Math.min(aiRecoveryDelayMs * 2, 30000);
    aiRecovery = setTimeout(async () => {
      const entry = peers.get(peerId);
      if (state.left || state.aiPeerId !== peerId || !entry || entry.pc.connectionState === 'connected') return;
      state.aiReconnects += 1;
      log(`the AI's media path died; connecting again (attempt ${state.aiReconnects})`);
      createPeer(peerId, entry.role, 'ai');
      await offerTo(peerId).catch(fail);
    }, delay);
  }

  function onAiConnectionState(peerId, pc) {
    if (pc.connectionState === 'connected') {
      clearTimeout(aiMediaTimer);
      clearTimeout(aiRecovery);
      aiEverConnected.add(peerId);
      aiRecoveryDelayMs = 1000;
      setAiMedia('connected');
    } else if (pc.connectionState === 'failed') {
      clearTimeout(aiMediaTimer);
      setAiMedia('failed', 'the connection failed');
      if (aiEverConnected.has(peerId)) recoverAi(peerId);
    }
  }

  // ---- peers -------------------------------------------------------------------------------

  function setPeerState(peerId, connectionState) {
    const p = state.peers[peerId];
    if (!p) return;
    p.connectionState = connectionState;
    const tile = peerId === state.aiPeerId ? $('tile-orb') : $(`tile-${peerId}`);
    if (tile) tile.dataset.state = connectionState;
  }

  function createPeer(peerId, peerRole, type) {
    closePeer(peerId);
    const pc = newPeerConnection();
    const entry = { pc, pending: [], role: peerRole, type };
    peers.set(peerId, entry);
    state.peers[peerId] = { role: peerRole, type, connectionState: pc.connectionState };
    const isAi = type === 'ai';
    if (isAi) {
      state.aiPeerId = peerId;
      $('tile-orb').dataset.peer = peerId;
      watchAiMedia(peerId, pc);
    } else {
      addHumanTile(peerId, peerRole);
    }
    const tracks = localStream ? localStream.getTracks() : [];
    // The orb hears; it does not watch: it gets the audio only.
    for (const track of tracks.filter((t) => !isAi || t.kind === 'audio')) {
      pc.addTrack(track, localStream);
    }
    if (!tracks.some((t) => t.kind === 'audio')) pc.addTransceiver('audio', { direction: 'recvonly' });
    if (!isAi && !tracks.some((t) => t.kind === 'video')) pc.addTransceiver('video', { direction: 'recvonly' });

    pc.ontrack = (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      if (isAi) attachOrbAudio(stream);
      else {
        const video = document.querySelector(`#tile-${CSS.escape(peerId)} video`);
        if (video && video.srcObject !== stream) video.srcObject = stream;
      }
    };
    pc.onicecandidate = (event) => {
      if (event.candidate) send({ type: 'ice-candidate', candidate: event.candidate.toJSON(), toId: peerId });
    };
    pc.onconnectionstatechange = () => {
      if (peers.get(peerId) !== entry) return;
      setPeerState(peerId, pc.connectionState);
      if (isAi) onAiConnectionState(peerId, pc);
    };
    return entry;
  }

  function closePeer(peerId) {
    const entry = peers.get(peerId);
    if (!entry) return;
    peers.delete(peerId);
    if (peerId === state.aiPeerId) clearTimeout(aiMediaTimer);
    entry.pc.close();
    setPeerState(peerId, 'closed');
    const tile = $(`tile-${peerId}`);
    if (tile) tile.remove();
  }

  function addHumanTile(peerId, peerRole) {
    if ($(`tile-${peerId}`)) return;
    const figure = document.createElement('figure');
    figure.className = 'tile remote';
    figure.id = `tile-${peerId}`;
    figure.dataset.state = 'new';
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement('figcaption');
    caption.textContent = peerRole;
    figure.append(video, caption);
    $('tiles').append(figure);
  }

  async function offerTo(peerId) {
    const entry = peers.get(peerId);
    if (!entry) return;
    const offer = await entry.pc.createOffer();
    await entry.pc.setLocalDescription(offer);
    send({ type: 'offer', offer: entry.pc.localDescription.toJSON(), toId: peerId });
  }

  async function flushCandidates(entry) {
    for (const c of entry.pending.splice(0)) await entry.pc.addIceCandidate(c).catch(fail);
  }

  // ---- the orb: its audio drives the animation ----------------------------------------------

  let audioContext = null;

  // Holds, per frequency bin, the loudest level seen on `stream`; returns a function giving the
  // frequency (Hz) of the loudest bin between 100 Hz and 4 kHz, or null while all is silence.
  function peakHold(stream) {
    audioContext = audioContext || new AudioContext();
    const analyser = audioContext.createAnalyser();
    analyser.fftSize = 4096;
    analyser.smoothingTimeConstant = 0;
    audioContext.createMediaStreamSource(stream).connect(analyser);
    const bins = new Float32Array(analyser.frequencyBinCount);
    const peak = new Float32Array(analyser.frequencyBinCount).fill(-Infinity);
    setInterval(() => {
      analyser.getFloatFrequencyData(bins);
      for (let i = 0; i < bins.length; i++) if (bins[i] > peak[i]) peak[i] = bins[i];
    }, 20);
    const binHz = audioContext.sampleRate / analyser.fftSize;
    return () => {
      let best = -1;
      for (let i = Math.ceil(100 / binHz); i < Math.min(peak.length, 4000 / binHz); i++) {
        if (best < 0 || peak[i] > peak[best]) best = i;
      }
      return best >= 0 && peak[best] > -70 ? best * binHz : null;
    };
  }

  function attachOrbAudio(stream) {
    const audio = $('orb-audio');
    // Chrome feeds a remote stream into Web Audio only while a media element plays it.
    if (audio.srcObject !== stream) audio.srcObject = stream;
    audio.play().catch(() => note('Click anywhere to hear the AI orb.'));
    try {
      audioContext = audioContext || new AudioContext();
      state.orbPeakHz = peakHold(stream);
      const analyser = audioContext.createAnalyser();
      analyser.fftSize = 512;
      audioContext.createMediaStreamSource(stream).connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      const sphere = $('orb-sphere');
      const frame = () => {
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (const s of samples) sum += s * s;
        const level = Math.min(1, Math.sqrt(sum / samples.length) * 4);
        state.audioLevel = level;
        sphere.style.setProperty('--level', level.toFixed(3));
        requestAnimationFrame(frame);
      };
      requestAnimationFrame(frame);
    } catch (err) {
      fail(err);
    }
  }

  document.addEventListener('click', () => {
    if (audioContext && audioContext.state === 'suspended') audioContext.resume();
    $('orb-audio').play().catch(() => {});
  });

  const STATUS_TEXT = {
    queued: 'queued: waiting for a free orb',
    starting: 'starting',
    ready: 'ready',
    listening: 'listening',
    processing: 'thinking',
    speaking: 'speaking',
    unavailable: 'unavailable: the call goes on without AI',
    ended: 'ended',
  };

  function setOrbStatus(status) {
    state.aiStatus = status;
    $('orb-status').dataset.status = status;
    $('orb-status').textContent = `AI orb: ${STATUS_TEXT[status] || status}`;
    $('tile-orb').dataset.status = status;
    $('orb-caption').textContent = STATUS_TEXT[status] || status;
  }

  // ---- signaling -----------------------------------------------------------------------------

  // Human–human: the smaller userId offers; a human always offers to the AI.
  const shouldOffer = (peer) => peer.participantType === 'ai' || state.userId < peer.userId;

  async function handle(msg) {
    switch (msg.type) {
      case 'peer-discovery':
        retryDelay = 500;
        for (const peer of msg.peers) {
          createPeer(peer.userId, peer.userRole, peer.participantType);
          if (shouldOffer(peer)) await offerTo(peer.userId);
        }
        break;
      case 'user-joined':
        createPeer(msg.userId, msg.userRole, msg.participantType);
        if (msg.shouldCreateOffer) await offerTo(msg.userId);
        break;
      case 'offer': {
        const entry = peers.get(msg.fromId) || createPeer(msg.fromId, 'peer', 'human');
        await entry.pc.setRemoteDescription(msg.offer);
        await flushCandidates(entry);
        const answer = await entry.pc.createAnswer();
        await entry.pc.setLocalDescription(answer);
        send({ type: 'answer', answer: entry.pc.localDescription.toJSON(), toId: msg.fromId });
        break;
      }
      case 'answer': {
        const entry = peers.get(msg.fromId);
        if (entry) {
          await entry.pc.setRemoteDescription(msg.answer);
          await flushCandidates(entry);
        }
        break;
      }
      case 'ice-candidate': {
        const entry = peers.get(msg.fromId);
        if (!entry || !msg.candidate) break;
        if (entry.pc.remoteDescription) await entry.pc.addIceCandidate(msg.candidate).catch(fail);
        else entry.pending.push(msg.candidate);
        break;
      }
      case 'user-left':
        state.departures.push(msg.userId);
        closePeer(msg.userId);
        if (msg.userId === state.aiPeerId) delete $('tile-orb').dataset.peer;
        break;
      case 'ai_status':
        setOrbStatus(msg.status);
        break;
      case 'ice-servers':
        // For clients without HTTP; this page uses it only when /ice-servers did not answer. It
        // comes before peer-discovery, so the peer connections made then have it.
        if (state.iceSource !== 'http') {
          useIceServers(msg.iceServers, 'socket');
          log(`ICE servers from the signaling socket: ${iceUrls(state.iceServers).join(', ') || 'none'}`);
        }
        break;
      case 'session_summary':
        state.summary = msg;
        $('summary').hidden = false;
        $('summary-text').textContent = JSON.stringify(msg.summary || msg, null, 2);
        break;
      case 'error':
        // Rooms briefly unavailable: the close that follows makes the page retry.
        if (msg.code === 'unavailable') note(`Signaling: ${msg.message}`);
        else fail(`signaling: ${msg.code}: ${msg.message}`);
        break;
      case 'orb_error':
        // The orb refused this page's input (an offer or candidate); its connection is gone.
        console.warn('orb refused our input', msg.code, msg.error);
        if (msg.fromId === state.aiPeerId) setAiMedia('failed', `the orb refused our input (${msg.error || msg.code})`);
        if (msg.fromId) closePeer(msg.fromId);
        break;
      default:
        break;
    }
  }

  // Why signaling refused a socket that never opened. A browser cannot see the HTTP status of a
  // refused WebSocket handshake, so the page asks /auth/check with the same token: 401/403 mean
  // the token is refused (retrying cannot help; the answer says why), anything else (a busy or
  // unreachable server) means retry. Resolves to the reason, or null.
  async function refusedToken(token) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await fetch(`/auth/check?room=${encodeURIComponent(roomId)}`, { headers, cache: 'no-store' }).catch(
      () => null,
    );
    if (!res || (res.status !== 401 && res.status !== 403)) return null;
    const body = await res.json().catch(() => ({}));
    return body.reason || `HTTP ${res.status}`;
  }

  function reconnect(token, event) {
    // Another replica takes over: rejoin with backoff and jitter. The media of the call is peer
    // to peer and flows meanwhile; the rejoin's peer-discovery renegotiates with everyone.
    const delay = retryDelay * (0.5 + Math.random());
    retryDelay = Math.min(retryDelay * 2, 10000);
    note(`Disconnected from signaling (${event.code}); reconnecting in ${(delay / 1000).toFixed(1)} s.`);
    setTimeout(() => {
      if (state.left) return;
      state.reconnects += 1;
      connect(token);
    }, delay);
  }

  function connect(token) {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // The token travels in the subprotocol list, never in the URL; signaling answers with
    // 'orb-signaling' (the token entry is never echoed).
    const protocols = token ? ['orb-signaling', `bearer.${token}`] : ['orb-signaling'];
    const socket = new WebSocket(`${proto}//${location.host}/ws-simple/${encodeURIComponent(roomId)}`, protocols);
    let opened = false;
    ws = socket;
    socket.onopen = () => {
      opened = true;
      state.signaling = 'open';
      send({ type: 'join', roomId, userId: state.userId, userRole: role, userName, participantType: 'human' });
      state.joined = true;
    };
    socket.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (err) {
        fail(err);
        return;
      }
      // One message at a time: an answer must not overtake the offer it answers.
      queue = queue.then(() => handle(msg)).catch(fail);
    };
    socket.onclose = async (event) => {
      state.signaling = 'closed';
      if (state.left) return;
      if (FINAL_CLOSES.has(event.code)) {
        note(`Disconnected from signaling (${event.code} ${event.reason || ''}).`);
        return;
      }
      if (!opened) {
        // Refused before the upgrade: a bad token is final, a full server is retried.
        const reason = await refusedToken(token);
        if (state.left) return;
        if (reason) {
          state.signaling = 'refused';
          fail(`signaling refused the room token: ${reason}`);
          return;
        }
      }
      reconnect(token, event);
    };
  }

  // Muting disables the microphone track: the peers keep receiving (silent) audio, so the call
  // stays up, and the orb hears nobody — after the idle timeout it leaves, as in the seed.
  function setMuted(muted) {
    state.muted = Boolean(muted);
    if (localStream) localStream.getAudioTracks().forEach((t) => (t.enabled = !state.muted));
    $('mute').textContent = state.muted ? 'Unmute' : 'Mute';
    $('mute').setAttribute('aria-pressed', String(state.muted));
  }

  function leave() {
    if (state.left) return;
    state.left = true;
    send({ type: 'leave' });
    for (const peerId of [...peers.keys()]) closePeer(peerId);
    if (ws) ws.close(1000, 'left');
    clearTimeout(iceRefresh);
    clearTimeout(aiRecovery);
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    document.body.dataset.left = 'true';
    $('leave').disabled = true;
    note('You left the call.');
  }

  // For tests and diagnostics: audio bytes received from each peer (getStats inbound-rtp).
  async function inboundAudioBytes() {
    const out = {};
    for (const [peerId, entry] of peers) {
      let bytes = 0;
      const report = await entry.pc.getStats();
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'audio') bytes += s.bytesReceived || 0;
      });
      out[peerId] = bytes;
    }
    return out;
  }

  // For tests and diagnostics: the selected candidate pair of each peer connection (getStats), so
  // a test can tell a relayed path from a direct one.
  async function selectedPairTypes() {
    const out = {};
    for (const [peerId, entry] of peers) {
      const report = await entry.pc.getStats();
      let pair = null;
      report.forEach((s) => {
        // Chrome names the pair on the transport; Firefox flags it.
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId) || pair;
      });
      report.forEach((s) => {
        if (!pair && s.type === 'candidate-pair' && s.selected) pair = s;
      });
      const local = pair && report.get(pair.localCandidateId);
      const remote = pair && report.get(pair.remoteCandidateId);
      out[peerId] = pair
        ? {
            local: local ? local.candidateType : null,
            remote: remote ? remote.candidateType : null,
            protocol: local ? local.protocol : null,
            relayProtocol: (local && local.relayProtocol) || null,
          }
        : null;
    }
    return out;
  }

  async function main() {
    $('room-id').textContent = roomId;
    $('leave').addEventListener('click', leave);
    $('mute').addEventListener('click', () => setMuted(!state.muted));
    window.addEventListener('pagehide', leave);
    const other = role === 'coach' ? 'client' : 'coach';
    const invite = new URL(location.href);
    invite.search = new URLSearchParams({ role: other, name: other }).toString();
    $('invite').textContent = `Invite the ${other}: ${invite}`;
    await setupLocalMedia();
    const id = await identity();
    state.userId = id.userId;
    $('me').textContent = `${userName} (${role}, ${id.userId})`;
    // Before the socket: the peer connections made on peer-discovery use them.
    await fetchIceServers(id.token);
    connect(id.token);
  }

  main().catch(fail);
})();
