//! Messages on the application data channels both clients open (docs/protocol.md,
//! "Application data channels"): typed here so the headless peer and its tests agree with
//! what the browser client sends.

use serde::{Deserialize, Serialize};

/// Label of the channel that carries [`MediaState`] (ordered, reliable).
pub const MEDIA_CHANNEL: &str = "media";

/// What a peer is sending, announced on the `media` channel when it opens and on every
/// change, so the others can show a muted microphone or a camera that is off instead of a
/// black tile. Receivers compute "speaking" themselves from the audio level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaState {
    /// The sender's display name (`meta.name`).
    #[serde(default)]
    pub from: String,
    /// A microphone track is being sent and is enabled.
    pub audio: bool,
    /// A camera track is being sent and is enabled.
    pub video: bool,
    /// A screen share is on.
    #[serde(default)]
    pub screen: bool,
    /// The sender's clock, milliseconds since the Unix epoch.
    #[serde(default)]
    pub ts: u64,
}

impl MediaState {
    /// Parses one `media` message; unknown fields are ignored, a missing `audio` or
    /// `video` is an error (the message means nothing without them).
    pub fn parse(text: &str) -> Result<MediaState, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The message's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain fields serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_browser_sends_and_rejects_what_means_nothing() {
        let m = MediaState::parse(
            r#"{"from":"alice","audio":false,"video":true,"screen":false,"ts":1718034612345,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            MediaState {
                from: "alice".into(),
                audio: false,
                video: true,
                screen: false,
                ts: 1718034612345
            }
        );
        assert_eq!(MediaState::parse(&m.to_json()).unwrap(), m);
        assert!(MediaState::parse(r#"{"from":"alice","video":true}"#).is_err());
        assert!(MediaState::parse("not json").is_err());
    }
}
