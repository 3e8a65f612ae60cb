#!/usr/bin/env node
// stub-v1.mjs [--listen 127.0.0.1:PORT] — a minimal Icebreaker signaling protocol v1 server
// on the `ws` package. It exists ONLY to test load.mjs and run.sh end to end while the real
// server is not there; its numbers mean nothing about Icebreaker.
//
// It takes the flags of the real binary so run.sh can start it as OURS_BIN=stub; the ones
// about relays, rate limits and per-IP caps are accepted and ignored. Endpoint: /ws.
// Prints "listening PORT" on stdout when ready (PORT 0 picks a free one).
//
// Covered: join (rooms, peers list, peer-joined), signal routing within a room, leave,
// ping/pong, per-connection "seq" on every server message, and the error codes a client
// can provoke without auth (bad-message, too-large, not-joined, unknown-peer). Not covered:
// auth, resume, rate limits, room caps, timeouts.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const { values: args } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:0' },
    'no-relay': { type: 'boolean' },
    'rate-limit': { type: 'string' },
    'max-connections-per-ip': { type: 'string' },
  },
});
const m = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\]):(\d{1,5})$/.exec(args.listen);
if (!m) {
  console.error(`stub-v1: --listen must be a loopback HOST:PORT, got ${args.listen}`);
  process.exit(2);
}
const host = m[1].replace(/^\[|\]$/g, '');
const port = Number(m[2]);

const MAX_MESSAGE = 64 * 1024;
const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** room name -> Map<peer id, Session> */
const rooms = new Map();

class Session {
  constructor(ws) {
    this.ws = ws;
    this.id = null;
    this.room = null;
    this.meta = {};
    this.seq = 0;
  }
  send(msg) {
    msg.seq = ++this.seq;
    this.ws.send(JSON.stringify(msg));
  }
  error(code, message) {
    this.send({ type: 'error', code, message });
  }
  leave(reason) {
    if (!this.room) return;
    const members = rooms.get(this.room);
    members.delete(this.id);
    if (members.size === 0) rooms.delete(this.room);
    else for (const other of members.values()) other.send({ type: 'peer-left', id: this.id, reason });
    this.room = null;
    this.id = null;
  }
}

function onMessage(s, raw) {
  if (raw.length > MAX_MESSAGE) return s.error('too-large', `limit is ${MAX_MESSAGE} bytes`);
  let msg;
  try {
    msg = JSON.parse(raw);
  } catch {
    return s.error('bad-message', 'not JSON');
  }
  if (msg === null || typeof msg !== 'object') return s.error('bad-message', 'not an object');
  switch (msg.type) {
    case 'join': {
      if (s.room) return s.error('bad-message', 'already joined');
      if (typeof msg.room !== 'string' || !ROOM_RE.test(msg.room)) return s.error('bad-message', 'bad room');
      let members = rooms.get(msg.room);
      if (!members) rooms.set(msg.room, (members = new Map()));
      s.id = randomBytes(9).toString('base64url');
      s.room = msg.room;
      s.meta = msg.meta && typeof msg.meta === 'object' ? msg.meta : {};
      // Stub's choice for perfect negotiation: the newcomer is the polite side.
      const peers = [...members.values()].map((o) => ({ id: o.id, meta: o.meta, polite: false }));
      for (const o of members.values()) o.send({ type: 'peer-joined', id: s.id, meta: s.meta, polite: true });
      members.set(s.id, s);
      return s.send({
        type: 'joined',
        id: s.id,
        room: s.room,
        peers,
        ice_servers: [],
        resume_token: randomBytes(16).toString('base64url'),
      });
    }
    case 'signal': {
      if (!s.room) return s.error('not-joined', 'join a room first');
      if (typeof msg.to !== 'string' || msg.data === null || typeof msg.data !== 'object')
        return s.error('bad-message', 'signal needs "to" and object "data"');
      const dst = rooms.get(s.room).get(msg.to);
      if (!dst) return s.error('unknown-peer', msg.to);
      return dst.send({ type: 'signal', from: s.id, data: msg.data });
    }
    case 'leave':
      return s.leave('left');
    case 'ping':
      return s.send({ type: 'pong' });
    default:
      return s.error('bad-message', 'unknown type');
  }
}

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404).end();
});
// maxPayload above MAX_MESSAGE so oversize frames get a protocol error, not a bare close.
const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 4 * MAX_MESSAGE });
wss.on('connection', (ws) => {
  const s = new Session(ws);
  ws.on('message', (data, isBinary) => (isBinary ? s.error('bad-message', 'text frames only') : onMessage(s, data.toString())));
  ws.on('close', () => s.leave('left'));
  ws.on('error', () => {});
});

server.listen(port, host, () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
const stop = () => {
  for (const ws of wss.clients) ws.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
