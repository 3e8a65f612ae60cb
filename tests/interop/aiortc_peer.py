#!/usr/bin/env python3
"""A small Icebreaker peer built on aiortc (a second WebRTC stack), for interop tests.

It speaks signaling protocol v1 (docs/protocol.md) and the app's data-channel
conventions:

* As the newcomer (peers listed in ``joined``) it creates the ``chat`` (ordered,
  reliable) and ``pointer`` (unordered, maxRetransmits 0) channels and sends the offer.
* As the peer already in the room (``peer-joined``) it waits for the offer, answers,
  and takes the channels from ``datachannel``.
* Perfect negotiation: it is polite exactly when the server says so. aiortc never
  offers on its own (no ``negotiationneeded``), so the polite side cannot collide; the
  impolite side ignores a colliding offer, as the pattern says.
* aiortc does not trickle: the SDP it sends already carries every local candidate. The
  remote side's trickled candidates (``{"candidate": {...}}``) are applied with
  ``addIceCandidate`` (queued until the remote description is set).
  ``{"candidate": null}`` (end of candidates) is not applied unless
  ``--strict-end-of-candidates``: icebreaker-peer may deliver it before its last
  candidate, and aiortc refuses every candidate after it.

Usage::

    python aiortc_peer.py --server ws://127.0.0.1:PORT/ws --room R --name N \\
        [--send TEXT]... [--expect N] [--pointer-expect N] [--timeout 40] [--relay-only]

Every event is one JSON object on one stdout line; the last one is
``{"event": "done", "ok": ..., "chat_received": n, "pointer_received": m}``. Exit status
0 once ``--expect`` chat messages and ``--pointer-expect`` pointer positions arrived
(then it lingers ``--linger`` seconds, still sending, so the other side finishes too),
1 on ``--timeout``. Diagnostics go to stderr (``--log debug`` for aiortc's own).

Host candidates: aioice gathers one per interface address and skips 127.0.0.1. This
peer replaces that list with ``--bind`` (default 127.0.0.1), so that tests stay on
loopback; ``--bind all`` keeps aioice's own choice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from typing import Any, Optional

import aioice.ice
import websockets
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

log = logging.getLogger("aiortc_peer")


def now_ms() -> int:
    return int(time.time() * 1000)


def emit(obj: dict[str, Any]) -> None:
    """One event: one JSON object on one stdout line."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def position(t: float) -> tuple[float, float]:
    """A Lissajous path through the unit square (a different one than icebreaker-peer's)."""
    return 0.5 + 0.4 * math.cos(t * 1.7), 0.5 + 0.4 * math.sin(t * 1.1)


def ice_servers_from_joined(servers: Any) -> list[RTCIceServer]:
    """``ice_servers`` from ``joined`` as aiortc objects.

    aiortc uses the first ``stun:`` URL and the first ``turn:`` URL it can use; the
    TCP and TLS variants are dropped so that the UDP relay is the one it picks.
    """
    out = []
    for s in servers or []:
        urls = s.get("urls") or []
        if isinstance(urls, str):
            urls = [urls]
        keep = [
            u
            for u in urls
            if (u.startswith("stun:") or u.startswith("turn:"))
            and "transport=tcp" not in u
        ]
        if keep:
            out.append(
                RTCIceServer(
                    urls=keep, username=s.get("username"), credential=s.get("credential")
                )
            )
    return out


def parse_candidate(c: dict[str, Any]):
    """A browser-style ``RTCIceCandidateInit`` dict as an aiortc ``RTCIceCandidate``."""
    text = c["candidate"].strip()
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    cand = candidate_from_sdp(text)
    cand.sdpMid = c.get("sdpMid")
    cand.sdpMLineIndex = c.get("sdpMLineIndex")
    return cand


class Peer:
    """One RTCPeerConnection to one remote peer."""

    def __init__(self, app: "App", pid: str, name: str, polite: bool, newcomer: bool):
        self.app, self.id, self.name = app, pid, name
        self.polite = polite
        self.newcomer = newcomer
        self.making_offer = False
        self.ignore_offer = False
        self.pending: list[Any] = []
        self.end_applied = False
        self.channels: dict[str, RTCDataChannel] = {}
        self.tasks: list[asyncio.Task] = []
        self.closed = False
        self.pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=app.ice_servers,
                iceTransportPolicy=RTCIceTransportPolicy.RELAY
                if app.args.relay_only
                else RTCIceTransportPolicy.ALL,
            )
        )
        self.pc.on("connectionstatechange", self.on_connection_state)
        self.pc.on("datachannel", self.use_channel)

    async def start(self) -> None:
        if self.newcomer:
            self.use_channel(self.pc.createDataChannel("chat"))
            self.use_channel(
                self.pc.createDataChannel("pointer", ordered=False, maxRetransmits=0)
            )
            await self.offer()

    async def offer(self) -> None:
        try:
            self.making_offer = True
            # Gathers every local candidate before it returns (no trickle in aiortc).
            await self.pc.setLocalDescription(await self.pc.createOffer())
            await self.app.signal(self.id, {"sdp": self.description()})
        finally:
            self.making_offer = False

    def description(self) -> dict[str, str]:
        d = self.pc.localDescription
        return {"type": d.type, "sdp": d.sdp}

    async def on_signal(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if data.get("sdp"):
            await self.on_description(data["sdp"])
        elif "candidate" in data:
            await self.on_candidate(data["candidate"])

    async def on_description(self, d: dict[str, Any]) -> None:
        typ, sdp = d.get("type"), d.get("sdp", "")
        if typ == "rollback":
            log.info("%s: ignoring a remote rollback (local only, nothing to do)", self.id)
            return
        collision = typ == "offer" and (
            self.making_offer or self.pc.signalingState != "stable"
        )
        self.ignore_offer = not self.polite and collision
        if self.ignore_offer:
            log.info("%s: offer collision, impolite: ignoring the offer", self.id)
            return
        if collision:
            # aiortc has no rollback. Unreachable in practice: aiortc only offers as the
            # newcomer, which is the impolite side.
            log.warning("%s: offer collision on the polite side, cannot roll back", self.id)
            emit({"event": "warning", "peer": self.id, "message": "collision without rollback"})
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=typ))
        pending, self.pending = self.pending, []
        for c in pending:
            await self.add_candidate(c)
        if typ == "offer":
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.app.signal(self.id, {"sdp": self.description()})

    async def on_candidate(self, c: Any) -> None:
        if not c or not c.get("candidate"):
            if not self.app.args.strict_end_of_candidates:
                log.debug("%s: end of candidates (not applied)", self.id)
                return
            if self.pc.remoteDescription is None:
                self.pending.append(None)
            else:
                await self.add_candidate(None)
            return
        try:
            cand = parse_candidate(c)
        except Exception as e:  # noqa: BLE001 - a malformed candidate is only logged
            log.warning("%s: malformed candidate %r: %s", self.id, c, e)
            return
        if self.pc.remoteDescription is None:
            self.pending.append(cand)
        else:
            await self.add_candidate(cand)

    async def add_candidate(self, cand: Any) -> None:
        if cand is None:
            self.end_applied = True
        elif self.end_applied:
            # aiortc drops it silently; say so.
            log.warning("%s: candidate after end-of-candidates, dropped by aiortc: %s %s:%s",
                        self.id, cand.type, cand.ip, cand.port)
            emit({"event": "late-candidate", "peer": self.id, "type": cand.type})
            return
        try:
            await self.pc.addIceCandidate(cand)
        except Exception as e:  # noqa: BLE001
            if not self.ignore_offer:
                log.warning("%s: candidate refused: %s", self.id, e)

    def on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s: connection %s", self.id, state)
        if state == "connected":
            local, remote, proto = self.selected_pair()
            emit({"event": "connected", "peer": self.id, "local": local,
                  "remote": remote, "protocol": proto})
        elif state == "failed":
            emit({"event": "connection-failed", "peer": self.id})

    def selected_pair(self) -> tuple[str, str, str]:
        """Candidate types of the nominated pair (aioice internals; best effort)."""
        try:
            conn = self.pc.sctp.transport.transport._connection
            pair = conn._nominated.get(1)
            return (pair.local_candidate.type, pair.remote_candidate.type,
                    pair.local_candidate.transport.lower())
        except Exception:  # noqa: BLE001
            return "", "", ""

    def use_channel(self, ch: RTCDataChannel) -> None:
        self.channels[ch.label] = ch

        @ch.on("message")
        def on_message(msg: Any) -> None:
            self.app.on_message(self, ch.label, msg)

        @ch.on("open")
        def on_open() -> None:
            self.on_open(ch)

        @ch.on("close")
        def on_close() -> None:
            log.info("%s: channel %s closed", self.id, ch.label)

        # Channels announced by the remote side are already open.
        if ch.readyState == "open":
            self.on_open(ch)

    def on_open(self, ch: RTCDataChannel) -> None:
        emit({"event": "channel-open", "peer": self.id, "label": ch.label})
        if ch.label == "chat":
            for text in self.app.args.send:
                ch.send(json.dumps({"from": self.app.args.name, "text": text, "ts": now_ms()}))
        elif ch.label == "pointer":
            self.tasks.append(asyncio.ensure_future(self.send_pointer(ch)))

    async def send_pointer(self, ch: RTCDataChannel) -> None:
        period = 1.0 / max(1.0, self.app.args.pointer_rate)
        t0 = time.monotonic()
        while ch.readyState == "open" and not self.closed:
            x, y = position(time.monotonic() - t0)
            ch.send(json.dumps({"from": self.app.args.name, "x": round(x, 4),
                                "y": round(y, 4), "ts": now_ms()}))
            self.app.pointer_sent += 1
            await asyncio.sleep(period)

    async def close(self) -> None:
        self.closed = True
        for t in self.tasks:
            t.cancel()
        await self.pc.close()


class App:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ws: Any = None
        self.my_id: Optional[str] = None
        self.ice_servers: list[RTCIceServer] = []
        self.peers: dict[str, Peer] = {}
        self.chat_received = 0
        self.pointer_received = 0
        self.pointer_sent = 0
        self.pointer_out_of_range = 0
        self.goal = asyncio.Event()
        self.leaving = False

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def signal(self, to: str, data: Any) -> None:
        await self.send({"type": "signal", "to": to, "data": data})

    def check_goal(self) -> None:
        if (self.chat_received >= self.args.expect
                and self.pointer_received >= self.args.pointer_expect):
            self.goal.set()

    def on_message(self, peer: Peer, label: str, msg: Any) -> None:
        if isinstance(msg, bytes):
            msg = msg.decode("utf-8", "replace")
        try:
            v = json.loads(msg)
            if not isinstance(v, dict):
                raise ValueError("not an object")
        except ValueError:
            v = {"text": msg}
        if label == "chat":
            self.chat_received += 1
            emit({"event": "chat", "peer": peer.id, "from": v.get("from", peer.name),
                  "text": v.get("text", ""), "ts": v.get("ts")})
        elif label == "pointer":
            x, y = v.get("x"), v.get("y")
            ok = all(isinstance(c, (int, float)) and 0.0 <= c <= 1.0 for c in (x, y))
            if not ok:
                self.pointer_out_of_range += 1
            self.pointer_received += 1
            n = self.pointer_received
            if n == 1 or n % 30 == 0 or n == self.args.pointer_expect:
                emit({"event": "pointer", "peer": peer.id, "from": v.get("from", peer.name),
                      "count": n, "x": x, "y": y})
        self.check_goal()

    async def add_peer(self, pid: str, meta: Any, polite: bool, newcomer: bool) -> None:
        name = meta.get("name", pid) if isinstance(meta, dict) else pid
        p = Peer(self, pid, name, polite, newcomer)
        self.peers[pid] = p
        await p.start()

    async def handle(self, m: dict[str, Any]) -> None:
        typ = m.get("type")
        if typ == "joined":
            self.my_id = m["id"]
            self.ice_servers = ice_servers_from_joined(m.get("ice_servers"))
            emit({"event": "joined", "id": m["id"], "room": m.get("room"),
                  "peers": [p["id"] for p in m.get("peers", [])],
                  "ice_servers": [s.urls for s in self.ice_servers]})
            for p in m.get("peers", []):  # we are the newcomer: we offer
                await self.add_peer(p["id"], p.get("meta"), bool(p.get("polite")), True)
        elif typ == "peer-joined":
            emit({"event": "peer-joined", "peer": m["id"], "meta": m.get("meta")})
            await self.add_peer(m["id"], m.get("meta"), bool(m.get("polite", True)), False)
        elif typ == "peer-left":
            emit({"event": "peer-left", "peer": m["id"], "reason": m.get("reason")})
            p = self.peers.pop(m["id"], None)
            if p:
                await p.close()
        elif typ == "signal":
            p = self.peers.get(m.get("from"))
            if p:
                log.debug("signal from %s: %s", m.get("from"), json.dumps(m.get("data"))[:200])
                try:
                    await p.on_signal(m.get("data"))
                except Exception as e:  # noqa: BLE001
                    log.warning("%s: signal failed: %r", p.id, e)
                    emit({"event": "signal-error", "peer": p.id, "message": repr(e)})
        elif typ == "error":
            emit({"event": "server-error", "code": m.get("code"), "message": m.get("message")})

    async def read_loop(self) -> None:
        # Messages are handled one at a time, in order (an answer never overtakes its
        # offer). websockets answers the server's heartbeat pings by itself.
        try:
            async for raw in self.ws:
                if isinstance(raw, bytes):
                    continue
                try:
                    m = json.loads(raw)
                except ValueError:
                    continue
                await self.handle(m)
        except websockets.ConnectionClosed:
            pass
        if not self.leaving:
            emit({"event": "signaling-closed"})

    async def run(self) -> bool:
        a = self.args
        self.ws = await websockets.connect(a.server, max_size=2**20)
        await self.send({"type": "join", "room": a.room, "meta": {"name": a.name}})
        reader = asyncio.ensure_future(self.read_loop())
        ok = False
        try:
            await asyncio.wait_for(self.goal.wait(), timeout=a.timeout)
            ok = True
        except asyncio.TimeoutError:
            emit({"event": "timeout", "chat_received": self.chat_received,
                  "pointer_received": self.pointer_received})
        if ok and a.linger > 0:
            # Keep the channels up (and the pointer flowing) so the other side finishes.
            await asyncio.sleep(a.linger)
        ok = ok and self.pointer_out_of_range == 0
        done = {"event": "done", "ok": ok, "chat_received": self.chat_received,
                "pointer_received": self.pointer_received, "pointer_sent": self.pointer_sent}
        if self.pointer_out_of_range:
            done["pointer_out_of_range"] = self.pointer_out_of_range
        try:
            await asyncio.wait_for(self.shutdown(reader), timeout=5)
        except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001
            log.warning("shutdown: %r", e)
        emit(done)
        return ok

    async def shutdown(self, reader: asyncio.Future) -> None:
        self.leaving = True
        try:
            await self.send({"type": "leave"})
            await self.ws.close()
        except websockets.ConnectionClosed:
            pass
        reader.cancel()
        for p in list(self.peers.values()):
            await p.close()


def restrict_host_addresses(bind: str) -> None:
    """Make aioice gather host candidates on ``bind`` only (it skips 127.0.0.1 itself)."""
    if bind == "all":
        return

    def only_bind(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [bind]

    aioice.ice.get_host_addresses = only_bind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="ws://127.0.0.1:8080/ws")
    ap.add_argument("--room", default="lobby")
    ap.add_argument("--name", default=f"aiortc-{os.getpid()}")
    ap.add_argument("--send", action="append", default=[],
                    help="text sent on each peer's chat channel when it opens (repeatable)")
    ap.add_argument("--expect", type=int, default=1, help="chat messages to receive")
    ap.add_argument("--pointer-expect", type=int, default=10,
                    help="pointer positions to receive")
    ap.add_argument("--pointer-rate", type=float, default=30.0, help="positions per second")
    ap.add_argument("--timeout", type=float, default=40.0, help="seconds before giving up")
    ap.add_argument("--linger", type=float, default=2.0,
                    help="seconds to stay connected after the goal is reached")
    ap.add_argument("--relay-only", action="store_true", help="iceTransportPolicy relay")
    ap.add_argument("--bind", default="127.0.0.1",
                    help="address for host candidates, or 'all' for every interface")
    ap.add_argument("--strict-end-of-candidates", action="store_true",
                    help="apply {\"candidate\": null} (aiortc then refuses later candidates)")
    ap.add_argument("--log", default="warning", help="stderr log level (debug, info, ...)")
    args = ap.parse_args()
    logging.basicConfig(level=args.log.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    restrict_host_addresses(args.bind)
    ok = asyncio.run(App(args).run())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
