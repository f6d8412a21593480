//! `uiommufd inspect PID`: the iommufd state of a program running under
//! `uiommufd run --inspect`, asked over its control socket (see
//! `uiommufd_dispatch::inspect`), shown as text the way the kernel's
//! debugfs shows a domain, as Graphviz dot, or as an SVG picture of the
//! object graph and of each IOAS's IOVA space drawn by us.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use uiommufd_dispatch::inspect::{self, ObjectInfo, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Objects, references, areas, attachments, queues, pinned pages.
    Text,
    /// The object graph as Graphviz dot (`dot -Tsvg`).
    Dot,
    /// The object graph and the IOVA space of each IOAS, as SVG.
    Svg,
    /// The control socket's answer, as it came.
    Raw,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The program's process ID (it prints it, or see `pgrep`).
    pid: u32,
    /// How to show it.
    #[arg(long, short = 'F', value_enum, default_value = "text")]
    format: Format,
    /// Also dump the page table of a HWPT: `CONTEXT:HWPT[:IOVA:LENGTH]`
    /// (numbers in decimal or 0x hex; the whole IOVA space by default,
    /// at most 4096 leaves).
    #[arg(long, value_name = "CTX:HWPT[:IOVA:LEN]")]
    pt: Option<String>,
    /// Write to FILE instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Where the control socket of `pid` is: beside ours, else in the other
/// place the shim may have used (its environment may differ from ours).
fn socket(pid: u32) -> Result<PathBuf, String> {
    let ours = inspect::socket_path(&inspect::socket_dir(), pid);
    // SAFETY: getuid has no preconditions.
    let tmp = inspect::socket_path(std::path::Path::new(&format!("/tmp/uiommufd-{}", unsafe { libc::getuid() })), pid);
    [ours.clone(), tmp].into_iter().find(|p| p.exists()).ok_or_else(|| {
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
    let mut s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    s.write_all(format!("{request}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.strip_prefix("error ") {
        Some(why) => Err(why.trim().to_string()),
        None => Ok(out),
    }
}

pub fn inspect(args: InspectArgs) -> Result<ExitCode, String> {
    let path = socket(args.pid)?;
    let raw = ask(&path, "state")?;
    let snap = Snapshot::parse(&raw)?;
    let pt = match &args.pt {
        Some(spec) => {
            let parts: Vec<&str> = spec.split(':').collect();
            let n = |s: &str| inspect::parse_num(s).ok_or(format!("--pt {spec}: {s:?} is not a number"));
            let (ctx, hwpt, iova, len) = match parts.as_slice() {
                [c, h] => (n(c)?, n(h)?, 0, u64::MAX),
                [c, h, i, l] => (n(c)?, n(h)?, n(i)?, n(l)?),
                _ => return Err(format!("--pt {spec}: CONTEXT:HWPT or CONTEXT:HWPT:IOVA:LENGTH")),
            };
            let leaves = ask(&path, &format!("pt {ctx} {hwpt} {iova:#x} {len:#x}"));
            Some((ctx, hwpt, leaves.unwrap_or_else(|why| format!("error {why}\n"))))
        }
        None => None,
    };
    let out = match args.format {
        Format::Text => {
            let mut t = text(&snap);
            if let Some((ctx, hwpt, leaves)) = &pt {
                t += &leaves_text(*ctx, *hwpt, leaves);
            }
            t
        }
        Format::Dot => dot(&snap),
        Format::Svg => svg(&snap),
        Format::Raw => raw + &pt.map(|p| p.2).unwrap_or_default(),
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

/// The debugfs-like text.
fn text(s: &Snapshot) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "process {}: {} pinned for DMA; RLIMIT_MEMLOCK charged: user {}, process {}",
        s.pid,
        pages(s.pinned.0),
        pages(s.pinned.1),
        pages(s.pinned.2)
    );
    if s.contexts.is_empty() {
        let _ = writeln!(t, "no iommufd open");
    }
    for c in &s.contexts {
        let objs: Vec<&ObjectInfo> = s.objects.iter().filter(|o| o.context == c.number).collect();
        let _ = writeln!(
            t,
            "\niommufd context {} (Linux {}, pinned pages charged to the {}, VFIO compat IOAS {}): {} object{}",
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
                            "    area [{:#x}, {:#x}] {} {}, {} pinned <- {}",
                            a.iova,
                            a.last,
                            a.prot,
                            pages(a.pages),
                            a.pinned,
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
                }
                "veventq" => {
                    let _ = writeln!(
                        t,
                        "    pending: {} event(s){}",
                        o.get("events").unwrap_or("?"),
                        if o.get("lost") == Some("1") { ", events lost" } else { "" }
                    );
                }
                _ => {}
            }
        }
    }
    t
}

fn leaves_text(ctx: u64, hwpt: u64, leaves: &str) -> String {
    let mut t = format!("\npage table of HWPT {hwpt} (context {ctx}):\n");
    for l in leaves.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["leaf", iova, size, pa, prot, rest @ ..] => {
                let _ = writeln!(t, "  IOVA {iova} +{size} -> PA {pa} {prot} {}", rest.join(" "));
            }
            ["more", n] => {
                let _ = writeln!(t, "  ... {n} more leaves");
            }
            _ => {}
        }
    }
    if let Some(why) = leaves.strip_prefix("error ") {
        t += &format!("  {}", why);
    } else if !leaves.contains("leaf ") {
        t += "  (nothing mapped)\n";
    }
    t
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
