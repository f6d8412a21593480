//! What `uiommufd inspect` shows of a running program: every iommufd
//! context of the process with its objects, their dependency edges and
//! state (the way the kernel's debugfs shows a domain), collected from the
//! contexts [`crate::status`] registers, and page-table leaves on request.
//!
//! The shim's control socket answers with [`Snapshot::to_text`]; the
//! command line reads it back with [`Snapshot::parse`] to draw it. One
//! record per line, `word value key=value ...`, values without spaces:
//!
//! ```text
//! process 1234
//! pinned pages=34 user_locked=34 process_locked=0
//! context 1 release=7.3 account=user vfio_ioas=-
//! object 1 2 ioas users=1 alignment=0x1 ranges=0x0-0xffffffffffffffff
//! area 1 2 0x1000000 0x1001fff prot=rw pages=2 pinned=2 charged=user from=user:0x7f0000000000+0x0
//! object 1 3 device users=0 name=mock0
//! attach 1 3 rid 4
//! fault 1 6 3 cookie=- flags=0x1 pasid=1 grpid=1 perm=0x1 addr=0x1000
//! event 1 9 seq=0 len=32
//! object 1 4 hwpt_paging users=1 ioas=2 auto=1 nest_parent=0 dirty=0 coherent=0 fault=- pgsizes=0x800
//! leaf 0x1000000 0x800 0x123000 rw level=0 entry=0x123007
//! ```
//!
//! Counts and states are what the engine holds at the moment of the
//! request; objects are looked at without being borrowed (holding them
//! does not make `IOMMU_DESTROY` fail), and page tables are read without
//! side effects ([`uiommufd_hw::Domain::leaves`]).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use uiommufd_core::account::AccountMode;

use uiommufd_core::object::{Object, ObjectId};
use uiommufd_core::Iommufd;
use uiommufd_hw::Prot;

/// One object and what it refers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The context it belongs to (see [`Context::number`]).
    pub context: u32,
    /// Its object ID.
    pub id: ObjectId,
    /// `ioas`, `hwpt_paging`, `device`, ... (as the status file names them).
    pub kind: String,
    /// Dependency edges held on it (what makes `IOMMU_DESTROY` `EBUSY`).
    pub users: u32,
    /// Its state and references, `key=value` (a reference is the ID of
    /// another object of the context, or `-`).
    pub fields: Vec<(String, String)>,
}

impl ObjectInfo {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// One IOAS area: an IOVA range and what backs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AreaInfo {
    /// The context of its IOAS.
    pub context: u32,
    /// The IOAS it is in.
    pub ioas: ObjectId,
    /// First IOVA.
    pub iova: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
    /// `r`, `w`, `rw` (and `c` for cache-coherent).
    pub prot: String,
    /// Pages of the backing it spans.
    pub pages: u64,
    /// Pages of its backing pinned now.
    pub pinned: u64,
    /// Whose `RLIMIT_MEMLOCK` counter its pinned pages are charged to:
    /// `user`, `process` or `none` (`CAP_IPC_LOCK`).
    pub charged: String,
    /// `user:ADDR+OFFSET` or `file+OFFSET`; `-` while being built.
    pub from: String,
}

/// A device's attachment: at its requester ID (`rid`) or a PASID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attach {
    /// The context of the device.
    pub context: u32,
    /// The device object.
    pub device: ObjectId,
    /// `None`: the requester ID.
    pub pasid: Option<u32>,
    /// The HWPT attached there.
    pub hwpt: ObjectId,
}

/// An open iommufd (`/dev/iommu` or `/dev/vfio/vfio`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// From 1, in the order the process opened them.
    pub number: u32,
    /// The Linux release it answers as.
    pub release: String,
    /// Whom pinned pages are charged to: `user` or `process`.
    pub account: String,
    /// The IOAS the VFIO compatibility uses.
    pub vfio_ioas: Option<ObjectId>,
}

/// One page request a fault queue holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultInfo {
    /// The context of the queue.
    pub context: u32,
    /// The fault queue object.
    pub queue: ObjectId,
    /// The device that raised it.
    pub device: ObjectId,
    /// The cookie its group was read with (`None`: not read yet).
    pub cookie: Option<u32>,
    /// `IOMMU_PGFAULT_FLAGS_*`.
    pub flags: u32,
    /// The PASID (valid with `IOMMU_PGFAULT_FLAGS_PASID_VALID`).
    pub pasid: u32,
    /// The page request group.
    pub grpid: u32,
    /// `IOMMU_PGFAULT_PERM_*`.
    pub perm: u32,
    /// The faulting address.
    pub addr: u64,
}

/// One record a vEVENTQ holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventInfo {
    /// The context of the queue.
    pub context: u32,
    /// The vEVENTQ object.
    pub queue: ObjectId,
    /// Its sequence number.
    pub sequence: u32,
    /// The driver data's length (`None`: the lost-events marker).
    pub len: Option<u64>,
}

/// Everything at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The process.
    pub pid: u32,
    /// Pages pinned for DMA by the engine of this process (each `Pages`
    /// once, however many areas share it): `(all, charged to the user's
    /// RLIMIT_MEMLOCK counter, charged to the process's)`; the rest are not
    /// charged (`CAP_IPC_LOCK`).
    pub pinned: (u64, u64, u64),
    /// Its open iommufds.
    pub contexts: Vec<Context>,
    /// Every object of every context.
    pub objects: Vec<ObjectInfo>,
    /// Every IOAS area.
    pub areas: Vec<AreaInfo>,
    /// Every device attachment.
    pub attachments: Vec<Attach>,
    /// Every page request the fault queues hold.
    pub faults: Vec<FaultInfo>,
    /// Every record the vEVENTQs hold.
    pub events: Vec<EventInfo>,
}

fn prot(p: Prot) -> String {
    let mut s = String::new();
    for (bit, c) in [(Prot::READ, 'r'), (Prot::WRITE, 'w'), (Prot::CACHE, 'c'), (Prot::MMIO, 'm'), (Prot::PRIV, 'p')] {
        if p.contains(bit) {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

fn id_or_dash(id: Option<ObjectId>) -> String {
    id.map_or("-".into(), |i| i.to_string())
}

fn flag(b: bool) -> String {
    u8::from(b).to_string()
}

/// The contexts of this process, numbered from 1 in the order they were
/// opened.
fn numbered() -> Vec<(u32, Arc<Iommufd>)> {
    crate::status::contexts().into_iter().zip(1..).map(|(c, n)| (n, c)).collect()
}

impl Snapshot {
    /// The engine of this process now.
    pub fn now() -> Snapshot {
        let mut s = Snapshot { pid: std::process::id(), ..Snapshot::default() };
        let mut seen = std::collections::HashSet::new();
        for (n, ctx) in numbered() {
            let account = match ctx.account_mode() {
                uiommufd_core::ctx::AccountMode::User => "user",
                uiommufd_core::ctx::AccountMode::Process => "process",
            };
            let vfio = ctx.vfio_ioas_get().ok();
            s.contexts.push(Context {
                number: n,
                release: ctx.release().name.into(),
                account: account.into(),
                vfio_ioas: vfio,
            });
            for (id, obj, users) in ctx.objects().snapshot() {
                s.object(n, id, &obj, users, &mut seen);
            }
        }
        s
    }

    /// Count the pinned pages of `pages` unless `seen` already has them.
    fn pinned_by(&mut self, pages: &Arc<uiommufd_core::pages::Pages>, seen: &mut HashSet<usize>) {
        if seen.insert(Arc::as_ptr(pages) as usize) {
            let n = pages.npinned();
            self.pinned.0 += n;
            match pages.account_mode() {
                AccountMode::User => self.pinned.1 += n,
                AccountMode::Process => self.pinned.2 += n,
                AccountMode::None => {}
            }
        }
    }

    fn object(&mut self, context: u32, id: ObjectId, obj: &Object, users: u32, seen: &mut HashSet<usize>) {
        let mut f: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| f.push((k.to_string(), v));
        let kind = match obj {
            Object::Ioas(ioas) => {
                let iopt = ioas.iopt();
                let (ranges, align) = iopt.iova_ranges();
                put("alignment", format!("{align:#x}"));
                let r: Vec<String> = ranges.iter().map(|(a, b)| format!("{a:#x}-{b:#x}")).collect();
                put("ranges", if r.is_empty() { "-".into() } else { r.join(",") });
                put("domains", iopt.domains().len().to_string());
                let hwpts: Vec<String> =
                    ioas.hwpts().iter().filter_map(|w| w.upgrade()).map(|h| h.id().to_string()).collect();
                put("hwpts", if hwpts.is_empty() { "-".into() } else { hwpts.join(",") });
                for a in iopt.areas() {
                    if let Some(p) = &a.pages {
                        self.pinned_by(p, seen);
                    }
                    let (pages, pinned, from) = match &a.pages {
                        Some(p) if p.is_file() => (p.npages(), p.npinned(), format!("file+{:#x}", a.start_byte)),
                        Some(p) => (p.npages(), p.npinned(), format!("user:{:#x}+{:#x}", p.uptr(), a.start_byte)),
                        None => (0, 0, "-".into()),
                    };
                    let charged = match a.pages.as_ref().map(|p| p.account_mode()) {
                        Some(AccountMode::User) => "user",
                        Some(AccountMode::Process) => "process",
                        Some(AccountMode::None) => "none",
                        None => "-",
                    };
                    self.areas.push(AreaInfo {
                        context,
                        ioas: id,
                        iova: a.iova,
                        last: a.last,
                        prot: prot(a.prot),
                        pages,
                        pinned,
                        charged: charged.into(),
                        from,
                    });
                }
                "ioas"
            }
            Object::HwptPaging(h) => {
                put("ioas", h.ioas().id().to_string());
                put("auto", flag(h.is_auto()));
                put("nest_parent", flag(h.nest_parent()));
                put("dirty", flag(h.dirty_tracking()));
                put("coherent", flag(h.enforce_cache_coherency()));
                put("fault", id_or_dash(h.fault().map(|f| f.id())));
                put("pgsizes", format!("{:#x}", h.domain().pgsize_bitmap()));
                "hwpt_paging"
            }
            Object::HwptNested(h) => {
                put("parent", h.parent().id().to_string());
                put("viommu", id_or_dash(h.viommu().map(|v| v.id())));
                put("fault", id_or_dash(h.fault().map(|f| f.id())));
                "hwpt_nested"
            }
            Object::Device(d) => {
                put("name", d.dev().name().replace(' ', "_"));
                put("enforced_coherent", flag(d.enforced_coherent()));
                put("vdevice", id_or_dash(d.vdev_link().vdev_id()));
                for (pasid, hwpt) in d.attachments() {
                    let pasid = (pasid != uiommufd_core::device::NO_PASID).then_some(pasid);
                    self.attachments.push(Attach { context, device: id, pasid, hwpt });
                }
                "device"
            }
            Object::Fault(q) => {
                let (to_read, to_answer) = q.pending();
                put("to_read", to_read.to_string());
                put("awaiting_response", to_answer.to_string());
                for (device, cookie, reqs) in q.groups() {
                    for r in reqs {
                        self.faults.push(FaultInfo {
                            context,
                            queue: id,
                            device,
                            cookie,
                            flags: r.flags,
                            pasid: r.pasid,
                            grpid: r.grpid,
                            perm: r.perm,
                            addr: r.addr,
                        });
                    }
                }
                "fault"
            }
            Object::Access(a) => {
                put("ioas", id_or_dash(a.ioas().map(|i| i.id())));
                put("needs_pin_pages", flag(a.needs_pin_pages()));
                "access"
            }
            Object::Selftest(t) => {
                put("device", t.idev_id().to_string());
                "selftest"
            }
            Object::Viommu(v) => {
                put("type", format!("{:#x}", v.viommu_type()));
                put("parent", v.parent().id().to_string());
                let ids: Vec<String> = v.virt_ids().iter().map(|i| format!("{i:#x}")).collect();
                put("virt_ids", if ids.is_empty() { "-".into() } else { ids.join(",") });
                "viommu"
            }
            Object::Vdevice(v) => {
                put("viommu", v.viommu().id().to_string());
                put("device", v.device().id().to_string());
                put("virt_id", format!("{:#x}", v.virt_id()));
                "vdevice"
            }
            Object::Veventq(q) => {
                let (events, lost) = q.pending();
                put("type", format!("{:#x}", q.veventq_type()));
                put("depth", q.depth().to_string());
                put("events", events.to_string());
                put("lost", flag(lost));
                for (sequence, len) in q.records() {
                    self.events.push(EventInfo { context, queue: id, sequence, len: len.map(|l| l as u64) });
                }
                "veventq"
            }
            Object::HwQueue(q) => {
                put("type", format!("{:#x}", q.queue_type()));
                put("index", q.index().to_string());
                "hw_queue"
            }
        };
        self.objects.push(ObjectInfo { context, id, kind: kind.into(), users, fields: f });
    }

    /// The wire form (see the module doc).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "process {}", self.pid);
        let _ = writeln!(
            s,
            "pinned pages={} user_locked={} process_locked={}",
            self.pinned.0, self.pinned.1, self.pinned.2
        );
        for c in &self.contexts {
            let _ = writeln!(
                s,
                "context {} release={} account={} vfio_ioas={}",
                c.number,
                c.release,
                c.account,
                id_or_dash(c.vfio_ioas)
            );
        }
        for o in &self.objects {
            let _ = write!(s, "object {} {} {} users={}", o.context, o.id, o.kind, o.users);
            for (k, v) in &o.fields {
                let _ = write!(s, " {k}={v}");
            }
            s.push('\n');
        }
        for a in &self.areas {
            let _ = writeln!(
                s,
                "area {} {} {:#x} {:#x} prot={} pages={} pinned={} charged={} from={}",
                a.context, a.ioas, a.iova, a.last, a.prot, a.pages, a.pinned, a.charged, a.from
            );
        }
        for a in &self.attachments {
            let pasid = a.pasid.map_or("rid".to_string(), |p| p.to_string());
            let _ = writeln!(s, "attach {} {} {pasid} {}", a.context, a.device, a.hwpt);
        }
        for f in &self.faults {
            let _ = writeln!(
                s,
                "fault {} {} {} cookie={} flags={:#x} pasid={} grpid={} perm={:#x} addr={:#x}",
                f.context,
                f.queue,
                f.device,
                f.cookie.map_or("-".into(), |c| c.to_string()),
                f.flags,
                f.pasid,
                f.grpid,
                f.perm,
                f.addr
            );
        }
        for e in &self.events {
            let len = e.len.map_or("lost".into(), |l| l.to_string());
            let _ = writeln!(s, "event {} {} seq={} len={len}", e.context, e.queue, e.sequence);
        }
        s
    }

    /// Read the wire form back (unknown lines are skipped, so that an older
    /// reader copes with a newer shim).
    pub fn parse(text: &str) -> Result<Snapshot, String> {
        let mut s = Snapshot::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let Some(word) = w.next() else { continue };
            let rest: Vec<&str> = w.collect();
            let bad = || format!("bad line {line:?}");
            let num =
                |i: usize| -> Result<u64, String> { parse_num(rest.get(i).copied().ok_or_else(bad)?).ok_or_else(bad) };
            let kv = |from: usize| -> Vec<(String, String)> {
                rest[from.min(rest.len())..]
                    .iter()
                    .filter_map(|t| t.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            };
            let key = |from: usize, k: &str| kv(from).into_iter().find(|(a, _)| a == k).map(|(_, v)| v);
            match word {
                "process" => s.pid = num(0)? as u32,
                "pinned" => {
                    let n = |k: &str| key(0, k).and_then(|v| parse_num(&v)).unwrap_or(0);
                    s.pinned = (n("pages"), n("user_locked"), n("process_locked"));
                }
                "context" => s.contexts.push(Context {
                    number: num(0)? as u32,
                    release: key(1, "release").unwrap_or_default(),
                    account: key(1, "account").unwrap_or_default(),
                    vfio_ioas: key(1, "vfio_ioas").and_then(|v| v.parse().ok()),
                }),
                "object" => {
                    let mut fields = kv(3);
                    let users = fields.iter().position(|(k, _)| k == "users").map(|i| fields.remove(i).1);
                    s.objects.push(ObjectInfo {
                        context: num(0)? as u32,
                        id: num(1)? as u32,
                        kind: rest.get(2).ok_or_else(bad)?.to_string(),
                        users: users.and_then(|u| u.parse().ok()).unwrap_or(0),
                        fields,
                    });
                }
                "area" => s.areas.push(AreaInfo {
                    context: num(0)? as u32,
                    ioas: num(1)? as u32,
                    iova: num(2)?,
                    last: num(3)?,
                    prot: key(4, "prot").unwrap_or_default(),
                    pages: key(4, "pages").and_then(|v| parse_num(&v)).unwrap_or(0),
                    pinned: key(4, "pinned").and_then(|v| parse_num(&v)).unwrap_or(0),
                    charged: key(4, "charged").unwrap_or_default(),
                    from: key(4, "from").unwrap_or_default(),
                }),
                "attach" => s.attachments.push(Attach {
                    context: num(0)? as u32,
                    device: num(1)? as u32,
                    pasid: if rest.get(2) == Some(&"rid") { None } else { Some(num(2)? as u32) },
                    hwpt: num(3)? as u32,
                }),
                "fault" => {
                    let n = |k: &str| key(3, k).and_then(|v| parse_num(&v)).unwrap_or(0);
                    s.faults.push(FaultInfo {
                        context: num(0)? as u32,
                        queue: num(1)? as u32,
                        device: num(2)? as u32,
                        cookie: key(3, "cookie").and_then(|v| v.parse().ok()),
                        flags: n("flags") as u32,
                        pasid: n("pasid") as u32,
                        grpid: n("grpid") as u32,
                        perm: n("perm") as u32,
                        addr: n("addr"),
                    });
                }
                "event" => s.events.push(EventInfo {
                    context: num(0)? as u32,
                    queue: num(1)? as u32,
                    sequence: key(2, "seq").and_then(|v| parse_num(&v)).ok_or_else(bad)? as u32,
                    len: key(2, "len").and_then(|v| parse_num(&v)),
                }),
                _ => {}
            }
        }
        Ok(s)
    }
}

/// A decimal or `0x` hexadecimal number.
pub fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The leaves of HWPT `hwpt` of context `context` over `len` bytes at
/// `iova`, one `leaf IOVA SIZE PADDR PROT level=N entry=0xE` line each (at
/// most `max`), or why there are none.
pub fn page_table(context: u32, hwpt: ObjectId, iova: u64, len: u64, max: usize) -> Result<String, String> {
    let ctx = numbered()
        .into_iter()
        .find(|(n, _)| *n == context)
        .map(|(_, c)| c)
        .ok_or_else(|| format!("no context {context}"))?;
    let domain = ctx
        .objects()
        .snapshot()
        .into_iter()
        .find(|(id, _, _)| *id == hwpt)
        .and_then(|(_, obj, _)| match obj {
            Object::HwptPaging(h) => Some((Arc::clone(h.domain()), false)),
            Object::HwptNested(h) => Some((Arc::clone(h.domain()), true)),
            _ => None,
        })
        .ok_or_else(|| format!("no HWPT {hwpt} in context {context}"))?;
    let (domain, nested) = domain;
    let mut out = String::new();
    let mut n = 0usize;
    let shown = domain.leaves(iova, len, &mut |l| {
        n += 1;
        if n <= max {
            let _ = writeln!(
                out,
                "leaf {:#x} {:#x} {:#x} {} level={} entry={:#x}",
                l.iova,
                l.size,
                l.paddr,
                prot(l.prot),
                l.level,
                l.entry
            );
        }
    });
    if !shown {
        return Err(if nested {
            format!("HWPT {hwpt} is nested: its stage 1 is the guest's tables, in the guest's memory")
        } else {
            format!("HWPT {hwpt}'s IOMMU model does not show its page table")
        });
    }
    if n > max {
        let _ = writeln!(out, "more {}", n - max);
    }
    Ok(out)
}

/// The directory of the control sockets: `$XDG_RUNTIME_DIR/uiommufd`, or
/// `/tmp/uiommufd-UID` without it (created owner-only by the shim).
pub fn socket_dir() -> std::path::PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => std::path::Path::new(&d).join("uiommufd"),
        // SAFETY: getuid has no preconditions.
        None => std::path::PathBuf::from(format!("/tmp/uiommufd-{}", unsafe { libc::getuid() })),
    }
}

/// The control socket of process `pid` under `dir`.
pub fn socket_path(dir: &std::path::Path, pid: u32) -> std::path::PathBuf {
    dir.join(format!("inspect-{pid}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FdHost, File, LocalFds, Node};
    use zerocopy::IntoBytes;

    #[test]
    fn a_context_with_an_ioas_area_and_a_mock_device_round_trips() {
        let fds = LocalFds::default();
        let fd = fds.install(Arc::new(File::open(Node::Iommu)), true).unwrap();
        let file = fds.get(fd).unwrap();
        let ioctl = |req: u32, arg: &mut [u8]| file.ioctl(&fds, req as u64, arg.as_mut_ptr() as u64);
        let mut alloc = uiommufd_abi::IommuIoasAlloc { size: 12, ..Default::default() };
        ioctl(uiommufd_abi::IOMMU_IOAS_ALLOC, alloc.as_mut_bytes()).unwrap();
        let ioas = alloc.out_ioas_id;
        let mut md = uiommufd_abi::test_cmd::IommuTestCmd::new(uiommufd_abi::test_cmd::IOMMU_TEST_OP_MOCK_DOMAIN);
        md.id = ioas;
        ioctl(uiommufd_abi::test_cmd::IOMMU_TEST_CMD, md.as_mut_bytes()).unwrap();
        let out: uiommufd_abi::test_cmd::TestMockDomain = md.payload_as();
        let buf = vec![0u8; 3 * 4096];
        let va = (buf.as_ptr() as u64 + 4095) & !4095;
        let mut map = uiommufd_abi::IommuIoasMap {
            size: 40,
            flags: uiommufd_abi::IOMMU_IOAS_MAP_READABLE | uiommufd_abi::IOMMU_IOAS_MAP_FIXED_IOVA,
            ioas_id: ioas,
            user_va: va,
            length: 4096,
            iova: 1 << 24,
            ..Default::default()
        };
        ioctl(uiommufd_abi::IOMMU_IOAS_MAP, map.as_mut_bytes()).unwrap();

        let snap = Snapshot::now();
        let ours = |o: &&ObjectInfo| o.get("hwpts").is_some_and(|h| h == out.out_hwpt_id.to_string());
        let io = snap.objects.iter().find(ours).expect("our IOAS");
        let n = io.context;
        assert_eq!((io.kind.as_str(), io.users), ("ioas", 1));
        let area = snap.areas.iter().find(|a| a.context == n && a.ioas == io.id).expect("the area");
        assert_eq!((area.iova, area.last, area.prot.as_str(), area.pinned), (1 << 24, (1 << 24) + 4095, "rc", 1));
        assert!(area.from.starts_with(&format!("user:{va:#x}")), "{area:?}");
        let hwpt = snap.objects.iter().find(|o| o.context == n && o.id == out.out_hwpt_id).unwrap();
        assert_eq!(hwpt.get("ioas"), Some(&*io.id.to_string()));
        assert!(snap.attachments.iter().any(|a| a.context == n && a.device == out.out_idev_id && a.pasid.is_none()));
        assert_eq!(Snapshot::parse(&snap.to_text()).unwrap(), snap);

        // The mock's leaf for the page: the pinned frame, readable.
        let leaves = page_table(n, out.out_hwpt_id, 1 << 24, 4096, 16).unwrap();
        assert!(leaves.starts_with("leaf 0x1000000 0x"), "{leaves}");
        let readable = |l: &str| l.split_whitespace().nth(4).is_some_and(|p| p.starts_with('r') && !p.contains('w'));
        assert!(leaves.lines().all(readable), "{leaves}");
        assert!(page_table(n, io.id, 0, 1, 1).is_err());
        fds.close(fd).unwrap();
    }
}
