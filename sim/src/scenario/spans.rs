//! Where a value of a scenario file is written.
//!
//! ron 0.8 gives no positions for deserialized values, so a semantic error
//! (a device declared twice, a name that is not declared) is placed by a
//! second, small parse of the same text into a tree of positioned values,
//! and a path (field names and list indices, as the checker walked the
//! model) picks the offending value in it. Comments and strings are tokens
//! of this parse, so a name in a comment is never taken for its use.
//! The tree is only built when there is an error to place.

/// One step of a path into the file: a field, or the n-th element of a
/// list or tuple (also the n-th value of an enum variant's tuple).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Field(&'static str),
    Index(usize),
}

/// A path from the top of the file to a value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct At(Vec<Seg>);

impl At {
    pub fn field(&self, name: &'static str) -> At {
        let mut segs = self.0.clone();
        segs.push(Seg::Field(name));
        At(segs)
    }

    pub fn index(&self, index: usize) -> At {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        At(segs)
    }
}

/// A value and the byte offset where it starts. A value is a leaf
/// (number, string, unit variant), or has fields `name: value` or items.
#[derive(Debug, Default)]
struct Node {
    offset: usize,
    name: Option<String>,
    fields: Vec<(String, Node)>,
    items: Vec<Node>,
}

/// The byte offset of the value at `at`; if the path leads nowhere (the
/// value was left out and took its default), the deepest value it reached.
pub fn offset_of(text: &str, at: &At) -> usize {
    let mut parser = Parser {
        text,
        pos: 0,
        depth: 0,
    };
    let root = parser.document();
    let mut node = &root;
    for seg in &at.0 {
        match step(node, seg) {
            Some(next) => node = next,
            None => break,
        }
    }
    node.offset
}

fn step<'n>(node: &'n Node, seg: &Seg) -> Option<&'n Node> {
    let direct = match seg {
        Seg::Field(name) => node.fields.iter().find(|(f, _)| f == name).map(|(_, v)| v),
        Seg::Index(i) => node.items.get(*i),
    };
    // `Some(x)` may be written for an optional value, or just `x`.
    let is_some = node.name.as_deref() == Some("Some") && node.items.len() == 1;
    match direct {
        Some(next) if !is_some => Some(next),
        _ if is_some => step(&node.items[0], seg),
        other => other,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The byte offset of a ron position (1-based line, column in bytes).
pub fn offset_of_ron(text: &str, line: usize, col: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return text.len(),
        }
    }
    // ron 0.12 counts columns in characters, not bytes.
    let rest = &text[start..];
    let within = rest
        .char_indices()
        .nth(col.saturating_sub(1))
        .map_or(rest.len(), |(i, _)| i);
    floor_char_boundary(text, start + within)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// A forgiving RON reader: it only runs on text ron accepted (or to place
/// an error in text it rejected), so it never fails, it just stops.
struct Parser<'t> {
    text: &'t str,
    pos: usize,
    /// Open groups: deeper than ron's own limit, the text is not walked.
    depth: usize,
}

/// ron refuses nesting deeper than 128; beyond this the tree stops.
const MAX_DEPTH: usize = 256;

impl<'t> Parser<'t> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn document(&mut self) -> Node {
        self.skip_trivia();
        // `#![enable(...)]` attributes come before the value.
        while self.rest().starts_with("#!") {
            self.pos += 2;
            self.skip_trivia();
            self.value();
            self.skip_trivia();
        }
        self.value()
    }

    /// Whitespace and comments (block comments nest, as in ron).
    fn skip_trivia(&mut self) {
        loop {
            let rest = self.rest();
            if rest.starts_with("//") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if rest.starts_with("/*") {
                self.block_comment();
            } else if self.peek().is_some_and(char::is_whitespace) {
                self.bump();
            } else {
                return;
            }
        }
    }

    fn block_comment(&mut self) {
        let mut depth = 0usize;
        while !self.rest().is_empty() {
            if self.rest().starts_with("/*") {
                depth += 1;
                self.pos += 2;
            } else if self.rest().starts_with("*/") {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    fn value(&mut self) -> Node {
        self.skip_trivia();
        let offset = self.pos;
        let mut node = Node {
            offset,
            ..Node::default()
        };
        match self.peek() {
            Some('(') => self.group(&mut node, ')'),
            Some('[') => self.group(&mut node, ']'),
            Some('{') => self.group(&mut node, '}'),
            Some('"') => self.string(),
            Some('\'') => self.char_literal(),
            Some('r') if self.raw_string_ahead() => self.raw_string(),
            Some(_) => {
                let word = self.word();
                if word.is_empty() {
                    self.bump();
                    return node;
                }
                self.skip_trivia();
                if self.peek() == Some('(') {
                    node.name = Some(word.to_string());
                    self.group(&mut node, ')');
                }
            }
            None => {}
        }
        node
    }

    /// An identifier, number or keyword.
    fn word(&mut self) -> &'t str {
        let start = self.pos;
        let text = self.text;
        let rest = &text[start..];
        let len = rest
            .find(|c: char| !(c.is_alphanumeric() || "_.+-#".contains(c)))
            .unwrap_or(rest.len());
        self.pos += len;
        &text[start..self.pos]
    }

    /// `( ... )`, `[ ... ]` or `{ ... }`: `name: value` pairs or values.
    fn group(&mut self, node: &mut Node, close: char) {
        if self.depth >= MAX_DEPTH {
            self.pos = self.text.len();
            return;
        }
        self.depth += 1;
        self.members(node, close);
        self.depth -= 1;
    }

    fn members(&mut self, node: &mut Node, close: char) {
        self.bump();
        loop {
            self.skip_trivia();
            match self.peek() {
                None => return,
                Some(c) if c == close => {
                    self.bump();
                    return;
                }
                Some(',') => self.bump(),
                Some(_) => self.member(node),
            }
        }
    }

    fn member(&mut self, node: &mut Node) {
        let before = self.pos;
        let field = self.field_name();
        match field {
            Some(name) => {
                let value = self.value();
                node.fields.push((name, value));
            }
            None => {
                self.pos = before;
                let value = self.value();
                node.items.push(value);
                self.skip_trivia();
                // A map entry `key: value`: both are items.
                if self.peek() == Some(':') {
                    self.bump();
                    let value = self.value();
                    node.items.push(value);
                }
            }
        }
        if self.pos == before {
            self.bump();
        }
    }

    /// `name:` (not `name(`), consumed with its colon.
    fn field_name(&mut self) -> Option<String> {
        let word = self.word().trim_start_matches("r#").to_string();
        let starts_like_name = word
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_');
        self.skip_trivia();
        if starts_like_name && self.peek() == Some(':') {
            self.bump();
            return Some(word);
        }
        None
    }

    fn string(&mut self) {
        self.bump();
        while let Some(c) = self.peek() {
            self.bump();
            match c {
                '\\' => self.bump(),
                '"' => return,
                _ => {}
            }
        }
    }

    fn char_literal(&mut self) {
        self.bump();
        while let Some(c) = self.peek() {
            self.bump();
            match c {
                '\\' => self.bump(),
                '\'' => return,
                _ => {}
            }
        }
    }

    fn raw_string_ahead(&self) -> bool {
        self.rest()[1..].trim_start_matches('#').starts_with('"')
    }

    /// `r"..."` or `r#"..."#` (any number of `#`).
    fn raw_string(&mut self) {
        self.bump();
        let hashes = self.rest().len() - self.rest().trim_start_matches('#').len();
        self.pos += hashes + 1;
        let end = format!("\"{}", "#".repeat(hashes));
        match self.rest().find(&end) {
            Some(i) => self.pos += i + end.len(),
            None => self.pos = self.text.len(),
        }
    }
}

/// The line holding `offset`, numbered `line`, with carets under the token
/// that starts there (a name, number, or quoted string; one character
/// otherwise), laid out like a compiler's diagnostic.
pub fn snippet(text: &str, offset: usize, line: usize) -> String {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let source = text[start..end].trim_end_matches('\r');
    let number = line.to_string();
    let gutter = " ".repeat(number.len());
    // Tabs stay tabs so the caret lines up under them in any terminal.
    let pad: String = source[..(offset - start).min(source.len())]
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let width = token_width(&text[offset..end]).max(1);
    format!(
        "{gutter} |\n{number} | {source}\n{gutter} | {pad}{}",
        "^".repeat(width)
    )
}

/// Characters in the token at the start of `rest`.
fn token_width(rest: &str) -> usize {
    let mut chars = rest.chars();
    match chars.next() {
        None => 0,
        Some('"') => {
            let mut n = 1;
            let mut escaped = false;
            for c in chars {
                n += 1;
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => return n,
                    _ => escaped = false,
                }
            }
            n
        }
        Some(c) if c.is_alphanumeric() || c == '_' || c == '#' || c == '-' => {
            1 + chars
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .count()
        }
        Some(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(text: &str, at: &At) -> (usize, usize) {
        line_col(text, offset_of(text, at))
    }

    #[test]
    fn paths_reach_fields_items_and_variants() {
        let text = "// \"b\" in a comment\nScenario(\n  devices: [(name: \"a\"), (name: /* \"b\" */ \"b\")],\n  steps: [Workload((target: Image(\"s\", \"b\"))), Stretch(limit: Some(3))],\n)";
        let devices = At::default().field("devices");
        assert_eq!(place(text, &devices.index(1).field("name")), (3, 43));
        let steps = At::default().field("steps");
        let target = steps.index(0).index(0).field("target");
        assert_eq!(place(text, &target.index(1)), (4, 40));
        assert_eq!(place(text, &steps.index(1).field("limit")), (4, 63));
    }

    #[test]
    fn a_missing_value_gives_the_deepest_one_found() {
        let text = "S(steps: [A(x: 1)])";
        let at = At::default().field("steps").index(0).field("y");
        assert_eq!(place(text, &at), (1, 11));
    }

    #[test]
    fn strings_and_raw_strings_hide_their_contents() {
        let text = "S(a: \"x: (\\\"\", b: r#\"y: [\"#, c: 'x', d: 7)";
        assert_eq!(place(text, &At::default().field("d")), (1, 41));
    }

    #[test]
    fn broken_text_never_panics() {
        for text in ["", "(", "S(a: \"", "r#\"", "/* /*", "S(a:", "é(", "[1, 2"] {
            let _ = offset_of(text, &At::default().field("a").index(3));
        }
        let deep = "[".repeat(100_000);
        assert_eq!(offset_of(&deep, &At::default().index(0).index(0)), 2);
    }
}
