// media.js — local camera, microphone and screen share, and which devices to use.
//
// Works without devices: if the camera/microphone are refused or absent the page stays in
// the call receive-only (and chat-only if the other side sends nothing). `status` says which.
// Toggles keep the tracks and flip `enabled` (a muted mic sends silence, a camera that is off
// sends black frames), so no renegotiation is needed. Screen share swaps the outgoing video
// track (the peer manager calls RTCRtpSender.replaceTrack), and so does picking another
// camera or microphone. The chosen devices and the speaker are remembered in this browser.
// A device that goes away (unplugged, revoked: its track ends) is replaced by the default
// one of its kind when there is one.

const CAMERA = { width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 24, max: 30 } };
const PREFS_KEY = 'icebreaker.devices';
// The level meter's AudioContext may only start after a user gesture (autoplay policy).
for (const ev of ['pointerdown', 'keydown']) addEventListener(ev, () => { if (Media.ctx?.state === 'suspended') Media.ctx.resume().catch(() => {}); }, true);

function loadPrefs() {
  try { return JSON.parse(localStorage.getItem(PREFS_KEY)) ?? {}; } catch { return {}; }
}

export class Media {
  /**
   * @param {object} o
   * @param {(what: string) => void} o.onChange  'tracks' | 'toggles' | 'devices'
   * @param {(text: string, kind?: string) => void} [o.onNotice]  something to tell the user
   */
  constructor({ onChange, onNotice = () => {} }) {
    this.onChange = onChange;
    this.onNotice = onNotice;
    this.audio = null; // MediaStreamTrack from the microphone
    this.camera = null; // MediaStreamTrack from the camera
    this.screen = null; // MediaStreamTrack from getDisplayMedia while sharing
    this.status = 'pending'; // pending | ok | audio-only | video-only | denied | no-devices | unavailable | off
    this.error = null;
    this.want = { mic: true, cam: true }; // what the user switched on (kept while tracks are stopped)
    this.prefs = loadPrefs(); // {audioinput, videoinput, audiooutput}: chosen device ids
    this.devices = []; // MediaDeviceInfo[] from the last enumerateDevices()
    this.meter = null;
    navigator.mediaDevices?.addEventListener?.('devicechange', () => this.refreshDevices());
  }

  /** The track each peer should be sent, by kind (null: send nothing). */
  get tracks() { return { audio: this.audio, video: this.screen ?? this.camera }; }
  get micOn() { return !!this.audio?.enabled; }
  get camOn() { return !!this.camera?.enabled; }
  get sharing() { return !!this.screen; }
  get canShare() { return !!navigator.mediaDevices?.getDisplayMedia; }
  /** What we tell the room on the `media` channel. */
  get state() { return { audio: this.micOn, video: this.camOn || this.sharing, screen: this.sharing }; }
  get speakerId() { return this.prefs.audiooutput ?? ''; }

  /** Constraints for one kind: the remembered device (exact), or any (`remembered` false). */
  #constraints(kind, remembered = true) {
    const id = remembered && this.prefs[kind === 'audio' ? 'audioinput' : 'videoinput'];
    const base = kind === 'video' ? { ...CAMERA } : {};
    if (id) base.deviceId = { exact: id };
    return Object.keys(base).length ? base : true;
  }

  /**
   * Ask for the microphone and/or camera we do not have yet, falling back to one of them,
   * then to nothing. Returns true if a new track was added.
   */
  async acquire({ audio = true, video = true } = {}) {
    const md = navigator.mediaDevices;
    if (!md?.getUserMedia) { this.#done('unavailable', 'this page is not a secure context'); return false; }
    const want = { audio: audio && !this.audio, video: video && !this.camera };
    if (!want.audio && !want.video) return false;
    const both = (remembered) => ({ audio: want.audio && this.#constraints('audio', remembered), video: want.video && this.#constraints('video', remembered) });
    // The remembered devices first; if one is gone, any device of its kind.
    const tries = [both(true)];
    if ((want.audio && this.prefs.audioinput) || (want.video && this.prefs.videoinput)) tries.push(both(false));
    if (want.audio && want.video) tries.push({ audio: this.#constraints('audio', false) }, { video: this.#constraints('video', false) });
    for (const constraints of tries) {
      try {
        const stream = await md.getUserMedia(constraints);
        const a = stream.getAudioTracks()[0] ?? null, v = stream.getVideoTracks()[0] ?? null;
        if (a && !this.audio) { this.audio = a; a.enabled = this.want.mic; } else a?.stop();
        if (v && !this.camera) { this.camera = v; v.enabled = this.want.cam; } else v?.stop();
        for (const t of [a, v]) t?.addEventListener('ended', () => this.#ended(t));
        this.#done(this.audio && this.camera ? 'ok' : this.audio ? 'audio-only' : 'video-only');
        this.refreshDevices();
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

  setMic(on) { this.want.mic = on; if (this.audio) { this.audio.enabled = on; this.onChange('toggles'); } }
  setCamera(on) { this.want.cam = on; if (this.camera) { this.camera.enabled = on; this.onChange('toggles'); } }

  /** The devices of each kind (labels are empty until a permission was granted). */
  async refreshDevices() {
    try { this.devices = (await navigator.mediaDevices?.enumerateDevices?.()) ?? []; } catch { this.devices = []; }
    this.onChange('devices');
  }

  /** The device id a track or the speaker uses now, by MediaDeviceInfo kind. */
  currentDevice(kind) {
    if (kind === 'audiooutput') return this.speakerId;
    const t = kind === 'audioinput' ? this.audio : this.camera;
    return t?.getSettings?.().deviceId ?? this.prefs[kind] ?? '';
  }

  /** Use another camera, microphone or speaker (a deviceId from `devices`). */
  async useDevice(kind, deviceId) {
    this.prefs[kind] = deviceId;
    try { localStorage.setItem(PREFS_KEY, JSON.stringify(this.prefs)); } catch { /* private mode */ }
    if (kind === 'audiooutput') { this.onChange('devices'); return true; }
    const isAudio = kind === 'audioinput';
    const old = isAudio ? this.audio : this.camera;
    if (old?.getSettings().deviceId === deviceId) return true;
    try {
      const c = isAudio ? { deviceId: { exact: deviceId } } : { ...CAMERA, deviceId: { exact: deviceId } };
      const stream = await navigator.mediaDevices.getUserMedia(isAudio ? { audio: c } : { video: c });
      const t = isAudio ? stream.getAudioTracks()[0] : stream.getVideoTracks()[0];
      t.enabled = isAudio ? this.want.mic : this.want.cam;
      t.addEventListener('ended', () => this.#ended(t));
      if (isAudio) this.audio = t; else this.camera = t;
      if (old) { old.onended = null; old.stop(); }
      this.meter = null;
      this.#done(this.#statusWith(this.status));
      return true;
    } catch (e) {
      this.onNotice(`Could not switch the ${isAudio ? 'microphone' : 'camera'}: ${e.message || e.name}`, 'error');
      return false;
    }
  }

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

  /** Stop every track (camera light off); `want` remembers what to switch on again. */
  stop() {
    for (const t of [this.audio, this.camera, this.screen]) t?.stop();
    this.audio = this.camera = this.screen = null;
    this.meter = null;
    this.onChange('tracks');
  }

  /** Our microphone's loudness now, 0..1 (RMS; 0 when muted or without a microphone). */
  localLevel() {
    if (!this.audio || !this.audio.enabled || this.audio.readyState !== 'live') return 0;
    try {
      if (!this.meter || this.meter.track !== this.audio) {
        Media.ctx ??= new AudioContext();
        const an = Media.ctx.createAnalyser();
        an.fftSize = 512;
        Media.ctx.createMediaStreamSource(new MediaStream([this.audio])).connect(an);
        this.meter = { track: this.audio, an, buf: new Float32Array(an.fftSize) };
      }
      if (Media.ctx.state === 'suspended') return 0; // until a click or key press lets it start
      const { an, buf } = this.meter;
      an.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += v * v;
      return Math.sqrt(sum / buf.length);
    } catch { return 0; }
  }

  #statusWith(failure) {
    return this.audio && this.camera ? 'ok' : this.audio ? 'audio-only' : this.camera ? 'video-only' : failure;
  }

  #done(status, error = null) {
    this.status = status;
    this.error = error;
    this.onChange('tracks');
  }

  async #ended(track) {
    // Device unplugged or revoked: stop sending it, then fall back to the default device.
    const kind = track === this.audio ? 'audio' : track === this.camera ? 'video' : null;
    if (!kind) return;
    if (kind === 'audio') this.audio = null; else this.camera = null;
    track.stop();
    this.meter = null;
    this.status = this.#statusWith('no-devices');
    this.onChange('tracks');
    const what = kind === 'audio' ? 'Microphone' : 'Camera';
    delete this.prefs[kind === 'audio' ? 'audioinput' : 'videoinput'];
    await new Promise((r) => setTimeout(r, 500));
    if (this.status === 'off') return;
    if (await this.acquire({ audio: kind === 'audio', video: kind === 'video' })) {
      const t = kind === 'audio' ? this.audio : this.camera;
      this.onNotice(`${what} disconnected — now using ${t?.label || 'the default one'}`, 'warn');
    } else {
      this.onNotice(`${what} disconnected`, 'warn');
    }
  }
}
