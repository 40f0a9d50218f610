//! LossyFs: a test-only, in-memory FUSE filesystem that models what a power
//! cut leaves on a disk (feature `powerloss`, used by tests/powerloss.rs).
//!
//! Every file has two images: the *current* one, which reads see, and the
//! *durable* one, which survives a power cut. `write`, `truncate` and
//! `fallocate` change the current image only and mark the 4 KiB pages they
//! touch dirty; `fsync` or `fdatasync` of the file makes its durable image
//! equal to the current one (data and length; both calls are treated alike,
//! which is what `fdatasync` must guarantee for data and size).
//!
//! Every directory likewise has a current listing and a durable one. A
//! `create`, `mkdir`, `unlink`, `rmdir` or `rename` changes the current
//! listing and queues the change; only `fsync` of that directory makes its
//! listing durable. So a file whose data was fsynced but whose directory was
//! not vanishes at a power cut, and a rename may come undone: the strict
//! POSIX reading (ext4 and xfs are kinder: an fsync of a new file there also
//! commits its directory entry through the journal).
//!
//! A power cut ([`LossyFs::cut`], or an armed trigger that cuts just before
//! the n-th matching operation, see [`LossyFs::arm`]) freezes the
//! filesystem: from then on every request fails with `EIO`, as from a dead
//! disk, until the next [`LossyFs::mount`]. The new tree is built from the
//! root through the durable listings:
//!
//! - [`CutMode::DropUnsynced`]: exactly the durable images and listings;
//!   everything not fsynced is gone.
//! - [`CutMode::KeepSubset`]: each dirty page of each file is kept or lost at
//!   random (seeded): a later page of one `pwrite` may survive while an
//!   earlier one is lost (torn, reordered multi-page writes). For half the
//!   files with several dirty pages the subset is "every dirty page from a
//!   random one on" (the disk wrote the later pages first), for the others
//!   each page is a coin flip. A changed
//!   length is kept or lost at random; each directory keeps a random prefix
//!   of its queued changes (a journal replays metadata in order; a rename
//!   within one directory is atomic).
//!
//! Not modeled: sub-page (sector) tearing; hard links and symlinks (refused);
//! xattrs (`ENOSYS`); permission bits, owners and times (always durable);
//! a rename across directories is two independent changes (devreg and sled
//! rename within one directory only). File locks (`flock`, as sled takes)
//! are not implemented here, so the kernel handles them locally.
//!
//! After a cut the test unmounts and mounts again ([`Mounted::unmount`],
//! [`LossyFs::mount`]): a new mount starts with empty kernel caches, so
//! nothing read before the cut is served from the page cache. Each mount gets
//! its own generation; a request that reaches an older one fails with `EIO`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

/// The unit a power cut keeps or loses in [`CutMode::KeepSubset`].
pub const PAGE: u64 = 4096;
const ROOT: u64 = 1;
/// Only this process's mount reaches the tree, so the kernel may cache
/// entries and attributes for long; a cut is always followed by a remount.
const TTL: Duration = Duration::from_secs(3600);

type Page = Arc<[u8; PAGE as usize]>;

fn zero_page() -> Page {
    Arc::new([0u8; PAGE as usize])
}

/// What a power cut keeps of the writes that were not yet fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// Nothing: exactly what was fsynced survives.
    DropUnsynced,
    /// A random subset of the dirty pages and a random prefix of each
    /// directory's unsynced changes, drawn from this seed.
    KeepSubset(u64),
}

/// Which operations an armed trigger counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every changing operation (write, truncate, fsync, fsyncdir, create,
    /// mkdir, unlink, rmdir, rename, fallocate).
    Any,
    /// Changing operations on files and directories under a directory with
    /// this tag name (see [`LossyFs::new`]).
    Tagged(String),
    /// Directory operations (create, mkdir, unlink, rmdir, rename, fsyncdir)
    /// in a directory with this tag name.
    Namespace(String),
    /// `fsync` or `fdatasync` of a file under a directory with this tag
    /// name: the cut lands after the writes that the fsync would have made
    /// durable.
    Fsync(String),
    /// Like [`Target::Fsync`], but only an fsync of a file with unsynced
    /// changes in two pages or more (a cut there can tear them apart).
    FsyncSpanningPages(String),
}

/// What a power cut found and did.
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    /// `"now"`, or the operation an armed trigger stopped.
    pub cause: String,
    /// Files with unsynced data or length.
    pub dirty_files: Vec<DirtyFile>,
    /// Directories with unsynced changes: (path, queued changes, kept).
    pub dirty_dirs: Vec<(String, usize, usize)>,
    /// Dirty pages lost and kept (kept is 0 in `DropUnsynced`).
    pub pages_lost: u64,
    pub pages_kept: u64,
    /// Tag names under which something was unsynced at the cut.
    pub unsynced_tags: BTreeSet<String>,
    /// Tag names under which a directory had unsynced changes.
    pub unsynced_dir_tags: BTreeSet<String>,
}

impl CutReport {
    /// A few lines for a failure message.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "power cut ({}): {} dirty pages lost, {} kept",
            self.cause, self.pages_lost, self.pages_kept
        );
        for f in &self.dirty_files {
            s.push_str(&format!(
                "\n  file {}: {} dirty pages, lost {:?}",
                f.path, f.dirty_pages, f.lost_pages
            ));
            if let Some((cur, dur)) = f.len_change {
                s.push_str(&format!(", length {cur} (durable {dur})"));
            }
        }
        for (path, queued, kept) in &self.dirty_dirs {
            s.push_str(&format!(
                "\n  dir {path}: {queued} unsynced changes, {kept} kept"
            ));
        }
        s
    }
}

/// A file that had unsynced changes at a power cut.
#[derive(Clone, Debug, Default)]
pub struct DirtyFile {
    /// Its path in the tree before the cut (from the mount's root).
    pub path: String,
    /// Pages changed since its last fsync.
    pub dirty_pages: u64,
    /// Indexes of the dirty pages the cut lost (all of them when dropping).
    pub lost_pages: Vec<u64>,
    /// Its length before the cut and its durable length, when they differ.
    pub len_change: Option<(u64, u64)>,
}

/// Counts of the changing operations served, by kind.
#[derive(Clone, Debug, Default)]
pub struct OpCounts {
    pub writes: u64,
    pub bytes_written: u64,
    pub truncates: u64,
    pub fsyncs: u64,
    pub fsyncdirs: u64,
    pub creates: u64,
    pub unlinks: u64,
    pub renames: u64,
}

// ------------------------------------------------------------------ data --

/// A file's bytes as sparse pages: a missing page reads as zeros. Invariant:
/// no page lies wholly at or past `len`, and bytes past `len` in the last
/// page are zero.
#[derive(Clone, Debug, Default)]
struct Data {
    len: u64,
    pages: BTreeMap<u64, Page>,
}

impl Data {
    fn read(&self, off: u64, size: u64) -> Vec<u8> {
        if off >= self.len {
            return Vec::new();
        }
        let end = self.len.min(off + size);
        let mut out = vec![0u8; (end - off) as usize];
        for (&i, page) in self.pages.range(off / PAGE..=(end - 1) / PAGE) {
            let p0 = i * PAGE;
            let from = off.max(p0);
            let to = end.min(p0 + PAGE);
            out[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&page[(from - p0) as usize..(to - p0) as usize]);
        }
        out
    }

    /// Writes `data` at `off`; returns the pages touched.
    fn write(&mut self, off: u64, data: &[u8]) -> std::ops::RangeInclusive<u64> {
        if data.is_empty() {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        let end = off + data.len() as u64;
        let touched = off / PAGE..=(end - 1) / PAGE;
        for i in touched.clone() {
            let p0 = i * PAGE;
            let from = off.max(p0);
            let to = end.min(p0 + PAGE);
            let page = Arc::make_mut(self.pages.entry(i).or_insert_with(zero_page));
            page[(from - p0) as usize..(to - p0) as usize]
                .copy_from_slice(&data[(from - off) as usize..(to - off) as usize]);
        }
        self.len = self.len.max(end);
        touched
    }

    /// Sets the length; returns the pages whose bytes changed.
    fn set_len(&mut self, len: u64) -> Vec<u64> {
        let mut changed = Vec::new();
        if len < self.len {
            let first_gone = len.div_ceil(PAGE);
            let gone: Vec<u64> = self.pages.range(first_gone..).map(|(&i, _)| i).collect();
            for i in gone {
                self.pages.remove(&i);
                changed.push(i);
            }
            if !len.is_multiple_of(PAGE) {
                let i = len / PAGE;
                if let Some(page) = self.pages.get_mut(&i) {
                    Arc::make_mut(page)[(len % PAGE) as usize..].fill(0);
                    changed.push(i);
                }
            }
        }
        self.len = len;
        changed
    }
}

// ----------------------------------------------------------------- nodes --

#[derive(Clone, Debug)]
struct FileNode {
    cur: Data,
    dur: Data,
    /// Pages changed since the last fsync (their durable copy may differ).
    dirty: BTreeSet<u64>,
}

/// One queued change of a directory listing: a name now points to an inode,
/// or is gone.
type Change = (OsString, Option<u64>);

#[derive(Clone, Debug, Default)]
struct DirNode {
    cur: BTreeMap<OsString, u64>,
    dur: BTreeMap<OsString, u64>,
    /// Changes since the last fsync of this directory, one group per
    /// operation (a rename within the directory is one group of two).
    pending: Vec<Vec<Change>>,
}

#[derive(Clone, Debug)]
enum Body {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Clone, Debug)]
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    ctime: SystemTime,
    /// The parent directory, for `..` (the first one, after a cut).
    parent: u64,
    /// Index into the tag names: the nearest tagged directory at or above.
    tag: Option<usize>,
}

impl Inode {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, nlink) = match &self.body {
            Body::File(f) => (FileType::RegularFile, f.cur.len, 1),
            Body::Dir(_) => (FileType::Directory, 0, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind,
            perm: self.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    fn kind(&self) -> FileType {
        match self.body {
            Body::File(_) => FileType::RegularFile,
            Body::Dir(_) => FileType::Directory,
        }
    }
}

/// A copy of a whole tree (cheap: pages are shared until written).
#[derive(Clone, Debug)]
pub struct Image {
    nodes: HashMap<u64, Inode>,
    next_ino: u64,
}

// ----------------------------------------------------------------- state --

#[derive(Clone, Debug)]
struct Armed {
    target: Target,
    tag: Option<usize>,
    nth: u64,
    seen: u64,
    mode: CutMode,
}

/// The kinds of changing operation, for triggers and counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write,
    Truncate,
    Fallocate,
    Fsync,
    FsyncDir,
    Create,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
}

impl Op {
    fn is_namespace(self) -> bool {
        matches!(
            self,
            Op::FsyncDir | Op::Create | Op::Mkdir | Op::Unlink | Op::Rmdir | Op::Rename
        )
    }
}

struct State {
    nodes: HashMap<u64, Inode>,
    next_ino: u64,
    tags: Vec<String>,
    /// The generation of the live mount; older sessions get `EIO`.
    mount_gen: u64,
    /// Set by a power cut, cleared by the next mount.
    cut: Option<CutReport>,
    armed: Option<Armed>,
    counts: OpCounts,
    /// How long an fsync of a file takes (see [`LossyFs::set_sync_delay`]).
    sync_delay: Duration,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random choices of a [`CutMode::KeepSubset`] cut; `None` keeps nothing.
struct Dice(Option<u64>);

impl Dice {
    /// Keep this page (or length)? One in two.
    fn half(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|r| splitmix(r).is_multiple_of(2))
    }

    /// How many of `n` queued directory changes to keep: `0..=n`.
    fn up_to(&mut self, n: usize) -> usize {
        self.0
            .as_mut()
            .map_or(0, |r| (splitmix(r) % (n as u64 + 1)) as usize)
    }
}

impl State {
    fn new(tags: &[&str]) -> State {
        let now = SystemTime::now();
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Inode {
                body: Body::Dir(DirNode::default()),
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: now,
                ctime: now,
                parent: ROOT,
                tag: None,
            },
        );
        State {
            nodes,
            next_ino: ROOT + 1,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            mount_gen: 0,
            cut: None,
            armed: None,
            counts: OpCounts::default(),
            sync_delay: Duration::ZERO,
        }
    }

    fn tag_index(&self, name: &str) -> Option<usize> {
        self.tags.iter().position(|t| t == name)
    }

    /// Fails every request after a cut or from an older mount.
    fn live(&self, gen: u64) -> Result<(), Errno> {
        if self.cut.is_some() || gen != self.mount_gen {
            Err(Errno::EIO)
        } else {
            Ok(())
        }
    }

    /// Called before every changing operation: counts it and, if an armed
    /// trigger is due, cuts the power instead (the operation never happens).
    fn gate(&mut self, gen: u64, op: Op, tag: Option<usize>) -> Result<(), Errno> {
        self.gate_fsync(gen, op, tag, false)
    }

    /// [`State::gate`]; `spans_pages` says whether an fsync's file has
    /// unsynced changes in two pages or more.
    fn gate_fsync(
        &mut self,
        gen: u64,
        op: Op,
        tag: Option<usize>,
        spans_pages: bool,
    ) -> Result<(), Errno> {
        self.live(gen)?;
        let due = match &mut self.armed {
            Some(arm) => {
                let hit = match arm.target {
                    Target::Any => true,
                    Target::Tagged(_) => tag.is_some() && tag == arm.tag,
                    Target::Namespace(_) => op.is_namespace() && tag.is_some() && tag == arm.tag,
                    Target::Fsync(_) => op == Op::Fsync && tag.is_some() && tag == arm.tag,
                    Target::FsyncSpanningPages(_) => {
                        op == Op::Fsync && spans_pages && tag.is_some() && tag == arm.tag
                    }
                };
                if hit {
                    arm.seen += 1;
                }
                arm.seen >= arm.nth
            }
            None => false,
        };
        if due {
            if let Some(arm) = self.armed.take() {
                let cause = format!("before {op:?}, the {}-th on {:?}", arm.nth, arm.target);
                self.power_cut(arm.mode, cause);
                return Err(Errno::EIO);
            }
        }
        match op {
            Op::Write => self.counts.writes += 1,
            Op::Truncate | Op::Fallocate => self.counts.truncates += 1,
            Op::Fsync => self.counts.fsyncs += 1,
            Op::FsyncDir => self.counts.fsyncdirs += 1,
            Op::Create | Op::Mkdir => self.counts.creates += 1,
            Op::Unlink | Op::Rmdir => self.counts.unlinks += 1,
            Op::Rename => self.counts.renames += 1,
        }
        Ok(())
    }

    fn node(&self, ino: u64) -> Result<&Inode, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&DirNode, Errno> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut DirNode, Errno> {
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileNode, Errno> {
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?
            .cur
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    /// Creates a file or directory `name` in `parent`.
    fn make(
        &mut self,
        gen: u64,
        parent: u64,
        name: &OsStr,
        mode: u32,
        dir: bool,
        req: &Request,
    ) -> Result<(u64, FileAttr), Errno> {
        let parent_tag = self.node(parent)?.tag;
        self.gate(gen, if dir { Op::Mkdir } else { Op::Create }, parent_tag)?;
        if self.dir(parent)?.cur.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let tag = parent_tag.or_else(|| name.to_str().and_then(|n| self.tag_index(n)));
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        let body = if dir {
            Body::Dir(DirNode::default())
        } else {
            Body::File(FileNode {
                cur: Data::default(),
                dur: Data::default(),
                dirty: BTreeSet::new(),
            })
        };
        let node = Inode {
            body,
            perm: (mode & 0o7777) as u16,
            uid: req.uid(),
            gid: req.gid(),
            mtime: now,
            ctime: now,
            parent,
            tag,
        };
        let attr = node.attr(ino);
        self.nodes.insert(ino, node);
        let d = self.dir_mut(parent)?;
        d.cur.insert(name.to_owned(), ino);
        d.pending.push(vec![(name.to_owned(), Some(ino))]);
        Ok((ino, attr))
    }

    fn remove(&mut self, gen: u64, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let tag = self.node(parent)?.tag;
        self.gate(gen, if dir { Op::Rmdir } else { Op::Unlink }, tag)?;
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir(d), true) if !d.cur.is_empty() => return Err(Errno::ENOTEMPTY),
            (Body::Dir(_), false) => return Err(Errno::EISDIR),
            (Body::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        let d = self.dir_mut(parent)?;
        d.cur.remove(name);
        d.pending.push(vec![(name.to_owned(), None)]);
        Ok(())
    }

    fn rename(
        &mut self,
        gen: u64,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let tag = self.node(parent)?.tag;
        self.gate(gen, Op::Rename, tag)?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let ino = self.lookup(parent, name)?;
        let src_is_dir = matches!(self.node(ino)?.body, Body::Dir(_));
        if let Ok(old) = self.lookup(newparent, newname) {
            if old == ino {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            match (&self.node(old)?.body, src_is_dir) {
                (Body::Dir(d), true) if !d.cur.is_empty() => return Err(Errno::ENOTEMPTY),
                (Body::Dir(_), false) => return Err(Errno::EISDIR),
                (Body::File(_), true) => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        if parent == newparent {
            let d = self.dir_mut(parent)?;
            d.cur.remove(name);
            d.cur.insert(newname.to_owned(), ino);
            d.pending.push(vec![
                (name.to_owned(), None),
                (newname.to_owned(), Some(ino)),
            ]);
        } else {
            let d = self.dir_mut(parent)?;
            d.cur.remove(name);
            d.pending.push(vec![(name.to_owned(), None)]);
            let d = self.dir_mut(newparent)?;
            d.cur.insert(newname.to_owned(), ino);
            d.pending.push(vec![(newname.to_owned(), Some(ino))]);
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.parent = newparent;
            }
        }
        // A moved node is tagged by where it is now (a store compaction
        // renames its copy to `store/` and the old store away from it).
        let tag = self
            .node(newparent)?
            .tag
            .or_else(|| newname.to_str().and_then(|n| self.tag_index(n)));
        self.retag(ino, tag);
        Ok(())
    }

    /// Sets the tag of `ino` and of everything under it.
    fn retag(&mut self, ino: u64, tag: Option<usize>) {
        let mut todo = vec![ino];
        while let Some(i) = todo.pop() {
            if let Some(n) = self.nodes.get_mut(&i) {
                n.tag = tag;
                if let Body::Dir(d) = &n.body {
                    todo.extend(d.cur.values().copied());
                }
            }
        }
    }

    fn fsync(&mut self, gen: u64, ino: u64) -> Result<(), Errno> {
        let node = self.node(ino)?;
        let (op, spans_pages) = match &node.body {
            Body::Dir(_) => (Op::FsyncDir, false),
            Body::File(f) => (Op::Fsync, f.dirty.len() >= 2),
        };
        let tag = node.tag;
        self.gate_fsync(gen, op, tag, spans_pages)?;
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.body {
            Body::File(f) => {
                f.dur = f.cur.clone();
                f.dirty.clear();
            }
            Body::Dir(d) => {
                d.dur = d.cur.clone();
                d.pending.clear();
            }
        }
        Ok(())
    }

    fn set_len(&mut self, gen: u64, ino: u64, len: u64, op: Op) -> Result<(), Errno> {
        let tag = self.node(ino)?.tag;
        self.gate(gen, op, tag)?;
        let f = self.file_mut(ino)?;
        let mut changed = f.cur.set_len(len);
        // Pages the durable image has past the new end differ now, too.
        changed.extend(f.dur.pages.range(len.div_ceil(PAGE)..).map(|(&i, _)| i));
        f.dirty.extend(changed);
        self.touch(ino);
        Ok(())
    }

    fn write(&mut self, gen: u64, ino: u64, off: u64, data: &[u8]) -> Result<(), Errno> {
        let tag = self.node(ino)?.tag;
        self.gate(gen, Op::Write, tag)?;
        self.counts.bytes_written += data.len() as u64;
        let f = self.file_mut(ino)?;
        let touched = f.cur.write(off, data);
        f.dirty.extend(touched);
        self.touch(ino);
        Ok(())
    }

    fn touch(&mut self, ino: u64) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.mtime = SystemTime::now();
        }
    }

    /// Paths of every reachable inode in the current tree (for reports).
    fn paths(&self) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        out.insert(ROOT, "/".to_string());
        let mut queue = VecDeque::from([ROOT]);
        while let Some(d) = queue.pop_front() {
            let Ok(dir) = self.dir(d) else { continue };
            let base = out.get(&d).cloned().unwrap_or_default();
            for (name, &ino) in &dir.cur {
                if out.contains_key(&ino) {
                    continue;
                }
                let p = format!("{}{}", base, name.to_string_lossy());
                if matches!(self.nodes.get(&ino).map(|n| &n.body), Some(Body::Dir(_))) {
                    out.insert(ino, format!("{p}/"));
                    queue.push_back(ino);
                } else {
                    out.insert(ino, p);
                }
            }
        }
        out
    }

    /// The power cut: replaces the tree by what survives and freezes it.
    fn power_cut(&mut self, mode: CutMode, cause: String) -> CutReport {
        let paths = self.paths();
        let name_of = |ino: u64| {
            paths
                .get(&ino)
                .cloned()
                .unwrap_or_else(|| format!("(unlinked inode {ino})"))
        };
        let mut report = CutReport {
            cause,
            ..CutReport::default()
        };
        let mut dice = Dice(match mode {
            CutMode::DropUnsynced => None,
            CutMode::KeepSubset(seed) => Some(seed ^ 0x2545_F491_4F6C_DD1D),
        });
        // Visit inodes in a fixed order so a seed means the same choices.
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        let mut survivors: HashMap<u64, Inode> = HashMap::new();
        for ino in inos {
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            let tag_name = node.tag.and_then(|t| self.tags.get(t).cloned());
            let mut new = node.clone();
            match (&node.body, &mut new.body) {
                (Body::File(f), Body::File(nf)) => {
                    let len_change = (f.cur.len != f.dur.len).then_some((f.cur.len, f.dur.len));
                    if f.dirty.is_empty() && len_change.is_none() {
                        nf.cur = f.dur.clone();
                        continue_file(nf);
                        survivors.insert(ino, new);
                        continue;
                    }
                    if let Some(t) = &tag_name {
                        report.unsynced_tags.insert(t.clone());
                    }
                    let mut dirty = DirtyFile {
                        path: name_of(ino),
                        dirty_pages: f.dirty.len() as u64,
                        lost_pages: Vec::new(),
                        len_change,
                    };
                    let len = match len_change {
                        Some((cur, _)) if dice.half() => cur,
                        _ => f.dur.len,
                    };
                    let mut img = Data {
                        len,
                        pages: f
                            .dur
                            .pages
                            .range(..len.div_ceil(PAGE))
                            .map(|(&i, p)| (i, p.clone()))
                            .collect(),
                    };
                    // Half the time the disk wrote the later dirty pages
                    // first: the pages before a random split are lost, the
                    // rest kept (reordering); otherwise each page is a coin
                    // flip.
                    let split = if f.dirty.len() >= 2 && dice.half() {
                        Some(1 + dice.up_to(f.dirty.len() - 2))
                    } else {
                        None
                    };
                    for (n, &i) in f.dirty.iter().enumerate() {
                        if i >= len.div_ceil(PAGE) {
                            continue;
                        }
                        let keep = match split {
                            Some(k) => n >= k,
                            None => dice.half(),
                        };
                        if !keep {
                            report.pages_lost += 1;
                            dirty.lost_pages.push(i);
                        } else {
                            report.pages_kept += 1;
                            match f.cur.pages.get(&i) {
                                Some(p) => img.pages.insert(i, p.clone()),
                                None => img.pages.remove(&i),
                            };
                        }
                    }
                    report.dirty_files.push(dirty);
                    if len % PAGE != 0 {
                        if let Some(p) = img.pages.get_mut(&(len / PAGE)) {
                            Arc::make_mut(p)[(len % PAGE) as usize..].fill(0);
                        }
                    }
                    nf.cur = img;
                    continue_file(nf);
                }
                (Body::Dir(d), Body::Dir(nd)) => {
                    let mut listing = d.dur.clone();
                    if !d.pending.is_empty() {
                        let kept = dice.up_to(d.pending.len());
                        for group in &d.pending[..kept] {
                            for (name, to) in group {
                                match to {
                                    Some(i) => listing.insert(name.clone(), *i),
                                    None => listing.remove(name),
                                };
                            }
                        }
                        if let Some(t) = &tag_name {
                            report.unsynced_tags.insert(t.clone());
                            report.unsynced_dir_tags.insert(t.clone());
                        }
                        report
                            .dirty_dirs
                            .push((name_of(ino), d.pending.len(), kept));
                    }
                    nd.cur = listing.clone();
                    nd.dur = listing;
                    nd.pending.clear();
                }
                _ => {}
            }
            survivors.insert(ino, new);
        }
        // Keep what the root reaches through the surviving listings.
        let mut nodes = HashMap::new();
        let mut queue = VecDeque::from([(ROOT, ROOT)]);
        while let Some((ino, parent)) = queue.pop_front() {
            if nodes.contains_key(&ino) {
                continue;
            }
            let Some(mut node) = survivors.remove(&ino) else {
                continue;
            };
            node.parent = parent;
            if let Body::Dir(d) = &node.body {
                queue.extend(d.cur.values().map(|&child| (child, ino)));
            }
            nodes.insert(ino, node);
        }
        self.nodes = nodes;
        self.armed = None;
        self.cut = Some(report.clone());
        report
    }
}

impl Image {
    /// Writes the tree (current images) into the real directory `to`, for
    /// keeping the state that made a test fail.
    pub fn export(&self, to: &Path) -> io::Result<()> {
        self.export_node(ROOT, to)
    }

    fn export_node(&self, ino: u64, to: &Path) -> io::Result<()> {
        let node = self
            .nodes
            .get(&ino)
            .ok_or_else(|| io::Error::other(format!("no inode {ino}")))?;
        match &node.body {
            Body::Dir(d) => {
                std::fs::create_dir_all(to)?;
                for (name, &child) in &d.cur {
                    self.export_node(child, &to.join(name))?;
                }
            }
            Body::File(f) => std::fs::write(to, f.cur.read(0, f.cur.len))?,
        }
        Ok(())
    }
}

/// After a cut a file's surviving image is both current and durable.
fn continue_file(f: &mut FileNode) {
    f.dur = f.cur.clone();
    f.dirty.clear();
}

// ------------------------------------------------------------ public API --

/// The filesystem: shared state that outlives mounts.
#[derive(Clone)]
pub struct LossyFs {
    state: Arc<Mutex<State>>,
}

/// A live mount; unmounts when dropped.
pub struct Mounted {
    path: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl LossyFs {
    /// An empty filesystem. A directory created with one of `tags` as its
    /// name, and everything under it, carries that tag (for [`Target`] and
    /// [`CutReport::unsynced_tags`]).
    pub fn new(tags: &[&str]) -> LossyFs {
        LossyFs {
            state: Arc::new(Mutex::new(State::new(tags))),
        }
    }

    /// Mounts the tree at `at` (an empty directory). Clears a previous cut.
    pub fn mount(&self, at: &Path) -> io::Result<Mounted> {
        let gen = {
            let mut st = self.state.lock();
            st.mount_gen += 1;
            st.cut = None;
            st.armed = None;
            st.mount_gen
        };
        let mut config = Config::default();
        // Several threads, so that a slow fsync does not stall other files.
        config.n_threads = Some(4);
        config.mount_options = vec![
            MountOption::FSName("lossyfs".into()),
            MountOption::Subtype("lossyfs".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        let adapter = Adapter {
            state: self.state.clone(),
            gen,
        };
        let session = fuser::spawn_mount(adapter, at, &config)?;
        Ok(Mounted {
            path: at.to_owned(),
            session: Some(session),
        })
    }

    /// Makes every fsync of a file take `delay` before it completes, like a
    /// disk's cache flush; writers that arrive meanwhile then share the next
    /// commit group.
    pub fn set_sync_delay(&self, delay: Duration) {
        self.state.lock().sync_delay = delay;
    }

    /// Cuts the power now.
    pub fn cut(&self, mode: CutMode) -> CutReport {
        let mut st = self.state.lock();
        if let Some(done) = &st.cut {
            return done.clone();
        }
        st.power_cut(mode, "now".into())
    }

    /// Cuts the power just before the `nth` (1-based) operation that matches
    /// `target`, counted from now.
    pub fn arm(&self, target: Target, nth: u64, mode: CutMode) {
        let mut st = self.state.lock();
        let tag = match &target {
            Target::Any => None,
            Target::Tagged(t)
            | Target::Namespace(t)
            | Target::Fsync(t)
            | Target::FsyncSpanningPages(t) => st.tag_index(t),
        };
        st.armed = Some(Armed {
            target,
            tag,
            nth: nth.max(1),
            seen: 0,
            mode,
        });
    }

    /// The report of the cut since the last mount, if the power was cut.
    pub fn cut_report(&self) -> Option<CutReport> {
        self.state.lock().cut.clone()
    }

    pub fn counts(&self) -> OpCounts {
        self.state.lock().counts.clone()
    }

    /// A copy of the whole tree (current images).
    pub fn image(&self) -> Image {
        let st = self.state.lock();
        Image {
            nodes: st.nodes.clone(),
            next_ino: st.next_ino,
        }
    }

    /// Replaces the tree by `image`; call it while unmounted.
    pub fn restore(&self, image: Image) {
        let mut st = self.state.lock();
        st.nodes = image.nodes;
        st.next_ino = st.next_ino.max(image.next_ino);
    }
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts; if files are still open (the kernel says busy), retries for
    /// a while, then detaches lazily (the old session then answers `EIO`).
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        loop {
            let out = std::process::Command::new("umount")
                .arg(&self.path)
                .output()?;
            if out.status.success() {
                // The kernel ended the connection: the session thread exits.
                return session.join();
            }
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .output()?;
        // Detach: the thread ends when the last open file closes. Forget the
        // session so that dropping it cannot unmount anything else.
        std::mem::forget(session);
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "umount -l {}: {}",
                self.path.display(),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!("lossyfs: unmounting {}: {e}", self.path.display());
        }
    }
}

// -------------------------------------------------------------- FUSE ops --

/// What one mount serves: the shared state and this mount's generation.
struct Adapter {
    state: Arc<Mutex<State>>,
    gen: u64,
}

impl Adapter {
    fn attr_of(st: &State, ino: u64) -> Result<FileAttr, Errno> {
        Ok(st.node(ino)?.attr(ino))
    }
}

impl Filesystem for Adapter {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let st = self.state.lock();
        let res = st
            .live(self.gen)
            .and_then(|()| st.lookup(parent.0, name))
            .and_then(|ino| Self::attr_of(&st, ino));
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.state.lock();
        match st.live(self.gen).and_then(|()| Self::attr_of(&st, ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state.lock();
        let res = (|| {
            st.live(self.gen)?;
            if let Some(len) = size {
                st.set_len(self.gen, ino.0, len, Op::Truncate)?;
            }
            let node = st.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
            if let Some(m) = mode {
                node.perm = (m & 0o7777) as u16;
                node.ctime = SystemTime::now();
            }
            if let Some(u) = uid {
                node.uid = u;
            }
            if let Some(g) = gid {
                node.gid = g;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => node.mtime = t,
                Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
                None => {}
            }
            Self::attr_of(&st, ino.0)
        })();
        match res {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        const S_IFMT: u32 = 0o170000;
        const S_IFREG: u32 = 0o100000;
        if mode & S_IFMT != S_IFREG {
            reply.error(Errno::EPERM);
            return;
        }
        let mut st = self.state.lock();
        match st.make(self.gen, parent.0, name, mode, false, req) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.state.lock();
        match st.make(self.gen, parent.0, name, mode, true, req) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state.lock();
        match st.remove(self.gen, parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.state.lock();
        match st.remove(self.gen, parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state.lock();
        match st.rename(self.gen, parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let st = self.state.lock();
        match st.live(self.gen).and_then(|()| st.node(ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.state.lock();
        let res = st
            .live(self.gen)
            .and_then(|()| match &st.node(ino.0)?.body {
                Body::File(f) => Ok(f.cur.read(offset, u64::from(size))),
                Body::Dir(_) => Err(Errno::EISDIR),
            });
        match res {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.state.lock();
        match st.write(self.gen, ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        // Like a disk's flush, it takes a while (other requests go on: the
        // session has several threads).
        let delay = self.state.lock().sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.state.lock();
        match st.fsync(self.gen, ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        // Must not answer ENOSYS: the kernel would then report success for
        // every later fsync of a directory without asking.
        let mut st = self.state.lock();
        match st.fsync(self.gen, ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let st = self.state.lock();
        match st.live(self.gen).and_then(|()| st.dir(ino.0).map(|_| ())) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.state.lock();
        let res = (|| {
            st.live(self.gen)?;
            let node = st.node(ino.0)?;
            let Body::Dir(d) = &node.body else {
                return Err(Errno::ENOTDIR);
            };
            let mut entries: Vec<(u64, FileType, OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (node.parent, FileType::Directory, "..".into()),
            ];
            for (name, &child) in &d.cur {
                let kind = st
                    .node(child)
                    .map(Inode::kind)
                    .unwrap_or(FileType::RegularFile);
                entries.push((child, kind, name.clone()));
            }
            Ok(entries)
        })();
        match res {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            1 << 24,
            1 << 24,
            1 << 24,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.state.lock();
        match st.make(self.gen, parent.0, name, mode, false, req) {
            Ok((_, attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let mut st = self.state.lock();
        let res = (|| {
            st.live(self.gen)?;
            let len = match &st.node(ino.0)?.body {
                Body::File(f) => f.cur.len,
                Body::Dir(_) => return Err(Errno::EISDIR),
            };
            if offset + length > len {
                st.set_len(self.gen, ino.0, offset + length, Op::Fallocate)?;
            }
            Ok(())
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
