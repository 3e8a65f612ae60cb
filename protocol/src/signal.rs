//! What peers put in a signal's `data`: the server forwards it unread, but the clients
//! agree on these shapes (docs/protocol.md, "Signal payloads"), which are the browser's
//! `RTCSessionDescriptionInit` and `RTCIceCandidate.toJSON()`.

use serde::{Deserialize, Serialize};

/// The `data` of a signal between WebRTC peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalData {
    /// `{"sdp": {...}}`: a session description.
    #[serde(rename = "sdp")]
    Description(SessionDescription),
    /// `{"candidate": {...}}`: one ICE candidate; `{"candidate": null}`: end of candidates.
    #[serde(rename = "candidate")]
    Candidate(Option<IceCandidate>),
}

impl SignalData {
    /// Parses a signal's `data`; `None` for shapes this version does not know.
    pub fn parse(raw: &serde_json::value::RawValue) -> Option<SignalData> {
        serde_json::from_str(raw.get()).ok()
    }

    /// The data as JSON, ready for [`crate::ClientMessage::Signal`].
    pub fn to_raw(&self) -> Box<serde_json::value::RawValue> {
        serde_json::value::to_raw_value(self).expect("signal data always serializes")
    }
}

/// `RTCSdpType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    /// An offer.
    Offer,
    /// An answer.
    Answer,
    /// A provisional answer.
    Pranswer,
    /// Undo the last local or remote offer.
    Rollback,
}

/// `RTCSessionDescriptionInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    /// Offer, answer, pranswer or rollback.
    #[serde(rename = "type")]
    pub kind: SdpType,
    /// The SDP text (empty for a rollback).
    #[serde(default)]
    pub sdp: String,
}

/// `RTCIceCandidateInit`, as `RTCIceCandidate.toJSON()` writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` line; empty also means end of candidates (older browsers).
    pub candidate: String,
    /// The media stream identification tag it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The index of its m-line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    /// The ICE ufrag of the session it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}
