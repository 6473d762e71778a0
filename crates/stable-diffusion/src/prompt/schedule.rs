//! AUTOMATIC1111's prompt editing and alternation: which text the model sees at each step.
//!
//! ```text
//! [from:to:when]   `from` up to step `when`, `to` after it
//! [to:when]        nothing, then `to`            [from::when]   `from`, then nothing
//! [a|b|c]          a, b, c, a, b, ... one per model evaluation
//! ```
//!
//! `when` with a decimal point is a fraction of the steps (`0.25`), without one a step number
//! (`5`). A prompt becomes a schedule: a list of (last step, text) in step order, each text
//! then read by the attention parser as usual. The rules, as A1111's
//! `get_learned_conditioning_prompt_schedules` applies them:
//!
//! - `when` → `w = int((when − f)·steps)` for a fraction, `int(when − i)` for an integer, then
//!   `min(steps, w)`; `f = i = 0` in a normal run, while in a hires fix's second pass
//!   `f = 1` and `i` = the first pass's steps (so `1.5` is half way through the second pass
//!   and `25` after a 20-step first pass is its step 5). A `w` of 1 or more is a boundary.
//! - any alternation makes every step 1..=steps a boundary; the schedule's last entry ends at
//!   `steps`.
//! - at boundary `t` an edit shows `from` while `t <= w`, `to` after; an alternation shows
//!   option `(t − 1) mod n`.
//! - step counter `c` (0-based, one per model evaluation) uses the first entry whose last step
//!   is `>= c` (and the first entry when none is, as A1111 does).
//!
//! Brackets and colons that form no edit or alternation stay in the text as written (they are
//! the attention parser's business). A `|` outside any alternation, or a backslash at the very
//! end, makes A1111's grammar reject the whole prompt: it is then used as written at every step.

use std::collections::HashSet;

use crate::{Error, Result};

/// How deep brackets may nest in a prompt read for its schedule (A1111 prompts nest a few
/// levels; deeper nesting is refused rather than read with unbounded recursion).
pub const MAX_PROMPT_NESTING: usize = 100;

/// The steps a schedule is computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleSteps {
    /// A normal run (or a hires fix's first pass) of this many steps.
    Single(usize),
    /// A hires fix's second pass of `steps` steps after a first pass of `first_pass` steps.
    Hires {
        /// Steps of the first pass.
        first_pass: usize,
        /// Steps of the second pass (before the strength truncation).
        steps: usize,
    },
}

/// One entry of a prompt schedule: `text` is used up to and including step `end_at_step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledText {
    /// The last step (1-based, as A1111 counts boundaries) this text is used for.
    pub end_at_step: usize,
    /// The prompt text at these steps.
    pub text: String,
}

/// A piece of a parsed prompt.
#[derive(Debug, Clone)]
enum Node {
    /// Text kept as written (plain runs, whitespace, brackets that are emphasis or stray).
    Text(String),
    /// `[before:after:when]`; `before` is `None` in `[after:when]`.
    Edit {
        before: Option<Vec<Node>>,
        after: Vec<Node>,
        when: String,
    },
    /// `[a|b|...]`.
    Alternate(Vec<Vec<Node>>),
}

/// A1111's schedule of `prompt` for `steps` (see the module documentation). Brackets nested
/// more than [`MAX_PROMPT_NESTING`] deep are an error.
pub fn prompt_schedule(prompt: &str, steps: ScheduleSteps) -> Result<Vec<ScheduledText>> {
    let (total, int_offset, frac_offset) = match steps {
        ScheduleSteps::Single(steps) => (steps, 0.0, 0.0),
        ScheduleSteps::Hires { first_pass, steps } => (steps, first_pass as f64, 1.0),
    };
    let mut parser = Parser::new(prompt);
    let parsed = parser.top();
    if parser.too_deep {
        return Err(Error::invalid(
            "prompt",
            format!("brackets nest more than {MAX_PROMPT_NESTING} levels deep"),
        ));
    }
    let Some(nodes) = parsed else {
        return Ok(vec![ScheduledText {
            end_at_step: total,
            text: prompt.to_string(),
        }]);
    };
    let resolve = |when: &str| -> i64 {
        let value: f64 = when.parse().unwrap_or(0.0);
        let at = if when.contains('.') {
            (value - frac_offset) * total as f64
        } else {
            value - int_offset
        };
        // Python's int() truncates toward zero; min(steps, ·) after.
        at.trunc().min(total as f64) as i64
    };
    let mut boundaries = vec![total];
    if collect_boundaries(&nodes, &resolve, &mut boundaries) {
        boundaries.extend(1..=total);
    }
    boundaries.sort_unstable();
    boundaries.dedup();
    Ok(boundaries
        .into_iter()
        .map(|step| {
            let mut text = String::new();
            render(&nodes, step, &resolve, &mut text);
            ScheduledText {
                end_at_step: step,
                text,
            }
        })
        .collect())
}

/// The entry of `schedule` that step counter `counter` (0-based, one per model evaluation)
/// uses: the first whose last step is `>= counter`, else the first (A1111's fallback).
pub fn schedule_index(schedule: &[ScheduledText], counter: usize) -> usize {
    schedule
        .iter()
        .position(|entry| counter <= entry.end_at_step)
        .unwrap_or(0)
}

/// Pushes the steps at which an edit in `nodes` switches; returns whether `nodes` hold an
/// alternation (which makes every step a boundary).
fn collect_boundaries(nodes: &[Node], resolve: &dyn Fn(&str) -> i64, out: &mut Vec<usize>) -> bool {
    let mut alternates = false;
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Edit {
                before,
                after,
                when,
            } => {
                let at = resolve(when);
                if at >= 1 {
                    out.push(at as usize);
                }
                if let Some(before) = before {
                    alternates |= collect_boundaries(before, resolve, out);
                }
                alternates |= collect_boundaries(after, resolve, out);
            }
            Node::Alternate(options) => {
                alternates = true;
                for option in options {
                    collect_boundaries(option, resolve, out);
                }
            }
        }
    }
    alternates
}

fn render(nodes: &[Node], step: usize, resolve: &dyn Fn(&str) -> i64, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Edit {
                before,
                after,
                when,
            } => {
                if step as i64 <= resolve(when) {
                    if let Some(before) = before {
                        render(before, step, resolve, out);
                    }
                } else {
                    render(after, step, resolve, out);
                }
            }
            Node::Alternate(options) => {
                let option = &options[(step.max(1) - 1) % options.len()];
                render(option, step, resolve, out);
            }
        }
    }
}

/// A recursive-descent reading of A1111's schedule grammar. At the top level a bracket that
/// opens no valid construct is a plain character; inside a construct it makes the construct
/// invalid. Nesting is bounded by [`MAX_PROMPT_NESTING`]; a construct that failed at a
/// position fails there again, so each is tried once (no quadratic re-reading at the top).
struct Parser {
    chars: Vec<char>,
    pos: usize,
    /// Brackets open around the cursor.
    depth: usize,
    /// Set when the nesting went past the limit (the whole parse is then refused).
    too_deep: bool,
    /// Positions where a `[...]` or `(...)` construct was read and failed.
    failed: HashSet<usize>,
}

impl Parser {
    fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
            pos: 0,
            depth: 0,
            too_deep: false,
            failed: HashSet::new(),
        }
    }

    /// Runs `read` (a bracket construct starting at the cursor) within the nesting limit,
    /// remembering where it failed.
    fn nested(&mut self, read: fn(&mut Self) -> Option<Vec<Node>>) -> Option<Vec<Node>> {
        let start = self.pos;
        if self.too_deep || self.failed.contains(&start) {
            return None;
        }
        if self.depth >= MAX_PROMPT_NESTING {
            self.too_deep = true;
            return None;
        }
        self.depth += 1;
        let found = read(self);
        self.depth -= 1;
        if found.is_none() {
            self.failed.insert(start);
        }
        found
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// The whole prompt, or `None` when the grammar rejects it.
    fn top(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '[' | '(' => {
                    let start = self.pos;
                    let construct = if c == '[' {
                        self.nested(Self::bracket)
                    } else {
                        self.nested(Self::paren)
                    };
                    match construct {
                        Some(found) => nodes.extend(found),
                        None if self.too_deep => return None,
                        None => {
                            self.pos = start + 1;
                            nodes.push(Node::Text(c.to_string()));
                        }
                    }
                }
                ']' | ')' | ':' => {
                    self.pos += 1;
                    nodes.push(Node::Text(c.to_string()));
                }
                '|' => return None,
                _ => nodes.push(self.plain()?),
            }
        }
        Some(nodes)
    }

    /// A sequence inside a construct, up to (not including) `: | ] )` or the end.
    fn sequence(&mut self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                '[' => nodes.extend(self.nested(Self::bracket)?),
                '(' => nodes.extend(self.nested(Self::paren)?),
                ':' | '|' | ']' | ')' => break,
                _ => nodes.push(self.plain()?),
            }
        }
        Some(nodes)
    }

    /// Characters other than `\ [ ] ( ) : |`, and backslash escapes (kept as written).
    fn plain(&mut self) -> Option<Node> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            match c {
                '\\' => {
                    self.chars.get(self.pos + 1)?;
                    self.pos += 2;
                }
                '[' | ']' | '(' | ')' | ':' | '|' => break,
                _ => self.pos += 1,
            }
        }
        Some(Node::Text(self.chars[start..self.pos].iter().collect()))
    }

    /// `[...]` at the cursor: emphasis, an edit or an alternation.
    fn bracket(&mut self) -> Option<Vec<Node>> {
        self.pos += 1;
        let first = self.sequence()?;
        match self.peek()? {
            ']' => {
                self.pos += 1;
                Some(wrap("[", first, "]"))
            }
            '|' => {
                let mut options = vec![first];
                while self.peek() == Some('|') {
                    self.pos += 1;
                    options.push(self.sequence()?);
                }
                if self.peek()? != ']' {
                    return None;
                }
                self.pos += 1;
                Some(vec![Node::Alternate(options)])
            }
            ':' => {
                self.pos += 1;
                if let Some(when) = self.when_and_close() {
                    return Some(vec![Node::Edit {
                        before: None,
                        after: first,
                        when,
                    }]);
                }
                let second = self.sequence()?;
                if self.peek()? != ':' {
                    return None;
                }
                self.pos += 1;
                let when = self.when_and_close()?;
                Some(vec![Node::Edit {
                    before: Some(first),
                    after: second,
                    when,
                }])
            }
            _ => None,
        }
    }

    /// `(...)` or `(...:...)` at the cursor: emphasis, kept as written.
    fn paren(&mut self) -> Option<Vec<Node>> {
        self.pos += 1;
        let first = self.sequence()?;
        match self.peek()? {
            ')' => {
                self.pos += 1;
                Some(wrap("(", first, ")"))
            }
            ':' => {
                self.pos += 1;
                let second = self.sequence()?;
                if self.peek()? != ')' {
                    return None;
                }
                self.pos += 1;
                let mut nodes = wrap("(", first, ":");
                nodes.extend(second);
                nodes.push(Node::Text(")".into()));
                Some(nodes)
            }
            _ => None,
        }
    }

    /// Whitespace, a signed number, whitespace, `]`: the number's text, the cursor after the
    /// `]`. Leaves the cursor alone when there is none.
    fn when_and_close(&mut self) -> Option<String> {
        let mut at = self.pos;
        let skip_space = |at: &mut usize| {
            while self.chars.get(*at).is_some_and(|c| c.is_whitespace()) {
                *at += 1;
            }
        };
        skip_space(&mut at);
        let len = number_len(&self.chars[at..])?;
        let number: String = self.chars[at..at + len].iter().collect();
        at += len;
        skip_space(&mut at);
        if self.chars.get(at) != Some(&']') {
            return None;
        }
        self.pos = at + 1;
        Some(number)
    }
}

/// `open`, the nodes, `close`.
fn wrap(open: &str, inner: Vec<Node>, close: &str) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(inner.len() + 2);
    nodes.push(Node::Text(open.into()));
    nodes.extend(inner);
    nodes.push(Node::Text(close.into()));
    nodes
}

/// The length of lark's `SIGNED_NUMBER` at the start of `chars` (the longest match):
/// `[+-]? (INT | INT "." INT? | "." INT) (("e"|"E") [+-]? INT)?`.
fn number_len(chars: &[char]) -> Option<usize> {
    let digits = |from: usize| {
        chars[from..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut at = usize::from(matches!(chars.first(), Some('+' | '-')));
    let whole = digits(at);
    at += whole;
    let mut fraction = 0;
    if chars.get(at) == Some(&'.') {
        fraction = digits(at + 1);
        if whole > 0 || fraction > 0 {
            at += 1 + fraction;
        }
    }
    if whole == 0 && fraction == 0 {
        return None;
    }
    if matches!(chars.get(at), Some('e' | 'E')) {
        let sign = usize::from(matches!(chars.get(at + 1), Some('+' | '-')));
        let exponent = digits(at + 1 + sign);
        if exponent > 0 {
            at += 1 + sign + exponent;
        }
    }
    Some(at)
}
