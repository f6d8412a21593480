//! `uiommufd bench --json` and `--compare FILE`: a run as JSON, and a run
//! set beside a saved one, so that a regression is one command away.
//!
//! The JSON is one object: `{"uiommufd_bench": 1, "quick": bool, "rows":
//! [...]}`, each row `{"section", "case", "ns", "reference",
//! "reference_ns", "target", "met"}` (`reference*`, `target` and `met` are
//! `null` where the row has none). `--compare` matches rows by section and
//! case and prints, for each, the saved time, this run's, and saved / now
//! (above 1: faster now). Rows only one side has are listed as such.
//!
//! No JSON crate: the writer escapes strings, and the reader is a small
//! recursive-descent parser for the subset any JSON writer produces.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::bench::{fmt_ns, Row};

/// One measured row of one section.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    pub section: String,
    pub case: String,
    pub ns: f64,
    pub reference: Option<(String, f64)>,
    pub target: Option<String>,
    pub met: Option<bool>,
}

impl Record {
    pub(crate) fn of(section: &str, r: &Row) -> Record {
        let (target, met) = match r.target.map(|t| t.judge(r)) {
            None => (None, None),
            Some((what, met)) => (Some(what), Some(met)),
        };
        Record {
            section: section.to_string(),
            case: r.case.clone(),
            ns: r.ours,
            reference: r.reference.clone(),
            target,
            met,
        }
    }
}

fn escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn number(out: &mut String, v: f64) {
    if v.is_finite() {
        let _ = write!(out, "{v}");
    } else {
        out.push_str("null");
    }
}

/// The run as JSON (see the module documentation).
pub(crate) fn to_json(quick: bool, records: &[Record]) -> String {
    let mut out = format!("{{\"uiommufd_bench\": 1, \"quick\": {quick}, \"rows\": [");
    for (i, r) in records.iter().enumerate() {
        out.push_str(if i == 0 { "\n  {" } else { ",\n  {" });
        out.push_str("\"section\": ");
        escape(&mut out, &r.section);
        out.push_str(", \"case\": ");
        escape(&mut out, &r.case);
        out.push_str(", \"ns\": ");
        number(&mut out, r.ns);
        out.push_str(", \"reference\": ");
        match &r.reference {
            Some((name, ns)) => {
                escape(&mut out, name);
                out.push_str(", \"reference_ns\": ");
                number(&mut out, *ns);
            }
            None => out.push_str("null, \"reference_ns\": null"),
        }
        out.push_str(", \"target\": ");
        match &r.target {
            Some(t) => escape(&mut out, t),
            None => out.push_str("null"),
        }
        out.push_str(", \"met\": ");
        out.push_str(match r.met {
            Some(true) => "true",
            Some(false) => "false",
            None => "null",
        });
        out.push('}');
    }
    out.push_str("\n]}\n");
    out
}

/// A parsed JSON value.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.at))
    }

    fn ws(&mut self) {
        while self.at < self.s.len() && self.s[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            Ok(())
        } else {
            self.err(&format!("expected '{}'", c as char))
        }
    }

    fn literal(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(v)
        } else {
            self.err("unknown literal")
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.at) else { return self.err("unterminated string") };
            self.at += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.at) else { return self.err("unterminated escape") };
                    self.at += 1;
                    match e {
                        b'"' | b'\\' | b'/' => out.push(e),
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'u' => {
                            let hex = self.s.get(self.at..self.at + 4).ok_or("short \\u escape")?;
                            let code = u32::from_str_radix(std::str::from_utf8(hex).map_err(|e| e.to_string())?, 16)
                                .map_err(|e| e.to_string())?;
                            self.at += 4;
                            let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                            out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        _ => return self.err("bad escape"),
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.at) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.at += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.s.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    let k = self.string()?;
                    self.eat(b':')?;
                    m.insert(k, self.value()?);
                    self.ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                let mut v = Vec::new();
                self.ws();
                if self.s.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    self.ws();
                    match self.s.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Arr(v));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(_) => {
                let start = self.at;
                while self.at < self.s.len()
                    && matches!(self.s[self.at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.at]).map_err(|e| e.to_string())?;
                text.parse().map(Json::Num).map_err(|_| format!("bad number '{text}' at byte {start}"))
            }
        }
    }
}

/// Read a saved run (what `--json` wrote).
pub(crate) fn parse(text: &str) -> Result<Vec<Record>, String> {
    let mut p = Parser { s: text.as_bytes(), at: 0 };
    let v = p.value()?;
    p.ws();
    if p.at != p.s.len() {
        return p.err("trailing data");
    }
    let Json::Obj(top) = v else { return Err("not a JSON object".into()) };
    if top.get("uiommufd_bench").is_none() {
        return Err("not a uiommufd bench run (no \"uiommufd_bench\" key)".into());
    }
    let Some(Json::Arr(rows)) = top.get("rows") else { return Err("no \"rows\" array".into()) };
    let str_of = |o: &BTreeMap<String, Json>, k: &str| match o.get(k) {
        Some(Json::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let num_of = |o: &BTreeMap<String, Json>, k: &str| match o.get(k) {
        Some(Json::Num(n)) => Some(*n),
        _ => None,
    };
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let Json::Obj(o) = r else { return Err(format!("row {i} is not an object")) };
            let (Some(section), Some(case)) = (str_of(o, "section"), str_of(o, "case")) else {
                return Err(format!("row {i} lacks \"section\" or \"case\""));
            };
            let ns = num_of(o, "ns").ok_or(format!("row {i} lacks \"ns\""))?;
            let reference = str_of(o, "reference").zip(num_of(o, "reference_ns"));
            let met = match o.get("met") {
                Some(Json::Bool(b)) => Some(*b),
                _ => None,
            };
            Ok(Record { section, case, ns, reference, target: str_of(o, "target"), met })
        })
        .collect()
}

/// This run beside the saved one, row by row: saved / now per case.
pub(crate) fn compare(saved: &[Record], now: &[Record]) -> String {
    let key = |r: &Record| (r.section.clone(), r.case.clone());
    let old: BTreeMap<(String, String), &Record> = saved.iter().map(|r| (key(r), r)).collect();
    let mut out = String::new();
    let mut section = "";
    let mut seen = std::collections::BTreeSet::new();
    let mut ratios = Vec::new();
    for r in now {
        if r.section != section {
            section = &r.section;
            let _ = writeln!(out, "\n{section}");
            let _ = writeln!(out, "{:<64} {:>10} {:>10} {:>8}", "case", "saved", "now", "saved/now");
        }
        seen.insert(key(r));
        match old.get(&key(r)) {
            Some(o) => {
                let ratio = o.ns / r.ns;
                ratios.push(ratio);
                let flag = if ratio < 0.9 {
                    "  slower"
                } else if ratio > 1.1 {
                    "  faster"
                } else {
                    ""
                };
                let _ = writeln!(out, "{:<64} {:>10} {:>10} {:>8.2}{flag}", r.case, fmt_ns(o.ns), fmt_ns(r.ns), ratio);
            }
            None => {
                let _ = writeln!(out, "{:<64} {:>10} {:>10} {:>8}", r.case, "-", fmt_ns(r.ns), "new");
            }
        }
    }
    let gone: Vec<&&Record> = old.iter().filter(|(k, _)| !seen.contains(*k)).map(|(_, r)| r).collect();
    if !gone.is_empty() {
        let _ = writeln!(out, "\nIn the saved run only");
        for r in gone {
            let _ = writeln!(out, "{:<64} {:>10}  ({})", r.case, fmt_ns(r.ns), r.section);
        }
    }
    if !ratios.is_empty() {
        // The geometric mean weighs a 2x gain and a 2x loss equally.
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let _ = writeln!(out, "\n{} cases compared; geometric mean of saved/now: {geo:.2}", ratios.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(section: &str, case: &str, ns: f64) -> Record {
        Record {
            section: section.into(),
            case: case.into(),
            ns,
            reference: Some(("memcpy \"4 KiB\"\\".into(), 17.5)),
            target: Some(">= 0.90x".into()),
            met: Some(false),
        }
    }

    #[test]
    fn json_round_trips() {
        let mut rows = vec![rec("A: µs", "case 1", 474.25), rec("A: µs", "case\n2", 1e9)];
        rows[1].reference = None;
        rows[1].target = None;
        rows[1].met = None;
        let text = to_json(true, &rows);
        assert_eq!(parse(&text).unwrap(), rows);
    }

    #[test]
    fn parse_rejects_what_is_not_a_run() {
        assert!(parse("[]").is_err());
        assert!(parse("{\"rows\": []}").is_err());
        assert!(parse("{\"uiommufd_bench\": 1, \"rows\": [{\"case\": \"x\"}]}").is_err());
        assert!(parse("{\"uiommufd_bench\": 1, \"rows\": []} x").is_err());
        assert_eq!(parse("{\"uiommufd_bench\": 1, \"rows\": []}").unwrap(), vec![]);
    }

    #[test]
    fn compare_gives_saved_over_now() {
        let saved = vec![rec("S", "a", 200.0), rec("S", "gone", 5.0)];
        let now = vec![rec("S", "a", 100.0), rec("S", "b", 7.0)];
        let out = compare(&saved, &now);
        assert!(out.contains("2.00  faster"), "{out}");
        assert!(out.contains("new"), "{out}");
        assert!(out.contains("In the saved run only"), "{out}");
        assert!(out.contains("geometric mean of saved/now: 2.00"), "{out}");
    }

    #[test]
    fn targets_judge_rows() {
        use crate::bench::{Row, Target};
        let row = |ns: f64, reference: f64| Row::new("r", ns).vs("ref", reference);
        assert_eq!(Target::MaxOverRef(100.0).judge(&row(1100.0, 1000.0)), ("<= ref + 100.0 ns".into(), true));
        assert!(!Target::MaxOverRef(100.0).judge(&row(1100.1, 1000.0)).1);
        assert!(!Target::MaxOverRef(100.0).judge(&Row::new("no reference", 1.0)).1);
        assert!(Target::MinRatio(0.9).judge(&row(100.0, 90.0)).1);
        assert!(!Target::MinRatio(0.9).judge(&row(100.0, 89.0)).1);
        assert!(Target::MaxNs(100.0).judge(&row(100.0, 1.0)).1);
        let rec = Record::of("S", &row(1200.0, 1000.0).target(Target::MaxOverRef(100.0)));
        assert_eq!((rec.target.as_deref(), rec.met), (Some("<= ref + 100.0 ns"), Some(false)));
    }
}
