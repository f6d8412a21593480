//! `uiommufd inspect PID`: the iommufd state of a program running under
//! `uiommufd run --inspect`, asked over its control socket (see
//! `uiommufd_dispatch::inspect`), shown as text the way the kernel's
//! debugfs shows a domain, as JSON, as Graphviz dot, or as an SVG picture
//! of the object graph and of each IOAS's IOVA space drawn by us.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use uiommufd_dispatch::inspect::{self, ObjectInfo, Snapshot};

use crate::info::json_str;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Objects, references, areas, attachments, queues, pinned pages.
    Text,
    /// The same as one JSON object.
    Json,
    /// The object graph as Graphviz dot (`dot -Tsvg`).
    Dot,
    /// The object graph and the IOVA space of each IOAS, as SVG.
    Svg,
    /// The control socket's answer, as it came.
    Raw,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The program's process ID (without it: the programs that can be
    /// inspected).
    pid: Option<u32>,
    /// How to show it.
    #[arg(long, short = 'F', value_enum, default_value = "text")]
    format: Format,
    /// The same as `-F json`.
    #[arg(long, conflicts_with_all = ["format", "dot", "svg"])]
    json: bool,
    /// The same as `-F dot`.
    #[arg(long, conflicts_with_all = ["format", "svg"])]
    dot: bool,
    /// The same as `-F svg`.
    #[arg(long, conflicts_with = "format")]
    svg: bool,
    /// Also show the page-table leaves over this IOVA range: `START[,LENGTH]`
    /// (decimal or 0x hex; one 4 KiB page by default), of every paging
    /// HWPT, or of the one --hwpt names (at most 4096 leaves each).
    #[arg(long, value_name = "START[,LEN]")]
    iova: Option<String>,
    /// The HWPT whose page table --iova shows: `ID`, or `CONTEXT:ID` when
    /// the program has more than one iommufd open.
    #[arg(long, value_name = "[CTX:]ID", requires = "iova")]
    hwpt: Option<String>,
    /// Write to FILE instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The directories the shim may have used: ours, and `/tmp`'s (its
/// environment may differ from ours).
fn socket_dirs() -> [PathBuf; 2] {
    // SAFETY: getuid has no preconditions.
    [inspect::socket_dir(), PathBuf::from(format!("/tmp/uiommufd-{}", unsafe { libc::getuid() }))]
}

/// Where the control socket of `pid` is.
fn socket(pid: u32) -> Result<PathBuf, String> {
    let ours = inspect::socket_path(&inspect::socket_dir(), pid);
    socket_dirs().iter().map(|d| inspect::socket_path(d, pid)).find(|p| p.exists()).ok_or_else(|| {
        let running = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if running {
            format!(
                "process {pid} has no control socket ({}): run it with `uiommufd run --inspect` (it opens one at its \
                 first open of /dev/iommu or a VFIO node)",
                ours.display()
            )
        } else {
            format!("no process {pid}")
        }
    })
}

/// Send one request, read the whole answer.
fn ask(path: &std::path::Path, request: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| format!("{}: {e} (the program may have ended or replaced itself with exec)", path.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    s.write_all(format!("{request}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.strip_prefix("error ") {
        Some(why) => Err(why.trim().to_string()),
        None => Ok(out),
    }
}

/// The programs with a control socket that are still running: `PID
/// COMMAND LINE` each.
fn list() -> Result<ExitCode, String> {
    let mut found = std::collections::BTreeMap::new();
    for dir in socket_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(pid) =
                name.to_str().and_then(|n| n.strip_prefix("inspect-")?.strip_suffix(".sock")?.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                // Left by a program that crashed (or was killed): the
                // socket of a process that is gone answers nobody.
                if UnixStream::connect(e.path()).is_err() {
                    let _ = std::fs::remove_file(e.path());
                }
                continue;
            };
            {
                let cmd: Vec<String> = cmd
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into())
                    .collect();
                found.insert(pid, cmd.join(" "));
            }
        }
    }
    if found.is_empty() {
        println!("no program to inspect: start one with `uiommufd run --inspect -- PROGRAM`");
    }
    for (pid, cmd) in found {
        println!("{pid} {cmd}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One HWPT's leaves over the range asked, or why there are none.
struct PageTable {
    context: u32,
    hwpt: u32,
    iova: u64,
    len: u64,
    leaves: Result<Vec<Leaf>, String>,
    /// Leaves beyond the 4096 shown.
    more: u64,
}

struct Leaf {
    iova: u64,
    size: u64,
    paddr: u64,
    prot: String,
    level: u32,
    entry: u64,
}

fn parse_leaves(text: &str) -> (Vec<Leaf>, u64) {
    let mut leaves = Vec::new();
    let mut more = 0;
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let n = |s: &str| inspect::parse_num(s.split_once('=').map_or(s, |kv| kv.1)).unwrap_or(0);
        match w.as_slice() {
            ["leaf", iova, size, pa, prot, level, entry] => leaves.push(Leaf {
                iova: n(iova),
                size: n(size),
                paddr: n(pa),
                prot: prot.to_string(),
                level: n(level) as u32,
                entry: n(entry),
            }),
            ["more", m] => more = n(m),
            _ => {}
        }
    }
    (leaves, more)
}

fn num(s: &str, what: &str) -> Result<u64, String> {
    inspect::parse_num(s.trim()).ok_or_else(|| format!("{what}: {s:?} is not a number"))
}

/// The page tables `--iova` (and `--hwpt`) ask for.
fn page_tables(args: &InspectArgs, snap: &Snapshot, path: &std::path::Path) -> Result<Vec<PageTable>, String> {
    let Some(range) = &args.iova else { return Ok(Vec::new()) };
    let (iova, len) = match range.split_once(',') {
        Some((a, l)) => (num(a, "--iova")?, num(l, "--iova")?),
        None => (num(range, "--iova")?, 0x1000),
    };
    if len == 0 {
        return Err("--iova: the length is 0".into());
    }
    let hwpts: Vec<(u32, u32)> = match &args.hwpt {
        Some(h) => {
            let (ctx, id) = match h.split_once(':') {
                Some((c, i)) => (num(c, "--hwpt")? as u32, num(i, "--hwpt")? as u32),
                None => {
                    let id = num(h, "--hwpt")? as u32;
                    let with: Vec<u32> = snap
                        .objects
                        .iter()
                        .filter(|o| o.id == id && o.kind.starts_with("hwpt"))
                        .map(|o| o.context)
                        .collect();
                    match with.as_slice() {
                        [c] => (*c, id),
                        [] => return Err(format!("--hwpt {id}: no HWPT {id}")),
                        _ => {
                            return Err(format!("--hwpt {id}: more than one iommufd has a HWPT {id}; say CONTEXT:{id}"))
                        }
                    }
                }
            };
            vec![(ctx, id)]
        }
        None => snap.objects.iter().filter(|o| o.kind == "hwpt_paging").map(|o| (o.context, o.id)).collect(),
    };
    Ok(hwpts
        .into_iter()
        .map(|(context, hwpt)| {
            let answer = ask(path, &format!("pt {context} {hwpt} {iova:#x} {len:#x}"));
            let (leaves, more) = match answer {
                Ok(text) => {
                    let (l, m) = parse_leaves(&text);
                    (Ok(l), m)
                }
                Err(e) => (Err(e), 0),
            };
            PageTable { context, hwpt, iova, len, leaves, more }
        })
        .collect())
}

pub fn inspect(args: InspectArgs) -> Result<ExitCode, String> {
    let Some(pid) = args.pid else { return list() };
    let path = socket(pid)?;
    let raw = ask(&path, "state")?;
    let snap = Snapshot::parse(&raw)?;
    let pts = page_tables(&args, &snap, &path)?;
    let format = match (args.json, args.dot, args.svg) {
        (true, _, _) => Format::Json,
        (_, true, _) => Format::Dot,
        (_, _, true) => Format::Svg,
        _ => args.format,
    };
    let out = match format {
        Format::Text => text(&snap) + &pts.iter().map(leaves_text).collect::<String>(),
        Format::Json => json(&snap, &pts),
        Format::Dot => dot(&snap),
        Format::Svg => svg(&snap),
        Format::Raw => raw,
    };
    match &args.output {
        Some(f) => std::fs::write(f, out).map_err(|e| format!("{}: {e}", f.display()))?,
        None => print!("{out}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn kind_name(kind: &str) -> &str {
    match kind {
        "ioas" => "IOAS",
        "hwpt_paging" => "HWPT (paging)",
        "hwpt_nested" => "HWPT (nested)",
        "device" => "device",
        "fault" => "fault queue",
        "access" => "access",
        "selftest" => "mock device",
        "viommu" => "vIOMMU",
        "vdevice" => "vDEVICE",
        "veventq" => "vEVENTQ",
        "hw_queue" => "HW queue",
        k => k,
    }
}

/// The references of an object to others of its context:
/// `(field, target)`.
fn refs(o: &ObjectInfo) -> Vec<(&str, u32)> {
    let keys: &[&str] = match o.kind.as_str() {
        "hwpt_paging" => &["ioas", "fault"],
        "hwpt_nested" => &["parent", "viommu", "fault"],
        "access" => &["ioas"],
        "selftest" => &["device"],
        "viommu" => &["parent"],
        "vdevice" => &["viommu", "device"],
        _ => &[],
    };
    keys.iter().filter_map(|k| Some((*k, o.get(k)?.parse().ok()?))).collect()
}

fn pages(n: u64) -> String {
    format!("{n} page{}", if n == 1 { "" } else { "s" })
}

/// One page request: as read, or waiting to be.
fn fault_line(f: &inspect::FaultInfo) -> String {
    use uiommufd_abi as abi;
    let mut perm = String::new();
    for (bit, c) in [
        (abi::IOMMU_PGFAULT_PERM_READ, 'r'),
        (abi::IOMMU_PGFAULT_PERM_WRITE, 'w'),
        (abi::IOMMU_PGFAULT_PERM_EXEC, 'x'),
        (abi::IOMMU_PGFAULT_PERM_PRIV, 'p'),
    ] {
        if f.perm & bit != 0 {
            perm.push(c);
        }
    }
    let pasid =
        if f.flags & abi::IOMMU_PGFAULT_FLAGS_PASID_VALID != 0 { format!(" PASID {}", f.pasid) } else { String::new() };
    format!(
        "{} device {}{pasid} group {} addr {:#x} perm {}{}",
        f.cookie.map_or("to read:".to_string(), |c| format!("read, cookie {c}:")),
        f.device,
        f.grpid,
        f.addr,
        if perm.is_empty() { "-" } else { &perm },
        if f.flags & abi::IOMMU_PGFAULT_FLAGS_LAST_PAGE != 0 { " (last of its group)" } else { "" }
    )
}

/// The debugfs-like text.
fn text(s: &Snapshot) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "process {}: {} pinned for DMA; charged to RLIMIT_MEMLOCK: user {}, process {}, not charged (CAP_IPC_LOCK) {}",
        s.pid,
        pages(s.pinned.0),
        s.pinned.1,
        s.pinned.2,
        s.pinned.0.saturating_sub(s.pinned.1 + s.pinned.2)
    );
    if s.contexts.is_empty() {
        let _ = writeln!(t, "no iommufd open");
    }
    for c in &s.contexts {
        let objs: Vec<&ObjectInfo> = s.objects.iter().filter(|o| o.context == c.number).collect();
        let _ = writeln!(
            t,
            "\niommufd context {} (Linux {}, RLIMIT_MODE {}, VFIO compat IOAS {}): {} object{}",
            c.number,
            c.release,
            c.account,
            c.vfio_ioas.map_or("none".into(), |i| i.to_string()),
            objs.len(),
            if objs.len() == 1 { "" } else { "s" }
        );
        for o in objs {
            let _ = write!(t, "  {} {} (users {})", kind_name(&o.kind), o.id, o.users);
            let shown: Vec<String> = o.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !shown.is_empty() {
                let _ = write!(t, ": {}", shown.join(" "));
            }
            t.push('\n');
            match o.kind.as_str() {
                "ioas" => {
                    for a in s.areas.iter().filter(|a| a.context == c.number && a.ioas == o.id) {
                        let _ = writeln!(
                            t,
                            "    area [{:#x}, {:#x}] {} {}, {} pinned (charged: {}) <- {}",
                            a.iova,
                            a.last,
                            a.prot,
                            pages(a.pages),
                            a.pinned,
                            a.charged,
                            a.from
                        );
                    }
                }
                "device" => {
                    for a in s.attachments.iter().filter(|a| a.context == c.number && a.device == o.id) {
                        let at = a.pasid.map_or("RID".to_string(), |p| format!("PASID {p}"));
                        let _ = writeln!(t, "    {at} -> HWPT {}", a.hwpt);
                    }
                }
                "hwpt_paging" | "hwpt_nested" => {
                    let users: Vec<String> = s
                        .attachments
                        .iter()
                        .filter(|a| a.context == c.number && a.hwpt == o.id)
                        .map(|a| {
                            format!("device {} {}", a.device, a.pasid.map_or("RID".into(), |p| format!("PASID {p}")))
                        })
                        .collect();
                    if !users.is_empty() {
                        let _ = writeln!(t, "    used by {}", users.join(", "));
                    }
                }
                "fault" => {
                    let _ = writeln!(
                        t,
                        "    pending: {} to read, {} awaiting a response",
                        o.get("to_read").unwrap_or("?"),
                        o.get("awaiting_response").unwrap_or("?")
                    );
                    for f in s.faults.iter().filter(|f| f.context == c.number && f.queue == o.id) {
                        let _ = writeln!(t, "    {}", fault_line(f));
                    }
                }
                "veventq" => {
                    let _ = writeln!(
                        t,
                        "    pending: {} event(s){}",
                        o.get("events").unwrap_or("?"),
                        if o.get("lost") == Some("1") { ", events lost" } else { "" }
                    );
                    for e in s.events.iter().filter(|e| e.context == c.number && e.queue == o.id) {
                        let _ = match e.len {
                            Some(len) => writeln!(t, "    event sequence {} with {len} bytes of data", e.sequence),
                            None => writeln!(t, "    lost events up to sequence {}", e.sequence),
                        };
                    }
                }
                _ => {}
            }
        }
    }
    t
}

fn leaves_text(pt: &PageTable) -> String {
    let mut t = format!(
        "\npage table of HWPT {} (context {}), IOVA [{:#x}, {:#x}]:\n",
        pt.hwpt,
        pt.context,
        pt.iova,
        pt.iova.saturating_add(pt.len - 1)
    );
    match &pt.leaves {
        Err(why) => t += &format!("  {why}\n"),
        Ok(l) if l.is_empty() => t += "  (nothing mapped)\n",
        Ok(leaves) => {
            for l in leaves {
                let _ = writeln!(
                    t,
                    "  IOVA {:#x} +{:#x} -> PA {:#x} {} level={} entry={:#x}",
                    l.iova, l.size, l.paddr, l.prot, l.level, l.entry
                );
            }
            if pt.more > 0 {
                let _ = writeln!(t, "  ... {} more leaves", pt.more);
            }
        }
    }
    t
}

/// A value of the wire form as JSON: `-` is null, decimal numbers are
/// numbers, anything else a string.
fn json_value(v: &str) -> String {
    if v == "-" {
        "null".into()
    } else if !v.is_empty() && v.len() < 16 && v.bytes().all(|b| b.is_ascii_digit()) {
        v.into()
    } else {
        json_str(v)
    }
}

/// A field of an object as JSON: the lists (`hwpts`, `ranges`,
/// `virt_ids`) as arrays, `[]` for none.
fn json_field(key: &str, v: &str) -> String {
    match key {
        "hwpts" | "ranges" | "virt_ids" if v == "-" => "[]".into(),
        "hwpts" | "ranges" | "virt_ids" => format!("[{}]", v.split(',').map(json_value).collect::<Vec<_>>().join(", ")),
        _ => json_value(v),
    }
}

fn json_opt(v: Option<u32>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

/// The snapshot and the page tables asked for as one JSON object.
fn json(s: &Snapshot, pts: &[PageTable]) -> String {
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    let contexts = s.contexts.iter().map(|c| {
        format!(
            "{{\"context\": {}, \"release\": {}, \"account\": {}, \"vfio_ioas\": {}}}",
            c.number,
            json_str(&c.release),
            json_str(&c.account),
            json_opt(c.vfio_ioas)
        )
    });
    let objects = s.objects.iter().map(|o| {
        let fields: Vec<String> =
            o.fields.iter().map(|(k, v)| format!("{}: {}", json_str(k), json_field(k, v))).collect();
        format!(
            "{{\"context\": {}, \"id\": {}, \"kind\": {}, \"users\": {}, \"fields\": {{{}}}}}",
            o.context,
            o.id,
            json_str(&o.kind),
            o.users,
            fields.join(", ")
        )
    });
    let areas = s.areas.iter().map(|a| {
        format!(
            "{{\"context\": {}, \"ioas\": {}, \"iova\": {}, \"last\": {}, \"prot\": {}, \"pages\": {}, \"pinned\": {}, \"charged\": {}, \"from\": {}}}",
            a.context,
            a.ioas,
            a.iova,
            a.last,
            json_str(&a.prot),
            a.pages,
            a.pinned,
            json_value(&a.charged),
            json_value(&a.from)
        )
    });
    let attachments = s.attachments.iter().map(|a| {
        format!(
            "{{\"context\": {}, \"device\": {}, \"pasid\": {}, \"hwpt\": {}}}",
            a.context,
            a.device,
            json_opt(a.pasid),
            a.hwpt
        )
    });
    let faults = s.faults.iter().map(|f| {
        format!(
            "{{\"context\": {}, \"queue\": {}, \"device\": {}, \"cookie\": {}, \"flags\": {}, \"pasid\": {}, \"grpid\": {}, \"perm\": {}, \"addr\": {}}}",
            f.context,
            f.queue,
            f.device,
            json_opt(f.cookie),
            f.flags,
            f.pasid,
            f.grpid,
            f.perm,
            f.addr
        )
    });
    let events = s.events.iter().map(|e| {
        format!(
            "{{\"context\": {}, \"queue\": {}, \"sequence\": {}, \"length\": {}, \"lost\": {}}}",
            e.context,
            e.queue,
            e.sequence,
            e.len.map_or("null".into(), |l| l.to_string()),
            e.len.is_none()
        )
    });
    let tables = pts.iter().map(|pt| {
        let leaves = match &pt.leaves {
            Ok(l) => list(
                l.iter()
                    .map(|l| {
                        format!(
                            "{{\"iova\": {}, \"size\": {}, \"paddr\": {}, \"prot\": {}, \"level\": {}, \"entry\": {}}}",
                            l.iova,
                            l.size,
                            l.paddr,
                            json_str(&l.prot),
                            l.level,
                            l.entry
                        )
                    })
                    .collect(),
            ),
            Err(_) => "null".into(),
        };
        let error = pt.leaves.as_ref().err().map_or("null".into(), |e| json_str(e));
        format!(
            "{{\"context\": {}, \"hwpt\": {}, \"iova\": {}, \"length\": {}, \"leaves\": {leaves}, \"more\": {}, \"error\": {error}}}",
            pt.context, pt.hwpt, pt.iova, pt.len, pt.more
        )
    });
    format!(
        "{{\"pid\": {}, \"pinned\": {{\"pages\": {}, \"user_locked\": {}, \"process_locked\": {}}}, \"contexts\": {}, \"objects\": {}, \"areas\": {}, \"attachments\": {}, \"faults\": {}, \"events\": {}, \"page_tables\": {}}}\n",
        s.pid,
        s.pinned.0,
        s.pinned.1,
        s.pinned.2,
        list(contexts.collect()),
        list(objects.collect()),
        list(areas.collect()),
        list(attachments.collect()),
        list(faults.collect()),
        list(events.collect()),
        list(tables.collect())
    )
}

/// A node's name in the graph.
fn node(ctx: u32, id: u32) -> String {
    format!("c{ctx}_{id}")
}

fn label(o: &ObjectInfo) -> String {
    let mut l = format!("{} {}", kind_name(&o.kind), o.id);
    match o.kind.as_str() {
        "device" => l += &format!("\\n{}", o.get("name").unwrap_or("")),
        "hwpt_paging" if o.get("auto") == Some("1") => l += "\\nauto",
        "hwpt_paging" if o.get("nest_parent") == Some("1") => l += "\\nnest parent",
        _ => {}
    }
    l
}

/// Graphviz dot of the object graph: one cluster per context; an edge for
/// each reference (what holds a user of what) and each attachment.
fn dot(s: &Snapshot) -> String {
    let mut d = String::from("digraph iommufd {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
    for c in &s.contexts {
        let _ = writeln!(
            d,
            "  subgraph cluster_{} {{\n    label=\"context {} (Linux {})\";",
            c.number, c.number, c.release
        );
        for o in s.objects.iter().filter(|o| o.context == c.number) {
            let _ = writeln!(d, "    {} [label=\"{}\\nusers {}\"];", node(c.number, o.id), label(o), o.users);
        }
        d += "  }\n";
    }
    for o in &s.objects {
        for (field, to) in refs(o) {
            let _ = writeln!(d, "  {} -> {} [label=\"{field}\"];", node(o.context, o.id), node(o.context, to));
        }
    }
    for a in &s.attachments {
        let at = a.pasid.map_or("RID".to_string(), |p| format!("PASID {p}"));
        let _ =
            writeln!(d, "  {} -> {} [label=\"{at}\", style=bold];", node(a.context, a.device), node(a.context, a.hwpt));
    }
    d += "}\n";
    d
}

/// The column of a kind in the picture, left to right: what attaches,
/// what is attached to, what maps.
fn column(kind: &str) -> usize {
    match kind {
        "device" | "selftest" | "access" => 0,
        "vdevice" | "hwpt_nested" => 1,
        "viommu" | "fault" | "veventq" | "hw_queue" => 2,
        "hwpt_paging" => 3,
        _ => 4,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The SVG picture: per context, the objects in columns with arrows for
/// references and attachments; then per IOAS a bar of its IOVA space (from
/// its first area to its last) with each area drawn to scale.
fn svg(s: &Snapshot) -> String {
    const W: u32 = 180;
    const H: u32 = 44;
    const GAP_X: u32 = 70;
    const GAP_Y: u32 = 18;
    let mut body = String::new();
    let mut y0 = 40u32;
    let mut width = 5 * (W + GAP_X) + 40;
    let _ = writeln!(
        body,
        "<text x=\"20\" y=\"24\" class=\"t\">process {}: {} pinned</text>",
        s.pid,
        esc(&pages(s.pinned.0))
    );
    for c in &s.contexts {
        let objs: Vec<&ObjectInfo> = s.objects.iter().filter(|o| o.context == c.number).collect();
        let _ = writeln!(
            body,
            "<text x=\"20\" y=\"{}\" class=\"t\">iommufd context {} (Linux {})</text>",
            y0 + 16,
            c.number,
            esc(&c.release)
        );
        y0 += 28;
        if objs.is_empty() {
            let _ = writeln!(body, "<text x=\"20\" y=\"{}\" class=\"s\">no objects</text>", y0 + 4);
            y0 += 20;
        }
        let mut rows = [0u32; 5];
        let mut pos = std::collections::HashMap::new();
        for o in &objs {
            let col = column(&o.kind);
            let (x, y) = (20 + col as u32 * (W + GAP_X), y0 + rows[col] * (H + GAP_Y));
            rows[col] += 1;
            pos.insert(o.id, (x, y));
            let _ = writeln!(
                body,
                "<g><rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\" class=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" class=\"s\">users {}{}</text></g>",
                o.kind,
                x + 8,
                y + 18,
                esc(&format!("{} {}", kind_name(&o.kind), o.id)),
                x + 8,
                y + 35,
                o.users,
                esc(&match o.kind.as_str() {
                    "device" => format!(" · {}", o.get("name").unwrap_or("")),
                    "fault" => format!(" · {} to read", o.get("to_read").unwrap_or("?")),
                    "veventq" => format!(" · {} events", o.get("events").unwrap_or("?")),
                    "hwpt_paging" if o.get("auto") == Some("1") => " · auto".into(),
                    _ => String::new(),
                })
            );
        }
        // Edges: between neighbouring columns a straight line; within a
        // column from one box's edge to the other's; across columns below
        // the boxes, so as not to run through the ones between.
        let bottom = y0 + rows.iter().max().copied().unwrap_or(0) * (H + GAP_Y);
        let mut lane = 0u32;
        let mut arrow = |body: &mut String, from: u32, to: u32, text: &str, cls: &str| {
            let (Some(&(x1, y1)), Some(&(x2, y2))) = (pos.get(&from), pos.get(&to)) else { return };
            let (c1, c2) = ((x1 - 20) / (W + GAP_X), (x2 - 20) / (W + GAP_X));
            let (points, tx, ty) = if c1 == c2 {
                let (sy, ey) = if y2 > y1 { (y1 + H, y2) } else { (y1, y2 + H) };
                (format!("{},{sy} {},{ey}", x1 + W / 2, x2 + W / 2), x1 + W / 2 + 4, (sy + ey) / 2)
            } else {
                let (sx, ex) = if x2 > x1 { (x1 + W, x2) } else { (x1, x2 + W) };
                let (sy, ey) = (y1 + H / 2, y2 + H / 2);
                if c1.abs_diff(c2) == 1 {
                    (format!("{sx},{sy} {ex},{ey}"), (sx + ex) / 2, (sy + ey) / 2 - 3)
                } else {
                    lane += 1;
                    let yb = bottom + lane * 8;
                    let (bx, ax) = if x2 > x1 { (sx + 12, ex - 12) } else { (sx - 12, ex + 12) };
                    (format!("{sx},{sy} {bx},{sy} {bx},{yb} {ax},{yb} {ax},{ey} {ex},{ey}"), (bx + ax) / 2, yb - 2)
                }
            };
            let _ = writeln!(
                body,
                "<polyline points=\"{points}\" class=\"{cls}\" marker-end=\"url(#a)\"/>\
                 <text x=\"{tx}\" y=\"{ty}\" class=\"s\">{}</text>",
                esc(text)
            );
        };
        for o in &objs {
            for (field, to) in refs(o) {
                arrow(&mut body, o.id, to, field, "r");
            }
        }
        for a in s.attachments.iter().filter(|a| a.context == c.number) {
            arrow(&mut body, a.device, a.hwpt, &a.pasid.map_or("RID".into(), |p| format!("PASID {p}")), "at");
        }
        let lanes = lane;
        y0 = bottom + lanes * 8 + 20;
        // The IOVA space of each IOAS.
        for o in objs.iter().filter(|o| o.kind == "ioas") {
            let areas: Vec<_> = s.areas.iter().filter(|a| a.context == c.number && a.ioas == o.id).collect();
            let _ = writeln!(body, "<text x=\"20\" y=\"{}\" class=\"t\">IOAS {} IOVA space</text>", y0 + 14, o.id);
            y0 += 22;
            let Some(lo) = areas.iter().map(|a| a.iova).min() else {
                let _ = writeln!(body, "<text x=\"20\" y=\"{}\" class=\"s\">no areas</text>", y0 + 12);
                y0 += 24;
                continue;
            };
            // Areas and the gaps between them, each as wide as the
            // logarithm of its size (a 4 KiB area stays visible beside a
            // 1 GiB gap).
            let bar = (width - 40) as f64;
            let mut segs: Vec<(u64, u64, Option<&inspect::AreaInfo>)> = Vec::new();
            let mut at = lo;
            let mut sorted = areas.clone();
            sorted.sort_by_key(|a| a.iova);
            for a in &sorted {
                if a.iova > at {
                    segs.push((at, a.iova - 1, None));
                }
                segs.push((a.iova, a.last, Some(a)));
                at = a.last.saturating_add(1);
            }
            let weight = |(a, b, _): &(u64, u64, Option<&inspect::AreaInfo>)| ((b - a) as f64 + 2.0).log2();
            let total: f64 = segs.iter().map(weight).sum();
            let mut x = 20.0;
            for (i, seg) in segs.iter().enumerate() {
                let w = weight(seg) / total * bar;
                let (a, b, area) = seg;
                match area {
                    Some(area) => {
                        let _ = writeln!(
                            body,
                            "<rect x=\"{x:.1}\" y=\"{y0}\" width=\"{w:.1}\" height=\"26\" class=\"area\"><title>{}</title></rect>\
                             <text x=\"{:.1}\" y=\"{}\" class=\"s\">{}</text>",
                            esc(&format!("[{a:#x}, {b:#x}] {} {} from {}", area.prot, pages(area.pages), area.from)),
                            x + 2.0,
                            y0 + 40 + (i as u32 % 2) * 12,
                            esc(&format!("{a:#x} +{:#x} {}", b - a + 1, area.prot))
                        );
                    }
                    None => {
                        let _ = writeln!(
                            body,
                            "<rect x=\"{x:.1}\" y=\"{y0}\" width=\"{w:.1}\" height=\"26\" class=\"space\"/>\
                             <text x=\"{:.1}\" y=\"{}\" class=\"s\">{}</text>",
                            x + 2.0,
                            y0 + 17,
                            esc(&format!("gap {:#x}", b - a + 1))
                        );
                    }
                }
                x += w;
            }
            let _ = writeln!(
                body,
                "<text x=\"{}\" y=\"{}\" class=\"s\">(widths: log of the size)</text>",
                width - 190,
                y0 - 6
            );
            y0 += 80;
        }
    }
    width = width.max(400);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"monospace\" font-size=\"12\">\n\
         <defs><marker id=\"a\" markerWidth=\"8\" markerHeight=\"8\" refX=\"8\" refY=\"4\" orient=\"auto\">\
         <path d=\"M0,0 L8,4 L0,8 z\" fill=\"#555\"/></marker>\
         <style>rect{{fill:#eef;stroke:#446}} .ioas{{fill:#efe}} .hwpt_paging,.hwpt_nested{{fill:#fee}} \
         .device,.selftest{{fill:#ffd}} .space{{fill:#f4f4f4;stroke:#999}} .area{{fill:#8c8;stroke:#363}} \
         polyline{{fill:none}} .r{{stroke:#555}} .at{{stroke:#a33;stroke-width:2}} .t{{font-weight:bold}} .s{{font-size:10px;fill:#444}}</style></defs>\n\
         {body}</svg>\n",
        y0 + 20
    )
}
