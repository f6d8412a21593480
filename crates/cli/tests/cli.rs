//! The command line as people expect it: completions, manual pages,
//! examples in every `--help`, `info --json`.

use std::process::Command;

fn uiommufd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd")).args(args).output().expect("run uiommufd");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

const COMMANDS: [&str; 8] = ["run", "trace", "demo", "info", "bench", "completions", "man", "inspect"];

/// The commands this binary has (`inspect` may not be there yet).
fn commands() -> Vec<&'static str> {
    let (_, help, _) = uiommufd(&["--help"]);
    COMMANDS.into_iter().filter(|c| help.contains(&format!("  {c} "))).collect()
}

#[test]
fn every_help_shows_an_example() {
    let (ok, top, err) = uiommufd(&["--help"]);
    assert!(ok && top.contains("Examples:"), "{top}{err}");
    for c in commands() {
        let (ok, help, err) = uiommufd(&[c, "--help"]);
        assert!(ok, "{c}: {err}");
        assert!(help.contains("Example"), "`uiommufd {c} --help` shows no example:\n{help}");
        assert!(help.contains(&format!("uiommufd {c}")), "{c}'s example does not run {c}:\n{help}");
    }
}

#[test]
fn completions_for_the_usual_shells() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (ok, script, err) = uiommufd(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        for c in commands() {
            assert!(script.contains(c), "{shell} completion lacks {c}");
        }
        // Options of a subcommand complete too.
        assert!(script.contains("no-addresses"), "{shell} completion lacks trace's options");
    }
    let (ok, _, err) = uiommufd(&["completions", "tcsh"]);
    assert!(!ok && err.contains("tcsh"), "{err}");
}

#[test]
fn manual_pages_from_the_definitions() {
    let (ok, page, err) = uiommufd(&["man"]);
    assert!(ok, "{err}");
    assert!(page.starts_with(".ie") || page.contains(".TH uiommufd 1"), "{page}");
    assert!(page.contains("trace") && page.contains("Examples"), "{page}");
    let (ok, page, _) = uiommufd(&["man", "trace"]);
    assert!(ok && page.contains(".TH uiommufd-trace 1") && page.contains("no\\-addresses"), "{page}");
    let dir = std::env::temp_dir().join(format!("uiommufd-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, _, err) = uiommufd(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    for c in std::iter::once("uiommufd".to_string()).chain(commands().iter().map(|c| format!("uiommufd-{c}"))) {
        let text = std::fs::read_to_string(dir.join(format!("{c}.1"))).unwrap_or_default();
        assert!(text.contains(&format!(".TH {c} 1")), "{c}.1: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, _, err) = uiommufd(&["man", "nope"]);
    assert!(!ok && err.contains("nope"), "{err}");
}

/// A JSON value, checked by a small recursive-descent reader (no
/// dependency): `Some(rest)` after one value, `None` if malformed.
fn value(s: &str) -> Option<&str> {
    let s = s.trim_start();
    let rest = match s.chars().next()? {
        '{' => {
            let mut r = s[1..].trim_start();
            if let Some(r) = r.strip_prefix('}') {
                return Some(r);
            }
            loop {
                r = string(r.trim_start())?.trim_start().strip_prefix(':')?;
                r = value(r)?.trim_start();
                match r.chars().next()? {
                    ',' => r = &r[1..],
                    '}' => break &r[1..],
                    _ => return None,
                }
            }
        }
        '[' => {
            let mut r = s[1..].trim_start();
            if let Some(r) = r.strip_prefix(']') {
                return Some(r);
            }
            loop {
                r = value(r)?.trim_start();
                match r.chars().next()? {
                    ',' => r = &r[1..],
                    ']' => break &r[1..],
                    _ => return None,
                }
            }
        }
        '"' => string(s)?,
        _ => {
            let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.')).unwrap_or(s.len());
            let word = &s[..end];
            let ok = matches!(word, "true" | "false" | "null") || word.parse::<f64>().is_ok();
            ok.then_some(&s[end..])?
        }
    };
    Some(rest)
}

fn string(s: &str) -> Option<&str> {
    let mut it = s.strip_prefix('"')?.char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '\\' => {
                it.next()?;
            }
            '"' => return Some(&s[i + 2..]),
            c if (c as u32) < 0x20 => return None,
            _ => {}
        }
    }
    None
}

#[test]
fn info_as_json() {
    for iommu in ["vtd", "mock", "smmuv3:canwbs=1", "amd"] {
        let (ok, out, err) = uiommufd(&["info", "--json", "--registers", "--iommu", iommu, "--device", "dma-engine"]);
        assert!(ok, "{iommu}: {err}");
        assert_eq!(value(&out).map(str::trim), Some(""), "{iommu}: not one JSON value:\n{out}");
        let model = iommu.split(':').next().unwrap();
        assert!(out.contains(&format!("\"model\": \"{model}\"")), "{out}");
        for key in
            ["\"summary\": [", "\"bdf\": \"0000:00:04.0\"", "\"cdev\": \"/dev/vfio/devices/vfio0\"", "\"hw_info\": {"]
        {
            assert!(out.contains(key), "{iommu}: no {key} in {out}");
        }
    }
    // The text and the JSON say the same.
    let (_, text, _) = uiommufd(&["info", "--iommu", "vtd:cap=d2008c22260286,ecap=f42"]);
    let (_, json, _) = uiommufd(&["info", "--json", "--iommu", "vtd:cap=d2008c22260286,ecap=f42"]);
    assert!(text.contains("NOT enforced coherent") && json.contains("\"enforced_coherent\": false"), "{json}");
    assert!(json.contains("cap d2008c22260286 ecap f42"), "{json}");
    assert!(value("{\"a\": [1, \"x\\\"y\", true], \"b\": {}}").is_some_and(|r| r.is_empty()));
    assert!(value("{\"a\": }").is_none() && value("[1 2]").is_none());
}
