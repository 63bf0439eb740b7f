//! Path canonicalization at Istio's levels (`meshConfig.pathNormalization`).
//!
//! Every level first validates: origin-form (starts with `/`), printable ASCII only, no `?` or `#`,
//! every `%` followed by two hex digits, no `%00`, and no encoded slash or backslash (`%2F`, `%5C`,
//! any case) — refused rather than kept encoded as Istio's BASE does, because a backend that decodes
//! them would see a path policy never judged. Then, from BASE up:
//!
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, the hex of every
//!    other encoding upper-cased (RFC 3986 §6.2.2.1–2), a raw backslash becomes `/`;
//! 2. dot segments are removed (RFC 3986 §5.2.4): `/a/./b/../c` → `/a/c`;
//! 3. MERGE_SLASHES and above: runs of `/` become one.
//!
//! DECODE_AND_MERGE_SLASHES decodes `%2F`/`%5C` to `/` before step 2 instead of refusing them.
//! Steps run in this order, as in Envoy, and the result is a fixed point of every step.

/// How far paths are normalized (Istio's `meshConfig.pathNormalization`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Normalization {
    /// Validation only: the raw path is judged and forwarded (unsafe with path rules).
    None,
    /// RFC 3986: unreserved characters decoded, dot segments removed, backslash to slash.
    Base,
    /// BASE, and `//` merged into `/` (nginx and most frameworks merge them).
    #[default]
    MergeSlashes,
    /// MERGE_SLASHES, with `%2F` and `%5C` decoded to `/` instead of refused.
    DecodeAndMergeSlashes,
}

/// Why a path cannot be judged.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// It does not start with `/` (not origin-form).
    #[error("not an absolute path")]
    NotOriginForm,
    /// A control character, space, NUL or non-ASCII byte.
    #[error("invalid character")]
    InvalidChar,
    /// `?` or `#` inside the path (the query is split off before; fragments are never sent).
    #[error("query or fragment delimiter inside the path")]
    Delimiter,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    InvalidPercent,
    /// `%00`, which Istio always refuses.
    #[error("encoded NUL")]
    EncodedNul,
    /// `%2F` or `%5C`, refused below DECODE_AND_MERGE_SLASHES.
    #[error("encoded slash or backslash")]
    EncodedSlash,
}

/// The canonical form of `raw` (a path without query) at `level`.
pub fn canonicalize(raw: &[u8], level: Normalization) -> Result<String, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode(raw, level)?;
    if level == Normalization::None {
        return Ok(decoded);
    }
    let without_dots = remove_dot_segments(&decoded);
    Ok(if level == Normalization::Base {
        without_dots
    } else {
        merge_slashes(&without_dots)
    })
}

/// Validates every byte and percent-encoding; from BASE up also decodes unreserved characters,
/// upper-cases the hex of the rest and turns backslashes into slashes.
fn decode(raw: &[u8], level: Normalization) -> Result<String, PathError> {
    let rewrite = level != Normalization::None;
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i += 1;
        match b {
            b'%' => {
                let (hi, lo) = match (raw.get(i).and_then(hex), raw.get(i + 1).and_then(hex)) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::InvalidPercent),
                };
                i += 2;
                let byte = (hi << 4) | lo;
                match byte {
                    0 => return Err(PathError::EncodedNul),
                    b'/' | b'\\' if level == Normalization::DecodeAndMergeSlashes => out.push('/'),
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    _ if rewrite && is_unreserved(byte) => out.push(char::from(byte)),
                    _ if rewrite => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(hi)]));
                        out.push(char::from(HEX[usize::from(lo)]));
                    }
                    _ => out.push_str(std::str::from_utf8(&raw[i - 3..i]).unwrap_or_default()),
                }
            }
            b'?' | b'#' => return Err(PathError::Delimiter),
            b'\\' if rewrite => out.push('/'),
            _ if b.is_ascii_graphic() => out.push(char::from(b)),
            _ => return Err(PathError::InvalidChar),
        }
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: &u8) -> Option<u8> {
    char::from(*b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 on a path that starts with `/`: `.` segments vanish, `..` removes the segment
/// before it (never climbing above the root); a final `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => {
                out.push(s);
                continue;
            }
        }
        if i == last {
            out.push("");
        }
    }
    format!("/{}", out.join("/"))
}

/// Runs of `/` become one.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}
