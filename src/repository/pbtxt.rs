//! config.pbtxt as protobuf text format, parsed against the schema in
//! `proto/model_config.proto`.
//!
//! Why a pre-pass: Triton users' configs carry fields gsinfer does not
//! honour (`model_warmup`, `sequence_batching`, `response_cache`, ...), and
//! prost-reflect's text-format parser rightly refuses field names that are
//! not in the schema. Before handing the text to that parser, a small
//! tokeniser (aware of quoted strings and `#` comments) walks the field
//! structure alongside the message descriptors, and blanks every field the
//! schema does not know: its name, its value (a scalar, a `[...]` list, or a
//! balanced `{...}`/`<...>` block) and a trailing `,`/`;`. Blanking with
//! spaces, newlines kept, leaves every other byte where it was, so the
//! parser's error positions are positions in the user's file. The walk never
//! decides validity itself: where it meets something it does not
//! understand, it stops stripping and lets the real parser report the error.
//!
//! The same walk inserts the `:` that prost-reflect 0.16 wants between a
//! message field's name and a `[...]` list of messages (`input [ {...} ]`,
//! the form Triton's documentation uses). The text-format spec makes that
//! colon optional (`MessageField = FieldName, [ ":" ], ( MessageValue |
//! MessageList )`), as does protobuf's C++ parser that Triton uses. Error
//! offsets are mapped back past the inserted colons.
//!
//! Text format: <https://protobuf.dev/reference/protobuf/textformat-spec/>.

use std::sync::OnceLock;

use miette::Diagnostic;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};

use super::error::RepositoryError;

/// The encoded `FileDescriptorSet` of `proto/model_config.proto`, written by build.rs.
static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/model_config.fdset"));

/// Full name of the top-level message of config.pbtxt.
const MODEL_CONFIG: &str = "inference.ModelConfig";

/// The descriptor of `inference.ModelConfig`.
pub(crate) fn model_config_descriptor() -> MessageDescriptor {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET).expect("build.rs embeds a valid descriptor set")
    })
    .get_message_by_name(MODEL_CONFIG)
    .expect("proto/model_config.proto defines inference.ModelConfig")
}

/// A parsed config.pbtxt.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The fields gsinfer honours.
    pub message: DynamicMessage,
    /// One line per field that was skipped (dotted path, first occurrence
    /// only), already worded as a warning for `file`.
    pub warnings: Vec<String>,
}

/// Parses `text` as an `inference.ModelConfig`, skipping and reporting the
/// fields the schema does not know. `file` names the text in messages.
///
/// Errors: [`RepositoryError::Syntax`] with the 1-based line and column.
pub(crate) fn parse(text: &str, file: &str) -> Result<Parsed, RepositoryError> {
    let descriptor = model_config_descriptor();
    let mut walker = Walker::new(text);
    // A stuck walk is not an error here: the parser below reports it.
    let _ = walker.fields(&descriptor, "", None);
    let cleaned = clean(text, &walker.strip, &walker.colons);
    let message = DynamicMessage::parse_text_format(descriptor, &cleaned).map_err(|e| {
        let offset = e
            .labels()
            .and_then(|mut labels| labels.next())
            .map_or(cleaned.len(), |label| label.offset());
        let (line, column) = line_column(text, original_offset(offset, &walker.colons));
        RepositoryError::Syntax {
            file: file.to_owned(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    let warnings = walker
        .skipped
        .iter()
        .map(|skip| {
            let mut line = format!(
                "{file}: field `{}` is not supported by gsinfer and is ignored",
                skip.path
            );
            if let Some(near) = &skip.did_you_mean {
                line.push_str(&format!(" (did you mean `{near}`?)"));
            }
            line
        })
        .collect();
    Ok(Parsed { message, warnings })
}

/// `text` with the byte ranges in `strip` replaced by spaces (newlines
/// kept) and a `:` inserted at each offset in `colons` (ascending).
fn clean(text: &str, strip: &[(usize, usize)], colons: &[usize]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(start, end) in strip {
        for b in &mut bytes[start..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    for (inserted, &at) in colons.iter().enumerate() {
        bytes.insert(at + inserted, b':');
    }
    // Whole UTF-8 sequences were replaced by ASCII spaces, and the colons
    // go after identifiers, so this holds.
    String::from_utf8(bytes).expect("cleaning keeps utf-8 valid")
}

/// The offset in the original text of `offset` in the cleaned text.
fn original_offset(offset: usize, colons: &[usize]) -> usize {
    let before = colons
        .iter()
        .enumerate()
        .take_while(|&(inserted, &at)| at + inserted < offset)
        .count();
    offset - before
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Lexical class of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// An identifier or a number (`max_batch_size`, `TYPE_FP32`, `250`, `1.5e-3`).
    Word,
    /// A quoted string, quotes included.
    Str,
    /// Any other single byte (`{`, `}`, `<`, `>`, `[`, `]`, `:`, `,`, `;`, `-`, ...).
    Punct(u8),
}

/// A token and its byte range in the text.
#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Tok,
    start: usize,
    end: usize,
}

/// Splits `text` into tokens, skipping whitespace and `#` comments. Stops
/// at an unterminated string (the parser reports it).
fn tokenize(text: &str) -> Vec<Token> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let kind = if b.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if b == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        } else if b == b'"' || b == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None | Some(b'\n') => return tokens,
                    Some(b'\\') => i += 2,
                    Some(&c) if c == b => break,
                    Some(_) => i += 1,
                }
            }
            i += 1;
            Tok::Str
        } else if b.is_ascii_alphanumeric()
            || b == b'_'
            || (b == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let number = !(b.is_ascii_alphabetic() || b == b'_');
            let hex = number && matches!(bytes.get(i..i + 2), Some(b"0x" | b"0X"));
            i += 1;
            while let Some(&c) = bytes.get(i) {
                let exponent_sign = number
                    && !hex
                    && (c == b'+' || c == b'-')
                    && matches!(bytes[i - 1], b'e' | b'E');
                if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            Tok::Word
        } else {
            // One byte, or one whole character outside ASCII.
            i += text[i..].chars().next().map_or(1, char::len_utf8);
            Tok::Punct(b)
        };
        tokens.push(Token {
            kind,
            start,
            end: i,
        });
    }
    tokens
}

/// A field the schema does not know.
#[derive(Debug)]
struct Skipped {
    /// Dotted path from the top-level message, e.g. `optimization.execution_accelerators`.
    path: String,
    /// A known field of the same message with a close spelling.
    did_you_mean: Option<String>,
}

/// The walk met text it does not understand; the parser will report it.
#[derive(Debug)]
struct Stuck;

/// Walks tokens alongside message descriptors, collecting unknown fields.
struct Walker<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    at: usize,
    /// Byte ranges to blank.
    strip: Vec<(usize, usize)>,
    /// Offsets where a `:` is inserted, ascending.
    colons: Vec<usize>,
    /// Unknown fields, each path once, in order of first appearance.
    skipped: Vec<Skipped>,
}

impl<'t> Walker<'t> {
    fn new(text: &'t str) -> Self {
        Walker {
            text,
            tokens: tokenize(text),
            at: 0,
            strip: Vec::new(),
            colons: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.at).map(|t| t.kind)
    }

    fn bump(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).copied();
        self.at += usize::from(token.is_some());
        token
    }

    /// Consumes the punctuation `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(Tok::Punct(c));
        self.at += usize::from(found);
        found
    }

    /// The fields of one message, up to `close` (or the end of the text at top level).
    fn fields(
        &mut self,
        desc: &MessageDescriptor,
        path: &str,
        close: Option<u8>,
    ) -> Result<(), Stuck> {
        loop {
            match self.peek() {
                None if close.is_none() => return Ok(()),
                Some(Tok::Punct(c)) if Some(c) == close => {
                    self.at += 1;
                    return Ok(());
                }
                Some(Tok::Word) => {}
                _ => return Err(Stuck),
            }
            let name_token = self.bump().ok_or(Stuck)?;
            let name = &self.text[name_token.start..name_token.end];
            let field_path = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            let colon = self.eat(b':');
            match desc.get_field_by_name(name) {
                Some(field) => match field.kind() {
                    Kind::Message(inner) => {
                        if !colon && self.peek() == Some(Tok::Punct(b'[')) {
                            self.colons.push(name_token.end);
                        }
                        self.message_value(&inner, &field_path)?
                    }
                    _ => self.skip_value()?,
                },
                None => {
                    self.skip_value()?;
                    let _ = self.eat(b',') || self.eat(b';');
                    let end = self.tokens[self.at - 1].end;
                    self.strip.push((name_token.start, end));
                    if !self.skipped.iter().any(|s| s.path == field_path) {
                        let did_you_mean = closest_field(desc, name);
                        self.skipped.push(Skipped {
                            path: field_path,
                            did_you_mean,
                        });
                    }
                    continue;
                }
            }
            let _ = self.eat(b',') || self.eat(b';');
        }
    }

    /// A message value: `{...}`, `<...>`, or a `[...]` list of them.
    fn message_value(&mut self, desc: &MessageDescriptor, path: &str) -> Result<(), Stuck> {
        if !self.eat(b'[') {
            return self.message_block(desc, path);
        }
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            self.message_block(desc, path)?;
            if self.eat(b']') {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err(Stuck);
            }
        }
    }

    fn message_block(&mut self, desc: &MessageDescriptor, path: &str) -> Result<(), Stuck> {
        if self.eat(b'{') {
            self.fields(desc, path, Some(b'}'))
        } else if self.eat(b'<') {
            self.fields(desc, path, Some(b'>'))
        } else {
            Err(Stuck)
        }
    }

    /// Any value, without a schema: a scalar, a block, or a `[...]` list.
    fn skip_value(&mut self) -> Result<(), Stuck> {
        if !self.eat(b'[') {
            return self.skip_single();
        }
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            self.skip_single()?;
            if self.eat(b']') {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err(Stuck);
            }
        }
    }

    /// A scalar (`-` sign and adjacent strings included) or a balanced block.
    fn skip_single(&mut self) -> Result<(), Stuck> {
        match self.bump().map(|t| t.kind) {
            Some(Tok::Word) => Ok(()),
            Some(Tok::Punct(b'-')) => match self.bump().map(|t| t.kind) {
                Some(Tok::Word) => Ok(()),
                _ => Err(Stuck),
            },
            Some(Tok::Str) => {
                while self.peek() == Some(Tok::Str) {
                    self.at += 1;
                }
                Ok(())
            }
            Some(Tok::Punct(open @ (b'{' | b'<'))) => self.skip_block(open),
            _ => Err(Stuck),
        }
    }

    /// Skips to the bracket closing `open`, which was just consumed.
    fn skip_block(&mut self, open: u8) -> Result<(), Stuck> {
        let closer = |b: u8| match b {
            b'{' => Some(b'}'),
            b'<' => Some(b'>'),
            b'[' => Some(b']'),
            _ => None,
        };
        let mut expected = vec![closer(open).ok_or(Stuck)?];
        while let Some(token) = self.bump() {
            match token.kind {
                Tok::Punct(b @ (b'{' | b'<' | b'[')) => expected.extend(closer(b)),
                Tok::Punct(b @ (b'}' | b'>' | b']')) => {
                    if expected.pop() != Some(b) {
                        return Err(Stuck);
                    }
                    if expected.is_empty() {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        Err(Stuck)
    }
}

/// The field of `desc` spelled closest to `name`, if at most two edits away.
fn closest_field(desc: &MessageDescriptor, name: &str) -> Option<String> {
    desc.fields()
        .map(|f| (edit_distance(f.name(), name), f.name().to_owned()))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance between two ASCII-ish strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(text: &str) -> Vec<String> {
        parse(text, "config.pbtxt").unwrap().warnings
    }

    fn syntax(text: &str) -> (usize, usize, String) {
        match parse(text, "config.pbtxt").unwrap_err() {
            RepositoryError::Syntax {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("expected a syntax error, got {other}"),
        }
    }

    #[test]
    fn the_schema_compiled_by_build_rs_is_embedded() {
        let desc = model_config_descriptor();
        assert_eq!(desc.full_name(), MODEL_CONFIG);
        assert_eq!(desc.get_field_by_name("backend").unwrap().number(), 17);
        assert_eq!(desc.get_field_by_name("parameters").unwrap().number(), 14);
    }

    #[test]
    fn tokens_respect_strings_comments_and_numbers() {
        let text = "a: \"x # } \\\" y\" # comment { [\nb: -1.5e-3 c: 0x1F 'q'";
        let kinds: Vec<Tok> = tokenize(text).iter().map(|t| t.kind).collect();
        use Tok::*;
        assert_eq!(
            kinds,
            [
                Word,
                Punct(b':'),
                Str,
                Word,
                Punct(b':'),
                Punct(b'-'),
                Word,
                Word,
                Punct(b':'),
                Word,
                Str
            ]
        );
    }

    #[test]
    fn an_unknown_scalar_is_warned_and_the_rest_parsed() {
        let parsed = parse(
            "name: \"m\"\nruntime: \"libx.so\"\nmax_batch_size: 8",
            "config.pbtxt",
        )
        .unwrap();
        assert_eq!(
            parsed.warnings,
            ["config.pbtxt: field `runtime` is not supported by gsinfer and is ignored"]
        );
        let max = parsed.message.get_field_by_name("max_batch_size").unwrap();
        assert_eq!(max.as_i32(), Some(8));
    }

    #[test]
    fn unknown_blocks_and_lists_are_skipped_whole_and_warned_once() {
        let text = r#"
            model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } } ]
            model_warmup { name: "brace } in a string # not a comment" }
            model_warmup { # a comment with a } and a ]
              name: 'single-quoted \' } string' }
            sequence_batching < max_sequence_idle_microseconds: 5000000 >
            optimization { cuda { graphs: true busy_wait_events: true } execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
            metric_tags: [ { key: "a", value: "b" } ];
            max_batch_size: 4
        "#;
        assert_eq!(
            warnings(text),
            [
                "config.pbtxt: field `model_warmup` is not supported by gsinfer and is ignored",
                "config.pbtxt: field `sequence_batching` is not supported by gsinfer and is ignored",
                "config.pbtxt: field `optimization.cuda.busy_wait_events` is not supported by gsinfer and is ignored",
                "config.pbtxt: field `optimization.execution_accelerators.cpu_execution_accelerator` is not supported by gsinfer and is ignored (did you mean `gpu_execution_accelerator`?)",
                "config.pbtxt: field `metric_tags` is not supported by gsinfer and is ignored",
            ]
        );
    }

    #[test]
    fn a_misspelt_field_is_warned_with_a_suggestion() {
        assert_eq!(
            warnings("max_batch_sise: 8"),
            ["config.pbtxt: field `max_batch_sise` is not supported by gsinfer and is ignored (did you mean `max_batch_size`?)"]
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column_of_the_users_file() {
        // The unknown field before the error is blanked, not removed, so the position holds.
        let (line, column, message) = syntax("model_warmup { name: \"w\" }\nmax_batch_size: 8\ninput { name: \"x\" data_type: TYPE_FP33 }");
        assert_eq!((line, column), (3, 30), "{message}");
        assert!(message.contains("TYPE_FP33"), "{message}");

        let (line, column, message) = syntax("name: \"m\"\n  max_batch_size: \"eight\"");
        assert_eq!((line, column), (2, 19), "{message}");

        let (line, _, message) = syntax("input {\n  name: \"x\"\n");
        assert_eq!(line, 3, "{message}");
        assert!(message.contains("end of input"), "{message}");
    }

    #[test]
    fn message_lists_need_no_colon_and_positions_survive_the_inserted_ones() {
        let parsed = parse(
            "input[{ name: \"a\" }]\noutput [ { name: \"b\" }, { name: \"c\" } ]",
            "config.pbtxt",
        )
        .unwrap();
        let outputs = parsed.message.get_field_by_name("output").unwrap();
        assert_eq!(outputs.as_list().unwrap().len(), 2);

        let (line, column, message) =
            syntax("input [ { } ] output [ { } ] input [ { data_type: TYPE_FP33 } ]");
        assert_eq!((line, column), (1, 51), "{message}");
        // A scalar list still needs its colon, as the spec says.
        let (line, column, message) = syntax("input { dims [ 1 ] }");
        assert_eq!((line, column), (1, 14), "{message}");
    }

    #[test]
    fn an_unterminated_string_is_a_syntax_error() {
        let (line, column, message) = syntax("name: \"m\nmax_batch_size: 1");
        assert_eq!((line, column), (1, 9), "{message}");
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_column("ab", 99), (1, 3));
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("input", "input"), 0);
    }
}
