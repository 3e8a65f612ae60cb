//! Human lines or one JSON object per line (`--json`), on stdout.

use serde_json::Value;

/// Where a subcommand's events go: human lines or JSON lines on stdout.
#[derive(Clone, Copy)]
pub struct Out {
    /// One JSON object per line (`--json`) instead of human lines.
    pub json: bool,
}

impl Out {
    /// An event: JSON mode prints `v`; human mode prints `human` when given.
    pub fn event(&self, v: &Value, human: Option<String>) {
        if self.json {
            println!("{v}");
        } else if let Some(h) = human {
            println!("{h}");
        }
    }
}
