#!/usr/bin/env node
// peerjs-server.mjs [--port PORT] [--host 127.0.0.1] — the reference signaling server for
// the side-by-side benchmark: the npm `peer` package (pinned in package.json), configured
// the way a PeerJS deployment runs it (path "/", key "peerjs", WebSocket at /peerjs).
// Prints exactly one stdout line, "listening PORT", once it accepts connections; PORT 0
// (the default) picks a free port. Stops on SIGTERM/SIGINT.
import { PeerServer } from 'peer';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PORT ?? '0' },
    host: { type: 'string', default: '127.0.0.1' },
  },
});

// The benchmark only ever targets this machine's loopback.
if (!/^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|::1)$/.test(args.host)) {
  console.error(`peerjs-server: refusing non-loopback host ${args.host}`);
  process.exit(2);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`peerjs-server: bad port ${args.port}`);
  process.exit(2);
}

const peer = PeerServer(
  {
    host: args.host,
    port,
    path: '/',
    key: 'peerjs',
    // The default cap is 5000 clients; the idle benchmark opens far more than that, and a
    // refused connection would measure the cap, not the server.
    concurrent_limit: 1_000_000,
  },
  (server) => {
    process.stdout.write(`listening ${server.address().port}\n`);
    const stop = () => {
      server.closeAllConnections?.();
      server.close(() => process.exit(0));
      // ws connections are upgraded sockets the http server no longer tracks; don't wait on them.
      setTimeout(() => process.exit(0), 500).unref();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  },
);
// The peer package emits socket errors on the app; without a listener they would crash it.
peer.on('error', (err) => console.error(`peerjs-server: ${err?.message ?? err}`));
