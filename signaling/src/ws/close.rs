//! Close codes (RFC 6455 §7.4) and the closing handshake's one decision: what to answer.

/// A close frame's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: done.
    Normal,
    /// 1001: the server is going down (or the page is navigating away).
    GoingAway,
    /// 1002: the peer broke the framing rules.
    Protocol,
    /// 1003: a kind of data the endpoint does not accept.
    Unsupported,
    /// 1007: a text message that is not UTF-8.
    InvalidPayload,
    /// 1008: a policy was violated (here: too slow to receive, replaced by a resume).
    Policy,
    /// 1009: a message over the size limit.
    TooBig,
    /// 1011: an unexpected condition on the server.
    Internal,
    /// Any other code, as received.
    Other(u16),
}

impl CloseCode {
    /// The code on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::Unsupported => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::Other(c) => c,
        }
    }

    /// Whether an endpoint may put this code in a close frame (RFC 6455 §7.4.1-2: 1004-1006
    /// and 1015 are reserved for reports, 1012-2999 for future standards, <1000 unused).
    pub fn is_sendable(self) -> bool {
        let c = self.as_u16();
        (1000..=1003).contains(&c) || (1007..=1011).contains(&c) || (3000..5000).contains(&c)
    }

    /// What to answer a client's close with (§5.5.1: echo its code); codes it may not send
    /// and a close without a code are answered with 1000.
    pub fn reply_to(client: Option<CloseCode>) -> CloseCode {
        match client {
            Some(c) if c.is_sendable() => c,
            _ => CloseCode::Normal,
        }
    }
}

impl From<u16> for CloseCode {
    fn from(c: u16) -> Self {
        match c {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::Protocol,
            1003 => CloseCode::Unsupported,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::Policy,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::Internal,
            c => CloseCode::Other(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_what_may_be_sent_and_answer_the_rest_with_1000() {
        for c in [1000u16, 1001, 1003, 1007, 1011, 3000, 4999] {
            assert_eq!(CloseCode::reply_to(Some(c.into())).as_u16(), c);
        }
        for c in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000] {
            assert_eq!(
                CloseCode::reply_to(Some(c.into())),
                CloseCode::Normal,
                "{c}"
            );
        }
        assert_eq!(CloseCode::reply_to(None), CloseCode::Normal);
        for c in 0..=u16::MAX {
            assert_eq!(CloseCode::from(c).as_u16(), c);
        }
    }
}
