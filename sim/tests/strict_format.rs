//! A misspelled name anywhere in a scenario is a load error at the name.
//!
//! The examples of scenarios/README.md (one for every step kind, and the
//! file example) are the material: every field name written in them is
//! misspelled in turn, an unknown field is slipped into every struct, and
//! every variant name is misspelled; each such file must make the binary
//! exit 2 with `FILE:LINE:COL` at the name. The kinds of `Step` and the
//! fields of every type come from the serde derive itself, so a step kind
//! added without a README example fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use blksnap_sim::scenario::model::{
    CbtExpect, DeviceSpec, ExpectedFailure, Faults, Step, Workload,
};
use blksnap_sim::scenario::{parse, Scenario};

mod common;
use common::{file_example, steps_example};

// ---------------------------------------------------------------------
// What serde knows: the name and the fields (or variants) of a type.

mod shape {
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    /// A struct's or an enum's name and its field or variant names.
    pub type Shape = (&'static str, &'static [&'static str]);

    #[derive(Debug)]
    pub struct Stop;

    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("shape recorded")
        }
    }

    impl std::error::Error for Stop {}

    impl de::Error for Stop {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Stop
        }
    }

    /// A deserializer that only records what the derived code asks for.
    #[derive(Default)]
    pub struct Recorder(pub Option<Shape>);

    impl<'de> Deserializer<'de> for &mut Recorder {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some((name, fields));
            Err(Stop)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some((name, variants));
            Err(Stop)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map identifier ignored_any
        }
    }

    pub fn of<T: de::DeserializeOwned>() -> Shape {
        let mut recorder = Recorder::default();
        let _ = T::deserialize(&mut recorder);
        recorder.0.expect("a struct or an enum")
    }
}

/// Every type with named fields a scenario file can hold.
fn structs() -> Vec<shape::Shape> {
    use blksnap_sim::device::Latency;
    vec![
        shape::of::<Scenario>(),
        shape::of::<DeviceSpec>(),
        shape::of::<Faults>(),
        shape::of::<ExpectedFailure>(),
        shape::of::<CbtExpect>(),
        shape::of::<Workload>(),
        shape::of::<Latency>(),
        shape::of::<blksnap_core::Params>(),
    ]
}

/// Every enum a scenario file can hold (Step's variants are its kinds).
fn enums() -> Vec<shape::Shape> {
    use blksnap_sim::scenario::model::*;
    vec![
        shape::of::<Step>(),
        shape::of::<Expect>(),
        shape::of::<EventExpect>(),
        shape::of::<ArgFault>(),
        shape::of::<RawArg>(),
        shape::of::<Target>(),
        shape::of::<Media>(),
        shape::of::<Scheduler>(),
        shape::of::<blksnap_sim::faults::AllocFault>(),
        shape::of::<blksnap_sim::device::Fill>(),
    ]
}

// ---------------------------------------------------------------------
// A tokenizer for the README examples.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    Literal,
}

/// Tokens with their byte offsets; comments and whitespace dropped.
fn tokens(text: &str) -> Vec<(usize, Tok)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        let start = i;
        if text[i..].starts_with("//") {
            i += text[i..].find('\n').unwrap_or(text.len() - i);
        } else if text[i..].starts_with("/*") {
            i += text[i..].find("*/").map_or(text.len() - i, |e| e + 2);
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push((start, Tok::Literal));
        } else if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || b"_-.".contains(&bytes[i]))
            {
                i += 1;
            }
            let word = &text[start..i];
            let tok = if c.is_ascii_alphabetic() || c == '_' {
                Tok::Ident(word.to_string())
            } else {
                Tok::Literal
            };
            out.push((start, tok));
        } else {
            i += c.len_utf8();
            out.push((start, Tok::Punct(c)));
        }
    }
    out
}

/// A misspelling of `name`: a letter dropped, or one doubled if short.
fn typo(name: &str) -> String {
    if name.len() >= 4 {
        let cut = name.len() - 2;
        format!("{}{}", &name[..cut], &name[cut + 1..])
    } else {
        format!("{name}{}", &name[name.len() - 1..])
    }
}

/// One broken copy of an example: the text, where the bad name is, what
/// the error must say, and which top-level step it is in (if any).
#[derive(Debug)]
struct Case {
    text: String,
    offset: usize,
    says: String,
    top_kind: Option<String>,
}

/// Every field name misspelled, an unknown field in every struct, and
/// every variant name misspelled, one at a time.
fn cases(text: &str, steps_start: Option<usize>) -> Vec<Case> {
    let toks = tokens(text);
    let tops = top_level_steps(&toks, steps_start);
    let top_kind = |offset: usize| {
        tops.iter()
            .rev()
            .find(|(start, _)| *start <= offset)
            .map(|(_, kind)| kind.clone())
    };
    let mut out = Vec::new();
    let mut push = |offset: usize, cut: usize, insert: String, says: String| {
        let text = format!("{}{}{}", &text[..offset], insert, &text[offset + cut..]);
        out.push(Case {
            text,
            offset,
            says,
            top_kind: top_kind(offset),
        });
    };
    for (i, (offset, tok)) in toks.iter().enumerate() {
        let next = toks.get(i + 1).map(|t| &t.1);
        let prev = i.checked_sub(1).map(|p| &toks[p].1);
        match tok {
            Tok::Ident(name) if next == Some(&Tok::Punct(':')) => {
                let bad = typo(name);
                push(
                    *offset,
                    name.len(),
                    bad.clone(),
                    format!("unknown field `{bad}`"),
                );
            }
            Tok::Ident(name) if i > 0 && name.starts_with(|c: char| c.is_ascii_uppercase()) => {
                let bad = typo(name);
                push(
                    *offset,
                    name.len(),
                    bad.clone(),
                    format!("unknown variant `{bad}`"),
                );
            }
            Tok::Punct('(') if opens_struct(&toks, i, prev) => {
                let at = offset + 1;
                push(at, 0, "expct: 1, ".into(), "unknown field `expct`".into());
            }
            _ => {}
        }
    }
    out
}

/// A `(` that opens a struct: fields follow, or nothing follows a name.
fn opens_struct(toks: &[(usize, Tok)], i: usize, prev: Option<&Tok>) -> bool {
    let next = toks.get(i + 1).map(|t| &t.1);
    let after = toks.get(i + 2).map(|t| &t.1);
    let field_follows = matches!(next, Some(Tok::Ident(_))) && after == Some(&Tok::Punct(':'));
    let empty_named = matches!(prev, Some(Tok::Ident(_))) && next == Some(&Tok::Punct(')'));
    field_follows || empty_named
}

/// (offset, kind) of each step written directly in the `steps` list that
/// starts at byte `steps_start`.
fn top_level_steps(toks: &[(usize, Tok)], steps_start: Option<usize>) -> Vec<(usize, String)> {
    let Some(start) = steps_start else {
        return Vec::new();
    };
    let mut depth = 0i32;
    let mut expect_step = true;
    let mut out = Vec::new();
    for (offset, tok) in toks.iter().filter(|(o, _)| *o >= start) {
        match tok {
            Tok::Punct('(' | '[') => depth += 1,
            Tok::Punct(')' | ']') => depth -= 1,
            Tok::Punct(',') if depth == 0 => expect_step = true,
            Tok::Ident(kind) if depth == 0 && expect_step => {
                out.push((*offset, kind.clone()));
                expect_step = false;
            }
            _ => {}
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

// ---------------------------------------------------------------------
// Running the binary on every case.

struct Outcome {
    case: Case,
    /// The `ERROR` line the binary printed for the file.
    line: String,
}

/// Write each case as its own file, run the binary once on the directory,
/// and pair each case with its ERROR line.
fn run_binary(tag: &str, cases: Vec<Case>) -> Vec<Outcome> {
    let dir = std::env::temp_dir().join(format!("blksnap-strict-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut paths: Vec<PathBuf> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let path = dir.join(format!("case-{i:04}.ron"));
        std::fs::write(&path, &case.text).expect("write");
        paths.push(path);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_blksnap-sim"))
        .arg("run")
        .arg(&dir)
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let closing = format!("0 passed, {} failed", cases.len());
    assert_eq!(stdout.lines().last(), Some(closing.as_str()), "{stdout}");
    let errors: BTreeMap<String, String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ERROR "))
        .filter_map(|l| Some((l.split(':').next()?.to_string(), l.to_string())))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    cases
        .into_iter()
        .zip(paths)
        .map(|(case, path)| {
            let key = path.display().to_string();
            let line = errors.get(&key).cloned().unwrap_or_else(|| {
                panic!("no ERROR for {key} (case at {}): {stdout}", case.offset)
            });
            Outcome { case, line }
        })
        .collect()
}

/// The error is at the name and says what it must; returns the type the
/// error names (`in \`Type\``).
fn judge(outcome: &Outcome) -> String {
    let case = &outcome.case;
    let (line, col) = line_col(&case.text, case.offset);
    let place = format!(".ron:{line}:{col}: {}", case.says);
    let context = &case.text[case.offset..(case.offset + 40).min(case.text.len())];
    assert!(
        outcome.line.contains(&place),
        "expected `{place}` for the case at {context:?}\ngot: {}",
        outcome.line
    );
    let named = outcome
        .line
        .split(" in `")
        .nth(1)
        .and_then(|r| r.split('`').next());
    named.unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------

#[test]
fn the_unbroken_examples_load() {
    parse(Path::new("file.ron"), &file_example()).unwrap_or_else(|e| panic!("{e}"));
    parse(Path::new("steps.ron"), &steps_example()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_step_kind_has_a_readme_example() {
    let (_, variants) = shape::of::<Step>();
    let parsed = parse(Path::new("steps.ron"), &steps_example()).expect("loads");
    let mut shown = BTreeSet::new();
    collect_kinds(&parsed.steps, &mut shown);
    let missing: Vec<_> = variants.iter().filter(|v| !shown.contains(**v)).collect();
    assert!(
        missing.is_empty(),
        "step kinds without a README example: {missing:?}"
    );
    // kind() names are the variant names, so the two lists are one.
    assert!(
        shown.iter().all(|k| variants.contains(&k.as_str())),
        "{shown:?}"
    );
}

fn collect_kinds(steps: &[Step], kinds: &mut BTreeSet<String>) {
    for step in steps {
        kinds.insert(step.kind().to_string());
        match step {
            Step::Concurrent(branches) => branches.iter().for_each(|b| collect_kinds(b, kinds)),
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => collect_kinds(steps, kinds),
            _ => {}
        }
    }
}

#[test]
fn a_misspelled_name_in_any_step_fails_at_the_name() {
    let text = steps_example();
    let steps_start = text.find("steps: [").map(|i| i + "steps: [".len());
    let all = cases(&text, steps_start);
    let count = all.len();
    let mut named = BTreeSet::new();
    let mut tops = BTreeSet::new();
    for outcome in run_binary("steps", all) {
        named.insert(judge(&outcome));
        // Only a field case counts for its step: a misspelled step name
        // says nothing about the step's fields.
        if outcome.case.says.starts_with("unknown field") {
            tops.extend(outcome.case.top_kind.clone());
        }
    }
    let (_, variants) = shape::of::<Step>();
    // Unit steps (Unload, Load) have no fields: writing one is an error.
    let unit = unit_steps_refuse_fields(&text, variants);
    // A kind is exercised when an error named it (its own fields), when
    // a case inside its example failed (Concurrent, Workload: the fields
    // are inside), or when it has no fields and refuses one.
    let exercised: BTreeSet<&str> = variants
        .iter()
        .copied()
        .filter(|v| named.contains(*v) || tops.contains(*v) || unit.contains(*v))
        .collect();
    let missed: Vec<_> = variants
        .iter()
        .filter(|v| !exercised.contains(*v))
        .collect();
    assert!(missed.is_empty(), "step kinds never exercised: {missed:?}");
    assert!(exercised.len() >= variants.len() && variants.len() >= 33);
    println!(
        "{count} broken copies of the step examples; {} of {} step kinds exercised",
        exercised.len(),
        variants.len()
    );
    // Nested structs inside steps were reached too.
    for nested in ["Workload", "CbtExpect", "Concurrent", "Repeat", "Timed"] {
        assert!(
            exercised.contains(nested) || named.contains(nested),
            "{nested}"
        );
    }
    assert!(named.contains("CbtExpect"), "{named:?}");
}

/// Unit step kinds of the example, each refusing `(expct: 1)`.
fn unit_steps_refuse_fields(text: &str, variants: &[&str]) -> BTreeSet<String> {
    let toks = tokens(text);
    let mut cases = Vec::new();
    for (i, (offset, tok)) in toks.iter().enumerate() {
        let Tok::Ident(name) = tok else { continue };
        let alone = matches!(
            toks.get(i + 1).map(|t| &t.1),
            Some(Tok::Punct(',' | ']')) | None
        );
        if variants.contains(&name.as_str()) && alone {
            let at = offset + name.len();
            let broken = format!("{}(expct: 1){}", &text[..at], &text[at..]);
            cases.push((name.clone(), broken, at));
        }
    }
    let outcomes = run_binary(
        "unit",
        cases
            .iter()
            .map(|(_, text, at)| Case {
                text: text.clone(),
                offset: *at,
                says: String::new(),
                top_kind: None,
            })
            .collect(),
    );
    for outcome in &outcomes {
        judge(outcome);
    }
    cases.into_iter().map(|(name, _, _)| name).collect()
}

#[test]
fn a_misspelled_name_elsewhere_fails_at_the_name() {
    let mut named = BTreeSet::new();
    let file_cases = cases(&file_example(), None);
    for outcome in run_binary("file", file_cases) {
        named.insert(judge(&outcome));
    }
    // The variant names and nested structs inside steps (Expect, Target,
    // Media, CbtExpect, Workload, ...).
    let text = steps_example();
    for outcome in run_binary("in-steps", cases(&text, None)) {
        named.insert(judge(&outcome));
    }
    for (name, _) in structs().into_iter().chain(enums()) {
        assert!(
            named.contains(name),
            "{name} never got a misspelled name: {named:?}"
        );
    }
}

#[test]
fn the_error_lists_the_valid_names() {
    let text = steps_example().replace("expect_bytes: [(7, 1)]", "expect_byts: [(7, 1)]");
    let e = parse(Path::new("x.ron"), &text).expect_err("a misspelled field");
    let (_, variants) = shape::of::<Step>();
    assert!(variants.contains(&"ReadCbtMap"));
    for field in [
        "device",
        "offset",
        "length",
        "expect_bytes",
        "expect_len",
        "save",
        "same_as",
    ] {
        assert!(e.message.contains(&format!("`{field}`")), "{e}");
    }
    for (name, fields) in structs() {
        assert!(!fields.is_empty(), "{name}");
    }
}
