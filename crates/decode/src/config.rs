//! The options of `uiommufd trace`, as strace spells them, and the form
//! they travel in to the shim (`UIOMMUFD_TRACE_OPTS`, `;`-separated):
//!
//! | option | meaning | in the variable |
//! | --- | --- | --- |
//! | `-e trace=SET` | only these calls (names, classes; `!` negates) | `trace=SET` |
//! | `-e status=successful\|failed`, `-z`, `-Z` | only calls that succeeded / failed | `status=...` |
//! | `-t`, `-tt`, `-ttt` | wall-clock time, with microseconds, as seconds since the epoch | `t=N` |
//! | `-T` | time spent in the call | `T` |
//! | `-f` | follow forks and threads (`[pid N]` prefixes) | `f` |
//! | `-s N` | string and array size | `s=N` |
//! | `--no-addresses` | user addresses as `<ptr>` | `noaddr` |
//!
//! The parsing is here, pure, so that the command line rejects what the
//! shim would not understand and both agree on what a set means.

use crate::class;
use crate::out::Options;

/// The calls shown: those whose name is listed or which belong to a
/// listed class, or, negated, all the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    negate: bool,
    classes: u32,
    names: Vec<String>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter { negate: false, classes: class::ALL, names: Vec::new() }
    }
}

/// The names of the calls that are not ioctls, as traces print them.
pub const SYSCALLS: &[&str] = &[
    "open", "close", "dup", "lseek", "mmap", "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv",
    "pwritev", "preadv2", "pwritev2", "poll", "ppoll",
];

impl Filter {
    /// strace's `trace=` set: comma-separated command names
    /// (`IOMMU_IOAS_MAP`, `VFIO_DEVICE_GET_INFO`), call names (`read`,
    /// `mmap`) and classes (`ioas`, `hwpt`, `vfio`, ..., optionally `%`
    /// first), in any case; `!` first negates the set; `all` and `none`.
    pub fn parse(set: &str) -> Result<Filter, String> {
        let (negate, set) = match set.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, set),
        };
        let mut f = Filter { negate, classes: 0, names: Vec::new() };
        for item in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bare = item.strip_prefix('%').unwrap_or(item);
            if bare.eq_ignore_ascii_case("none") {
                continue;
            }
            if let Some((_, c)) = class::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(bare)) {
                f.classes |= c;
            } else if crate::ioctl::all_commands().any(|c| c.name.eq_ignore_ascii_case(item))
                || SYSCALLS.iter().any(|s| s.eq_ignore_ascii_case(item))
            {
                f.names.push(item.to_ascii_uppercase());
            } else {
                return Err(format!(
                    "{item:?} names no command, call or class (classes: {})",
                    class::NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(f)
    }

    /// Whether a call named `name` of classes `classes` is shown.
    pub fn selects(&self, name: &str, classes: u32) -> bool {
        let hit = classes & self.classes != 0 || self.names.iter().any(|n| n.eq_ignore_ascii_case(name));
        hit != self.negate
    }

    fn render(&self) -> String {
        let mut items: Vec<String> =
            class::NAMES.iter().skip(1).filter(|(_, c)| self.classes & c == *c).map(|(n, _)| n.to_string()).collect();
        if self.classes == class::ALL {
            items = vec!["all".into()];
        }
        items.extend(self.names.iter().cloned());
        if items.is_empty() {
            items.push("none".into());
        }
        format!("{}{}", if self.negate { "!" } else { "" }, items.join(","))
    }
}

/// Which results are shown (`-e status=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    All,
    Successful,
    Failed,
}

/// Everything `uiommufd trace` asks of the shim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub opts: Options,
    /// 0: none; 1: `-t`; 2: `-tt`; 3: `-ttt`.
    pub timestamps: u8,
    /// `-T`.
    pub time_spent: bool,
    /// `-f`.
    pub follow: bool,
    pub filter: Filter,
    pub status: Status,
}

impl Config {
    /// One `-e` expression: `trace=SET`, `status=successful|failed` (or
    /// a bare SET, as strace takes it).
    pub fn apply_expr(&mut self, expr: &str) -> Result<(), String> {
        let (what, value) = expr.split_once('=').unwrap_or(("trace", expr));
        match what {
            "trace" | "t" => self.filter = Filter::parse(value)?,
            "status" => {
                self.status = match value {
                    "all" => Status::All,
                    "successful" => Status::Successful,
                    "failed" => Status::Failed,
                    _ => return Err(format!("status={value}: one of all, successful, failed")),
                }
            }
            _ => return Err(format!("-e {what}=...: uiommufd trace knows trace= and status=")),
        }
        Ok(())
    }

    /// Whether a call with this result is shown.
    pub fn shows_result(&self, ok: bool) -> bool {
        match self.status {
            Status::All => true,
            Status::Successful => ok,
            Status::Failed => !ok,
        }
    }

    /// The value of `UIOMMUFD_TRACE_OPTS`.
    pub fn to_env(&self) -> String {
        let mut v = vec![format!("s={}", self.opts.strsize)];
        if self.timestamps > 0 {
            v.push(format!("t={}", self.timestamps));
        }
        if self.time_spent {
            v.push("T".into());
        }
        if self.follow {
            v.push("f".into());
        }
        if self.opts.redact {
            v.push("noaddr".into());
        }
        if self.filter != Filter::default() {
            v.push(format!("trace={}", self.filter.render()));
        }
        match self.status {
            Status::All => {}
            Status::Successful => v.push("status=successful".into()),
            Status::Failed => v.push("status=failed".into()),
        }
        v.join(";")
    }

    /// Parse `UIOMMUFD_TRACE_OPTS`. Items it does not know are errors (the
    /// shim then keeps the defaults).
    pub fn from_env(s: &str) -> Result<Config, String> {
        let mut c = Config::default();
        for item in s.split(';').filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                None if item == "T" => c.time_spent = true,
                None if item == "f" => c.follow = true,
                None if item == "noaddr" => c.opts.redact = true,
                Some(("s", n)) => c.opts.strsize = n.parse().map_err(|_| format!("s={n}"))?,
                Some(("t", n)) => c.timestamps = n.parse::<u8>().map_err(|_| format!("t={n}"))?.min(3),
                Some(("trace", _)) | Some(("status", _)) => c.apply_expr(item)?,
                _ => return Err(format!("unknown trace option {item:?}")),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::*;

    #[test]
    fn sets_select_by_name_and_class() {
        let f = Filter::parse("IOMMU_IOAS_MAP,iommu_ioas_unmap").unwrap();
        assert!(f.selects("IOMMU_IOAS_MAP", IOMMUFD | IOAS));
        assert!(f.selects("IOMMU_IOAS_UNMAP", IOMMUFD | IOAS));
        assert!(!f.selects("IOMMU_IOAS_ALLOC", IOMMUFD | IOAS));
        let f = Filter::parse("ioas,%hwpt,vfio").unwrap();
        assert!(f.selects("IOMMU_IOAS_ALLOC", IOMMUFD | IOAS));
        assert!(f.selects("IOMMU_HWPT_ALLOC", IOMMUFD | HWPT));
        assert!(f.selects("pread64", VFIO | VFIO_DEVICE | IO));
        assert!(!f.selects("IOMMU_DESTROY", IOMMUFD));
        let f = Filter::parse("!IOMMU_TEST_CMD").unwrap();
        assert!(!f.selects("IOMMU_TEST_CMD", IOMMUFD | TEST));
        assert!(f.selects("IOMMU_DESTROY", IOMMUFD));
        assert!(Filter::parse("read,mmap").unwrap().selects("mmap", MMAP | VFIO));
        assert!(Filter::parse("IOMMU_NOPE").is_err());
        assert!(!Filter::parse("none").unwrap().selects("IOMMU_DESTROY", IOMMUFD));
    }

    #[test]
    fn the_variable_round_trips() {
        let mut c = Config { timestamps: 2, time_spent: true, follow: true, ..Config::default() };
        c.opts = Options { strsize: 8, redact: true };
        c.apply_expr("trace=!ioas,IOMMU_DESTROY").unwrap();
        c.apply_expr("status=failed").unwrap();
        let env = c.to_env();
        assert_eq!(Config::from_env(&env).unwrap(), c, "{env}");
        assert_eq!(Config::from_env("").unwrap(), Config::default());
        assert_eq!(Config::from_env(&Config::default().to_env()).unwrap(), Config::default());
        assert!(Config::from_env("bogus").is_err());
        let mut d = Config::default();
        assert!(d.apply_expr("status=maybe").is_err());
        assert!(d.apply_expr("signal=none").is_err());
        d.apply_expr("hwpt").unwrap();
        assert!(d.filter.selects("IOMMU_HWPT_ALLOC", HWPT) && !d.filter.selects("IOMMU_DESTROY", IOMMUFD));
    }
}
