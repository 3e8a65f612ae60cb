// media.js — local camera, microphone and screen share.
//
// Works without devices: if the camera/microphone are refused or absent the page stays in
// the call receive-only (and chat-only if the other side sends nothing). `status` says which.
// Toggles keep the tracks and flip `enabled` (a muted mic sends silence, a camera that is off
// sends black frames), so no renegotiation is needed. Screen share swaps the outgoing video
// track (the peer manager calls RTCRtpSender.replaceTrack).

const CAMERA = { width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 24, max: 30 } };

export class Media {
  constructor({ onChange }) {
    this.onChange = onChange; // (what) => void; what: 'tracks' | 'toggles'
    this.audio = null; // MediaStreamTrack from the microphone
    this.camera = null; // MediaStreamTrack from the camera
    this.screen = null; // MediaStreamTrack from getDisplayMedia while sharing
    this.status = 'pending'; // pending | ok | audio-only | video-only | denied | no-devices | unavailable | off
    this.error = null;
  }

  /** The track each peer should be sent, by kind (null: send nothing). */
  get tracks() { return { audio: this.audio, video: this.screen ?? this.camera }; }
  get micOn() { return !!this.audio?.enabled; }
  get camOn() { return !!this.camera?.enabled; }
  get sharing() { return !!this.screen; }
  get canShare() { return !!navigator.mediaDevices?.getDisplayMedia; }

  /**
   * Ask for the microphone and/or camera we do not have yet, falling back to one of them,
   * then to nothing. Returns true if a new track was added.
   */
  async acquire({ audio = true, video = true } = {}) {
    const md = navigator.mediaDevices;
    if (!md?.getUserMedia) { this.#done('unavailable', 'this page is not a secure context'); return false; }
    const want = { audio: audio && !this.audio, video: video && !this.camera };
    const tries = [{ audio: want.audio, video: want.video && CAMERA }];
    if (want.audio && want.video) tries.push({ audio: true }, { video: CAMERA });
    for (const constraints of tries) {
      try {
        const stream = await md.getUserMedia(constraints);
        this.audio ??= stream.getAudioTracks()[0] ?? null;
        this.camera ??= stream.getVideoTracks()[0] ?? null;
        for (const t of stream.getTracks()) t.addEventListener('ended', () => this.#ended(t));
        this.#done(this.audio && this.camera ? 'ok' : this.audio ? 'audio-only' : 'video-only');
        return true;
      } catch (e) {
        this.error = `${e.name}: ${e.message}`;
        // Refused: asking again for less would only nag; absent/busy: try with less.
        if (e.name === 'NotAllowedError' || e.name === 'SecurityError') { this.#done(this.#statusWith('denied'), this.error); return false; }
      }
    }
    this.#done(this.#statusWith('no-devices'), this.error);
    return false;
  }

  /** Join without asking for devices (?media=0); the Mic/Camera buttons ask later. */
  skip() { this.#done('off'); }

    setMic(on) { if (this.audio) { this.audio.enabled = on; this.onChange('toggles'); } }
  setCamera(on) { if (this.camera) { this.camera.enabled = on; this.onChange('toggles'); } }

  async startShare() {
    if (this.screen) return;
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15, max: 30 } }, audio: false });
    const track = stream.getVideoTracks()[0];
    track.contentHint = 'detail';
    track.addEventListener('ended', () => this.stopShare()); // the browser's own "Stop sharing"
    this.screen = track;
    this.onChange('tracks');
  }

  stopShare() {
    if (!this.screen) return;
    this.screen.stop();
    this.screen = null;
    this.onChange('tracks');
  }

  stop() {
    for (const t of [this.audio, this.camera, this.screen]) t?.stop();
    this.audio = this.camera = this.screen = null;
  }

  #statusWith(failure) {
    return this.audio && this.camera ? 'ok' : this.audio ? 'audio-only' : this.camera ? 'video-only' : failure;
  }

  #done(status, error = null) {
    this.status = status;
    this.error = error;
    this.onChange('tracks');
  }

  #ended(track) {
    // Device unplugged or revoked: stop sending it.
    if (track === this.audio) this.audio = null;
    if (track === this.camera) this.camera = null;
    this.onChange('tracks');
  }
}
