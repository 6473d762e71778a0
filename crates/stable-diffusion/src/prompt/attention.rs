//! AUTOMATIC1111's attention syntax: `(text)` multiplies the weight of what it encloses by
//! 1.1, `[text]` divides it by 1.1, `(text:1.3)` multiplies it by 1.3; brackets nest, and
//! brackets left open at the end apply to the rest of the text. `\(`, `\)`, `\[`, `\]` and `\\`
//! are the characters themselves; any other backslash is dropped. A closing bracket with no
//! opening one, and a `:number)` outside round brackets, are plain text. `BREAK` (a whole word,
//! upper case) ends the current token chunk.
//!
//! The scanner reads the text as A1111's tokens, trying in order at each position: an escape,
//! a lone backslash, `(`, `[`, `:` + number + `)` (spaces allowed around the number), `)`,
//! `]`, a run of other characters (no `\ ( ) [ ] :`), a lone `:`. Afterwards, neighbouring
//! pieces of exactly equal weight are merged.

/// One piece of a parsed prompt: text and the weight of its tokens. `BREAK` is the piece
/// (`"BREAK"`, -1), as in A1111; brackets around a `BREAK` scale that -1 too, and the piece
/// is then the word "BREAK" with that (negative) weight, as A1111 reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptPiece {
    /// The text.
    pub text: String,
    /// The weight of its tokens.
    pub weight: f64,
}

impl PromptPiece {
    fn new(text: impl Into<String>, weight: f64) -> Self {
        Self {
            text: text.into(),
            weight,
        }
    }

    fn brk() -> Self {
        Self::new("BREAK", -1.0)
    }

    /// Whether this piece starts a new chunk.
    pub fn is_break(&self) -> bool {
        self.weight == -1.0 && self.text == "BREAK"
    }
}

const ROUND_MULTIPLIER: f64 = 1.1;
const SQUARE_MULTIPLIER: f64 = 1.0 / 1.1;

/// Parses `text` into weighted pieces exactly as A1111's `parse_prompt_attention`.
/// An empty prompt gives one empty piece of weight 1.
pub fn parse_attention(text: &str) -> Vec<PromptPiece> {
    let mut pieces: Vec<PromptPiece> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |pieces: &mut Vec<PromptPiece>, from: usize, by: f64| {
        for piece in &mut pieces[from..] {
            piece.weight *= by;
        }
    };

    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let len = match c {
            '\\' => {
                let next = rest[1..].chars().next();
                match next {
                    Some(e @ ('(' | ')' | '[' | ']' | '\\')) => {
                        pieces.push(PromptPiece::new(e.to_string(), 1.0));
                        2
                    }
                    _ => {
                        // A lone backslash: A1111 keeps the text after it, which is nothing.
                        pieces.push(PromptPiece::new(String::new(), 1.0));
                        1
                    }
                }
            }
            '(' => {
                round.push(pieces.len());
                1
            }
            '[' => {
                square.push(pieces.len());
                1
            }
            ':' => match weight_close(rest) {
                Some((len, weight)) if !round.is_empty() => {
                    let from = round.pop().expect("checked non-empty");
                    multiply(&mut pieces, from, weight);
                    len
                }
                Some((len, _)) => {
                    push_text(&mut pieces, &rest[..len]);
                    len
                }
                None => {
                    push_text(&mut pieces, ":");
                    1
                }
            },
            ')' => {
                match round.pop() {
                    Some(from) => multiply(&mut pieces, from, ROUND_MULTIPLIER),
                    None => push_text(&mut pieces, ")"),
                }
                1
            }
            ']' => {
                match square.pop() {
                    Some(from) => multiply(&mut pieces, from, SQUARE_MULTIPLIER),
                    None => push_text(&mut pieces, "]"),
                }
                1
            }
            _ => {
                let len = rest
                    .find(['\\', '(', ')', '[', ']', ':'])
                    .unwrap_or(rest.len());
                push_text(&mut pieces, &rest[..len]);
                len
            }
        };
        rest = &rest[len..];
    }
    for from in round {
        multiply(&mut pieces, from, ROUND_MULTIPLIER);
    }
    for from in square {
        multiply(&mut pieces, from, SQUARE_MULTIPLIER);
    }
    if pieces.is_empty() {
        pieces.push(PromptPiece::new(String::new(), 1.0));
    }
    merge_equal_weights(pieces)
}

/// `:` + spaces + `[+-]?[.0-9]+` + spaces + `)` at the start of `text`: its length and the
/// number. A number that does not parse (`1.2.3`) is read as no match (A1111 fails there).
fn weight_close(text: &str) -> Option<(usize, f64)> {
    let body = &text[1..];
    let lead = body.len() - body.trim_start().len();
    let after_space = &body[lead..];
    let sign = usize::from(after_space.starts_with(['+', '-']));
    let digits = after_space[sign..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(after_space.len() - sign);
    if digits == 0 {
        return None;
    }
    let number = &after_space[..sign + digits];
    let tail = &after_space[sign + digits..];
    let trail = tail.len() - tail.trim_start().len();
    if !tail[trail..].starts_with(')') {
        return None;
    }
    let weight: f64 = number.parse().ok()?;
    Some((1 + lead + sign + digits + trail + 1, weight))
}

/// Appends a run of text, split at each `BREAK` (with the whitespace around it).
fn push_text(pieces: &mut Vec<PromptPiece>, text: &str) {
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK") {
        let at = search + found;
        let end = at + "BREAK".len();
        let before_ok = !text[..at].chars().next_back().is_some_and(is_word_char);
        let after_ok = !text[end..].chars().next().is_some_and(is_word_char);
        if !(before_ok && after_ok) {
            search = at + 1;
            continue;
        }
        let cut_start = start + text[start..at].trim_end().len();
        let cut_end = end + (text[end..].len() - text[end..].trim_start().len());
        pieces.push(PromptPiece::new(text[start..cut_start].to_string(), 1.0));
        pieces.push(PromptPiece::brk());
        start = cut_end;
        search = cut_end;
    }
    pieces.push(PromptPiece::new(text[start..].to_string(), 1.0));
}

/// Python's `\w`: letters, digits (Unicode) and `_`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Joins neighbouring pieces of exactly equal weight.
fn merge_equal_weights(pieces: Vec<PromptPiece>) -> Vec<PromptPiece> {
    let mut merged: Vec<PromptPiece> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match merged.last_mut() {
            Some(last) if last.weight == piece.weight => last.text.push_str(&piece.text),
            _ => merged.push(piece),
        }
    }
    merged
}
