//! Rounding, percentiles and JSON numbers, matching load.mjs's output.

use serde_json::Value;

/// Three decimals, like load.mjs's round3; None for non-finite values.
pub fn round3(x: f64) -> Option<f64> {
    x.is_finite().then(|| (x * 1000.0).round() / 1000.0)
}

/// A JSON number: integral values print without ".0" (as JavaScript prints them); None → null.
pub fn jnum(x: Option<f64>) -> Value {
    match x {
        Some(v) if v.is_finite() => {
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Value::from(v as i64)
            } else {
                Value::from(v)
            }
        }
        _ => Value::Null,
    }
}

pub fn jint(x: Option<u64>) -> Value {
    x.map(Value::from).unwrap_or(Value::Null)
}

/// load.mjs's percentile on sorted microsecond samples, reported in ms (3 decimals):
/// a[min(len-1, max(0, ceil(q*len)-1))].
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let len = sorted_us.len();
    let idx = ((q * len as f64).ceil() as i64 - 1).clamp(0, len as i64 - 1) as usize;
    round3(sorted_us[idx] as f64 / 1000.0)
}
