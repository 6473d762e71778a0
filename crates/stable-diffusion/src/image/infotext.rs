//! AUTOMATIC1111's infotext: the `parameters` text that A1111 stores in its PNGs and shows under
//! each picture.
//!
//! The format (A1111's `create_infotext` and `parse_generation_parameters`):
//!
//! ```text
//! a prompt, possibly
//! over several lines
//! Negative prompt: the negative prompt (line omitted when empty)
//! Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model: name
//! ```
//!
//! Parameters are `key: value` pairs joined by `", "`; a value holding `,`, `:` or a line break
//! is written as a JSON string (double quotes, JSON escapes, non-ASCII kept as is). A parameter
//! whose value equals its key is written as the bare key. The whole text is stripped of leading
//! and trailing whitespace. When parsing, the last line holds the parameters only if at least
//! three `key: value` pairs match in it; otherwise it belongs to the prompt.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

/// The prefix of the negative-prompt line.
const NEGATIVE_PREFIX: &str = "Negative prompt:";

/// A1111's parameter pattern: a key of word characters, spaces, `-` and `/`, a colon, and a
/// JSON-quoted value or anything up to the next comma.
fn param_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
            .expect("the parameter pattern compiles")
    })
}

/// The generation parameters of one image, as A1111 writes them in its infotext.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoText {
    /// The prompt (may span several lines).
    pub prompt: String,
    /// The negative prompt (may span several lines; empty when none).
    pub negative_prompt: String,
    /// The parameters, in order, as (key, value) text; values unquoted.
    pub params: Vec<(String, String)>,
}

impl InfoText {
    /// An infotext with a prompt and a negative prompt and no parameters yet.
    pub fn new(prompt: impl Into<String>, negative_prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: negative_prompt.into(),
            params: Vec::new(),
        }
    }

    /// Appends a parameter (kept in insertion order) and returns `self` for chaining.
    pub fn with(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.push(key, value);
        self
    }

    /// Appends a parameter (kept in insertion order).
    pub fn push(&mut self, key: impl Into<String>, value: impl ToString) {
        self.params.push((key.into(), value.to_string()));
    }

    /// The value of the first parameter named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The parameters line: `key: value` pairs joined by `", "`, values quoted where needed.
    pub fn params_line(&self) -> String {
        self.params
            .iter()
            .map(|(key, value)| {
                if key == value {
                    key.clone()
                } else {
                    format!("{key}: {}", quote(value))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses an infotext as A1111's `parse_generation_parameters` does. Parameter values come
    /// back unquoted; A1111's UI-only additions (defaults for missing keys, `Size-1`/`Size-2`
    /// splitting) are left out. Pairs with an empty value are skipped, as A1111 skips them.
    pub fn parse(text: &str) -> Self {
        let stripped = python_strip(text);
        let mut lines: Vec<&str> = stripped.split('\n').collect();
        let mut last_line = lines.pop().unwrap_or("");
        if param_pattern().captures_iter(last_line).count() < 3 {
            lines.push(last_line);
            last_line = "";
        }

        let mut prompt = String::new();
        let mut negative_prompt = String::new();
        let mut in_negative = false;
        for line in lines {
            let mut line = python_strip(line);
            if let Some(rest) = line.strip_prefix(NEGATIVE_PREFIX) {
                in_negative = true;
                line = python_strip(rest);
            }
            let target = if in_negative {
                &mut negative_prompt
            } else {
                &mut prompt
            };
            if !target.is_empty() {
                target.push('\n');
            }
            target.push_str(line);
        }

        let params = param_pattern()
            .captures_iter(last_line)
            .filter_map(|caps| {
                let key = caps[1].to_string();
                let value = &caps[2];
                // A1111 indexes value[0], which fails (and skips the pair) on an empty value.
                if value.is_empty() {
                    return None;
                }
                Some((key, unquote(value)))
            })
            .collect();

        Self {
            prompt,
            negative_prompt,
            params,
        }
    }
}

impl fmt::Display for InfoText {
    /// Formats exactly as A1111's `create_infotext`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let negative = if self.negative_prompt.is_empty() {
            String::new()
        } else {
            format!("\n{NEGATIVE_PREFIX} {}", self.negative_prompt)
        };
        let text = format!("{}{negative}\n{}", self.prompt, self.params_line());
        f.write_str(python_strip(&text))
    }
}

impl std::str::FromStr for InfoText {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(text))
    }
}

/// Whitespace as Python's `str.strip()` sees it (Unicode whitespace plus the ASCII separators
/// U+001C..U+001F).
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn python_strip(text: &str) -> &str {
    text.trim_matches(is_python_whitespace)
}

/// A1111's `quote`: a value holding `,`, `:` or a line feed becomes a JSON string literal (as
/// Python's `json.dumps(value, ensure_ascii=False)`); any other value is left as it is.
pub fn quote(value: &str) -> Cow<'_, str> {
    if !value.contains([',', '\n', ':']) {
        return Cow::Borrowed(value);
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            '\u{08}' => quoted.push_str("\\b"),
            '\u{0c}' => quoted.push_str("\\f"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    Cow::Owned(quoted)
}

/// A1111's `unquote`: a value in double quotes is decoded as a JSON string; if that fails, or the
/// value is not quoted, it is returned unchanged.
pub fn unquote(value: &str) -> String {
    if value.len() < 2 || !value.starts_with('"') || !value.ends_with('"') {
        return value.to_string();
    }
    serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_string())
}

/// Formats a number as A1111's infotext shows it: integral values without a fraction
/// (`7.0` → `7`), others as Python's `repr` (`7.5` → `7.5`, `0.0001` → `0.0001`,
/// `1e-05` → `1e-05`).
pub fn format_float(value: f64) -> String {
    if !value.is_finite() {
        return if value.is_nan() {
            "nan".to_string()
        } else if value > 0.0 {
            "inf".to_string()
        } else {
            "-inf".to_string()
        };
    }
    if value == value.trunc() && value.abs() < 1e16 {
        return format!("{}", value as i64);
    }
    python_repr(value)
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents in
/// [-4, 16), scientific (`1.5e-05`, `1e+16`) otherwise.
fn python_repr(value: f64) -> String {
    // Rust's `{:e}` gives the shortest round-trip digits as `d.ddde±x`.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` output has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    if (-4..16).contains(&exponent) {
        let positional = format!("{value}");
        if positional.contains('.') {
            positional
        } else {
            format!("{positional}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}
