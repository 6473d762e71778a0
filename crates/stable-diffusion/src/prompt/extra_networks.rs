//! AUTOMATIC1111's extra-network tags, `<kind:arg1:arg2...>` (`<lora:film:0.8>`): cut out of
//! the prompt text (replaced by nothing) and returned for the part that applies them.
//! A tag is `<`, one or more word characters, `:`, one or more characters other than `>`, `>`.

/// One extra-network tag.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraNetwork {
    /// The kind before the first colon (`lora`, `hypernet`, ...).
    pub kind: String,
    /// The arguments, split at `:` (for LoRA: name, text-encoder weight, UNet weight).
    pub args: Vec<String>,
}

impl ExtraNetwork {
    /// The first argument (the network's name).
    pub fn name(&self) -> &str {
        self.args.first().map(String::as_str).unwrap_or("")
    }

    /// Positional argument `index` as a number, or `default` when absent. A value that is not
    /// a number is an error naming the tag.
    pub fn number(&self, index: usize, default: f64) -> crate::Result<f64> {
        match self.args.get(index) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                crate::Error::invalid(
                    "extra network tag",
                    format!(
                        "<{}:{}>: argument {} `{v}` is not a number",
                        self.kind,
                        self.args.join(":"),
                        index + 1
                    ),
                )
            }),
        }
    }
}

/// Removes every extra-network tag from `prompt`, returning the remaining text and the tags
/// in the order they appear.
pub fn extract_extra_networks(prompt: &str) -> (String, Vec<ExtraNetwork>) {
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        match parse_tag(after) {
            Some((len, tag)) => {
                text.push_str(&rest[..open]);
                tags.push(tag);
                rest = &after[len..];
            }
            None => {
                text.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    (text, tags)
}

/// `kind:args>` at the start of `text` (after the `<`): its length and the tag.
fn parse_tag(text: &str) -> Option<(usize, ExtraNetwork)> {
    let kind_len = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    if kind_len == 0 || !text[kind_len..].starts_with(':') {
        return None;
    }
    let body = &text[kind_len + 1..];
    let close = body.find('>')?;
    if close == 0 {
        return None;
    }
    let tag = ExtraNetwork {
        kind: text[..kind_len].to_string(),
        args: body[..close].split(':').map(str::to_string).collect(),
    };
    Some((kind_len + 1 + close + 1, tag))
}
