//! Reads the JUnit XML that `pytest --junitxml` writes: one [`Case`] per `<testcase>`, with
//! its outcome and the message and text of its `<failure>`, `<error>` or `<skipped>`.
//!
//! A small scanner, not a general XML parser: it knows elements, attributes, text, the five
//! predefined entities and character references, and skips the declaration, comments and
//! CDATA markers — which is everything pytest writes.

use std::fmt;

use anyhow::{Context, bail};

/// How one test ended. A test with several results (a failed call and an erroring teardown)
/// takes the worst: error, then failure, then skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Ran and passed.
    Passed,
    /// Skipped (`<skipped>`).
    Skipped,
    /// An assertion or an exception in the test (`<failure>`).
    Failed,
    /// An exception in setup or teardown (`<error>`).
    Error,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Passed => "passed",
            Self::Skipped => "SKIPPED",
            Self::Failed => "FAILED",
            Self::Error => "ERROR",
        })
    }
}

/// One `<testcase>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// `classname` (the module and class, dotted).
    pub classname: String,
    /// `name` (the test method).
    pub name: String,
    /// `time` in seconds, as written.
    pub time: String,
    /// The worst result.
    pub outcome: Outcome,
    /// The `message` attributes of the results, in document order.
    pub message: String,
    /// The text of the results (tracebacks), in document order.
    pub text: String,
}

impl Case {
    /// `classname.name`.
    pub fn id(&self) -> String {
        format!("{}.{}", self.classname, self.name)
    }

    /// What went wrong, most telling first: the exception lines of the Python tracebacks in
    /// the text, the test's own (the last traceback) before those of its cleanups; else
    /// pytest's `E ` lines; else the `message` attributes (a skip's reason).
    pub fn summary(&self) -> Vec<String> {
        let mut blocks = exception_blocks(&self.text);
        if let Some(main) = blocks.pop() {
            blocks.insert(0, main);
            return blocks.into_iter().flatten().collect();
        }
        let e: Vec<String> = self
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("E "))
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        if !e.is_empty() {
            return e;
        }
        self.message.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }
}

/// The exception lines ending each `Traceback (most recent call last):` in `text`: the
/// unindented lines after its indented frames, up to a blank line, `}}}` (the end of a
/// testtools detail) or the next traceback.
fn exception_blocks(text: &str) -> Vec<Vec<String>> {
    const MARK: &str = "Traceback (most recent call last):";
    let mut blocks = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.trim_end().ends_with(MARK) {
            continue;
        }
        while lines.peek().is_some_and(|l| l.starts_with(' ')) {
            lines.next();
        }
        let mut block = Vec::new();
        while let Some(l) = lines.peek() {
            if l.trim().is_empty() || l.trim() == "}}}" || l.trim_end().ends_with(MARK) {
                break;
            }
            block.push(l.trim_end().to_owned());
            lines.next();
        }
        if !block.is_empty() {
            blocks.push(block);
        }
    }
    blocks
}

#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> &str {
        self.attrs.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
    }

    fn walk<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        if self.name == name {
            out.push(self);
        }
        for c in &self.children {
            c.walk(name, out);
        }
    }
}

/// Parse a JUnit XML document into its test cases, in document order.
///
/// # Errors
/// When the document is not well-formed enough to scan.
pub fn parse(xml: &str) -> anyhow::Result<Vec<Case>> {
    let root = parse_tree(xml)?;
    let mut cases = Vec::new();
    root.walk("testcase", &mut cases);
    Ok(cases
        .into_iter()
        .map(|tc| {
            let mut outcome = Outcome::Passed;
            let mut message = Vec::new();
            let mut text = Vec::new();
            for r in &tc.children {
                let o = match r.name.as_str() {
                    "failure" => Outcome::Failed,
                    "error" => Outcome::Error,
                    "skipped" => Outcome::Skipped,
                    _ => continue,
                };
                outcome = outcome.max(o);
                if !r.attr("message").is_empty() {
                    message.push(r.attr("message").to_owned());
                }
                if !r.text.trim().is_empty() {
                    text.push(r.text.trim().to_owned());
                }
            }
            Case {
                classname: tc.attr("classname").to_owned(),
                name: tc.attr("name").to_owned(),
                time: tc.attr("time").to_owned(),
                outcome,
                message: message.join("\n"),
                text: text.join("\n---\n"),
            }
        })
        .collect())
}

fn parse_tree(xml: &str) -> anyhow::Result<Element> {
    let mut stack = vec![Element { name: "#document".into(), ..Element::default() }];
    let mut rest = xml;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            push_text(&mut stack, rest)?;
            break;
        };
        push_text(&mut stack, &rest[..lt])?;
        rest = &rest[lt..];
        if let Some(r) = rest.strip_prefix("<?") {
            rest = after(r, "?>")?;
        } else if let Some(r) = rest.strip_prefix("<!--") {
            rest = after(r, "-->")?;
        } else if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let end = r.find("]]>").context("unterminated CDATA")?;
            if let Some(top) = stack.last_mut() {
                top.text.push_str(&r[..end]);
            }
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<!") {
            rest = after(r, ">")?;
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = r.find('>').context("unterminated end tag")?;
            let name = r[..end].trim();
            let done = stack.pop().context("end tag without a start")?;
            if done.name != name || stack.is_empty() {
                bail!("</{name}> closes <{}>", done.name);
            }
            if let Some(parent) = stack.last_mut() {
                parent.children.push(done);
            }
            rest = &r[end + 1..];
        } else {
            let (el, closed, r) = start_tag(&rest[1..])?;
            rest = r;
            if closed {
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(el);
                }
            } else {
                stack.push(el);
            }
        }
    }
    if stack.len() != 1 {
        bail!("unclosed elements: {:?}", stack.iter().map(|e| &e.name).collect::<Vec<_>>());
    }
    stack.pop().context("empty stack")
}

fn after<'a>(s: &'a str, end: &str) -> anyhow::Result<&'a str> {
    let i = s.find(end).with_context(|| format!("missing {end:?}"))?;
    Ok(&s[i + end.len()..])
}

fn push_text(stack: &mut [Element], raw: &str) -> anyhow::Result<()> {
    if let Some(top) = stack.last_mut() {
        top.text.push_str(&unescape(raw)?);
    }
    Ok(())
}

/// Scan a start tag after its `<`: the element, whether it closed itself, and the rest.
fn start_tag(s: &str) -> anyhow::Result<(Element, bool, &str)> {
    let name_end =
        s.find(|c: char| c.is_whitespace() || c == '>' || c == '/').context("unterminated tag")?;
    let mut el = Element { name: s[..name_end].to_owned(), ..Element::default() };
    let mut rest = &s[name_end..];
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("/>") {
            return Ok((el, true, r));
        }
        if let Some(r) = rest.strip_prefix('>') {
            return Ok((el, false, r));
        }
        let eq =
            rest.find('=').with_context(|| format!("attribute without value in <{}>", el.name))?;
        let key = rest[..eq].trim().to_owned();
        let r = rest[eq + 1..].trim_start();
        let quote = r.chars().next().filter(|c| *c == '"' || *c == '\'');
        let quote = quote.with_context(|| format!("unquoted attribute {key} in <{}>", el.name))?;
        let r = &r[1..];
        let end = r.find(quote).with_context(|| format!("unterminated attribute {key}"))?;
        el.attrs.push((key, unescape(&r[..end])?));
        rest = &r[end + 1..];
    }
}

fn unescape(s: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let r = &rest[amp + 1..];
        let semi = r.find(';').with_context(|| format!("unterminated entity in {s:?}"))?;
        let entity = &r[..semi];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) =
                    entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()
                } else {
                    entity.strip_prefix('#').and_then(|d| d.parse().ok())
                };
                code.and_then(char::from_u32)
                    .with_context(|| format!("unknown entity &{entity}; in {s:?}"))?
            }
        };
        out.push(c);
        rest = &r[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_reads_outcomes_messages_and_entities() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4">
<testcase classname="m.C" name="test_ok" time="0.010" />
<testcase classname="m.C" name="test_bad" time="1.5"><failure message="BadRequestException: 400: &quot;x&quot; &lt;y&gt;">Traceback &amp;c
line &#65;&#x42;</failure><system-out>noise</system-out></testcase>
<testcase classname="m.C" name="test_skip" time="0"><skipped type="pytest.skip" message="no 1.99">skip text</skipped></testcase>
<testcase classname="m.D" name="test_err" time="2"><failure message="f" /><error message="teardown"><![CDATA[raw <text>]]></error></testcase>
<!-- done --></testsuite></testsuites>"#;
        let cases = parse(xml).unwrap();
        let got: Vec<_> = cases.iter().map(|c| (c.id(), c.outcome)).collect();
        assert_eq!(
            got,
            [
                ("m.C.test_ok".to_owned(), Outcome::Passed),
                ("m.C.test_bad".to_owned(), Outcome::Failed),
                ("m.C.test_skip".to_owned(), Outcome::Skipped),
                ("m.D.test_err".to_owned(), Outcome::Error),
            ]
        );
        assert_eq!(cases[1].message, r#"BadRequestException: 400: "x" <y>"#);
        assert_eq!(cases[1].text, "Traceback &c\nline AB");
        assert_eq!(cases[1].time, "1.5");
        assert_eq!(cases[2].message, "no 1.99");
        assert_eq!(cases[3].message, "f\nteardown");
        assert_eq!(cases[3].text, "raw <text>");
    }

    #[test]
    fn test_summary_puts_the_tests_exception_before_its_cleanups() {
        let text = r#"'NoneType' object is not iterable

During handling of the above exception, another exception occurred:
NOTE: Incompatible Exception Representation, displaying natively:

testtools.testresult.real._StringException: traceback-1: {{{
Traceback (most recent call last):
  File "/tmp/ttdemo/test_demo.py", line 5, in cleanup
    raise ValueError("cleanup broke\nsecond line")
ValueError: cleanup broke
second line
}}}

Traceback (most recent call last):
  File "/tmp/ttdemo/test_demo.py", line 7, in test_a
    raise RuntimeError("400: Client Error for url: http://x/v1/nodes, bad thing")
RuntimeError: 400: Client Error for url: http://x/v1/nodes, bad thing"#;
        let case = Case {
            classname: "m.C".into(),
            name: "test_a".into(),
            time: "0".into(),
            outcome: Outcome::Failed,
            message: "Failed: NOTE: Incompatible Exception Representation".into(),
            text: text.into(),
        };
        assert_eq!(
            case.summary(),
            [
                "RuntimeError: 400: Client Error for url: http://x/v1/nodes, bad thing",
                "ValueError: cleanup broke",
                "second line",
            ]
        );
        let skip = Case { text: String::new(), message: "no 1.99".into(), ..case.clone() };
        assert_eq!(skip.summary(), ["no 1.99"]);
        let native = Case { text: "x\nE   AssertionError: 1 != 2\nE   \n".into(), ..case };
        assert_eq!(native.summary(), ["AssertionError: 1 != 2"]);
    }

    #[test]
    fn test_parse_rejects_mismatched_tags() {
        assert!(parse("<a><b></a></b>").is_err());
        assert!(parse("<a>").is_err());
    }
}
