//! An ordered map from `u64` keys to small `Copy` values whose nodes live in
//! arenas: the engine's index structure for areas, frame runs and pin
//! records.
//!
//! Why not `BTreeMap`: its nodes come from `malloc` and go back to it, so a
//! map that goes from empty to one entry and back (one IOAS map and unmap,
//! the common case) allocates and frees a node every time, and a large one
//! churns nodes as it grows and shrinks. Here leaves and inner nodes are
//! slots of two `Vec`s with free lists: a freed node is kept for the next
//! one, so a map in its steady state never allocates. Memory only grows to
//! the peak number of nodes (`shrink` gives it back).
//!
//! Shape: a B+-tree of fanout [`B`]. Leaves hold up to `B` sorted keys with
//! their values and are chained both ways; inner nodes hold up to `B`
//! children, child `i > 0` with the smallest key it may hold (`keys[0]` is
//! unused: the first child takes everything below `keys[1]`). A lookup
//! descends by counting the keys at or below the one searched (the nodes
//! are two or three cache lines), then scans one leaf.
//!
//! Deletion never merges: a leaf that empties is unlinked and freed (and an
//! inner node left without children with it), an inner root left with one
//! child is replaced by it. Nodes may therefore be sparse after deletions,
//! but all leaves stay at one depth and the height is bounded by the
//! insertions that grew it (a root splits only when full).

/// Entries per node.
pub const B: usize = 16;
/// No node.
const NIL: u32 = u32::MAX;
/// Deepest tree: a root split needs `B` children, so a tree of height `h`
/// took at least `(B / 2)^(h - 1)` insertions; 24 levels is beyond reach.
const MAX_HEIGHT: usize = 24;

#[derive(Clone, Copy)]
struct Leaf<V: Copy> {
    keys: [u64; B],
    vals: [V; B],
    n: u32,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy)]
struct Inner {
    keys: [u64; B],
    kids: [u32; B],
    n: u32,
}

/// The ordered map (see the module documentation).
#[derive(Clone)]
pub struct SlabMap<V: Copy + Default> {
    leaves: Vec<Leaf<V>>,
    inners: Vec<Inner>,
    /// Free lists, linked through `next` (leaves) and `kids[0]` (inners).
    free_leaf: u32,
    free_inner: u32,
    root: u32,
    /// 0: the root is a leaf.
    height: u32,
    len: usize,
}

impl<V: Copy + Default> Default for SlabMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy + Default + std::fmt::Debug> std::fmt::Debug for SlabMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Number of `keys[1..n]` at or below `key`: the child to descend into.
#[inline]
fn route(keys: &[u64; B], n: u32, key: u64) -> usize {
    let mut i = 1;
    while i < n as usize && keys[i] <= key {
        i += 1;
    }
    i - 1
}

impl<V: Copy + Default> SlabMap<V> {
    /// An empty map (one empty leaf, allocated on first insertion).
    pub const fn new() -> Self {
        SlabMap {
            leaves: Vec::new(),
            inners: Vec::new(),
            free_leaf: NIL,
            free_inner: NIL,
            root: NIL,
            height: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of one leaf node (for memory accounting and tools).
    pub const LEAF_BYTES: usize = std::mem::size_of::<Leaf<V>>();
    /// Bytes of one inner node.
    pub const INNER_BYTES: usize = std::mem::size_of::<Inner>();

    /// Leaf nodes in use (not on the free list), for memory accounting.
    pub fn leaves_in_use(&self) -> usize {
        let mut free = 0;
        let mut i = self.free_leaf;
        while i != NIL {
            free += 1;
            i = self.leaves[i as usize].next;
        }
        self.leaves.len() - free
    }

    /// Bytes of node storage held (for memory accounting).
    pub fn capacity_bytes(&self) -> usize {
        self.leaves.capacity() * std::mem::size_of::<Leaf<V>>() + self.inners.capacity() * std::mem::size_of::<Inner>()
    }

    fn alloc_leaf(&mut self) -> u32 {
        if self.free_leaf != NIL {
            let i = self.free_leaf;
            let leaf = &mut self.leaves[i as usize];
            self.free_leaf = leaf.next;
            // Entries past `n` are never read: only the header is reset.
            leaf.n = 0;
            leaf.prev = NIL;
            leaf.next = NIL;
            return i;
        }
        self.leaves.push(Leaf { keys: [0; B], vals: [V::default(); B], n: 0, prev: NIL, next: NIL });
        (self.leaves.len() - 1) as u32
    }

    fn free_leaf(&mut self, i: u32) {
        self.leaves[i as usize].n = 0;
        self.leaves[i as usize].next = self.free_leaf;
        self.free_leaf = i;
    }

    fn alloc_inner(&mut self) -> u32 {
        if self.free_inner != NIL {
            let i = self.free_inner;
            let inner = &mut self.inners[i as usize];
            self.free_inner = inner.kids[0];
            inner.n = 0;
            return i;
        }
        self.inners.push(Inner { keys: [0; B], kids: [NIL; B], n: 0 });
        (self.inners.len() - 1) as u32
    }

    fn free_inner(&mut self, i: u32) {
        self.inners[i as usize].n = 0;
        self.inners[i as usize].kids[0] = self.free_inner;
        self.free_inner = i;
    }

    /// The leaf `key` belongs in (`NIL` for a map never inserted into).
    #[inline(always)]
    fn leaf_for(&self, key: u64) -> u32 {
        let mut node = self.root;
        for _ in 0..self.height {
            let inner = &self.inners[node as usize];
            node = inner.kids[route(&inner.keys, inner.n, key)];
        }
        node
    }

    /// [`leaf_for`](Self::leaf_for), recording `(inner, child index)` on
    /// the way down; returns the leaf and the path length.
    fn descend(&self, key: u64, path: &mut [(u32, usize); MAX_HEIGHT]) -> u32 {
        let mut node = self.root;
        for slot in path.iter_mut().take(self.height as usize) {
            let inner = &self.inners[node as usize];
            let i = route(&inner.keys, inner.n, key);
            *slot = (node, i);
            node = inner.kids[i];
        }
        node
    }

    /// Position of `key` in a leaf: `Ok(i)` found, `Err(i)` insertion point.
    #[inline(always)]
    fn search(leaf: &Leaf<V>, key: u64) -> Result<usize, usize> {
        let n = leaf.n as usize;
        let mut i = 0;
        while i < n && leaf.keys[i] < key {
            i += 1;
        }
        if i < n && leaf.keys[i] == key {
            Ok(i)
        } else {
            Err(i)
        }
    }

    pub fn get(&self, key: u64) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let leaf = &self.leaves[self.leaf_for(key) as usize];
        Self::search(leaf, key).ok().map(|i| &leaf.vals[i])
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        if self.len == 0 {
            return None;
        }
        let l = self.leaf_for(key) as usize;
        let i = Self::search(&self.leaves[l], key).ok()?;
        Some(&mut self.leaves[l].vals[i])
    }

    pub fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// The entry with the largest key at or below `key`, as (leaf, index).
    #[inline(always)]
    fn prev_pos(&self, key: u64) -> Option<(u32, usize)> {
        if self.len == 0 {
            return None;
        }
        let l = self.leaf_for(key);
        let leaf = &self.leaves[l as usize];
        let i = match Self::search(leaf, key) {
            Ok(i) => return Some((l, i)),
            Err(i) => i,
        };
        if i > 0 {
            return Some((l, i - 1));
        }
        // Everything here is above `key`: the previous leaf's last entry
        // (leaves other than an empty root are never empty).
        let p = leaf.prev;
        (p != NIL).then(|| (p, self.leaves[p as usize].n as usize - 1))
    }

    /// The entry with the smallest key at or above `key`, as (leaf, index).
    #[inline]
    fn next_pos(&self, key: u64) -> Option<(u32, usize)> {
        if self.len == 0 {
            return None;
        }
        let l = self.leaf_for(key);
        let leaf = &self.leaves[l as usize];
        let i = match Self::search(leaf, key) {
            Ok(i) | Err(i) => i,
        };
        if i < leaf.n as usize {
            return Some((l, i));
        }
        let n = leaf.next;
        (n != NIL).then_some((n, 0))
    }

    /// The entry with the largest key at or below `key`.
    #[inline(always)]
    pub fn prev(&self, key: u64) -> Option<(u64, &V)> {
        self.prev_pos(key).map(|(l, i)| {
            let leaf = &self.leaves[l as usize];
            (leaf.keys[i], &leaf.vals[i])
        })
    }

    /// [`prev`](Self::prev), mutably.
    pub fn prev_mut(&mut self, key: u64) -> Option<(u64, &mut V)> {
        self.prev_pos(key).map(|(l, i)| {
            let leaf = &mut self.leaves[l as usize];
            (leaf.keys[i], &mut leaf.vals[i])
        })
    }

    /// The entry with the smallest key at or above `key`.
    pub fn next(&self, key: u64) -> Option<(u64, &V)> {
        self.next_pos(key).map(|(l, i)| {
            let leaf = &self.leaves[l as usize];
            (leaf.keys[i], &leaf.vals[i])
        })
    }

    /// The entry with the largest key below `key`.
    pub fn prev_below(&self, key: u64) -> Option<(u64, &V)> {
        key.checked_sub(1).and_then(|k| self.prev(k))
    }

    pub fn first(&self) -> Option<(u64, &V)> {
        self.next(0)
    }

    pub fn last(&self) -> Option<(u64, &V)> {
        self.prev(u64::MAX)
    }

    /// Entries with keys in `from..=to`, in order.
    pub fn range(&self, from: u64, to: u64) -> Iter<'_, V> {
        let pos = if from <= to { self.next_pos(from) } else { None };
        Iter { map: self, pos, to }
    }

    /// Every entry, in order.
    pub fn iter(&self) -> Iter<'_, V> {
        self.range(0, u64::MAX)
    }

    /// Keys in `from..=to`, collected (for loops that change the map).
    pub fn keys_in(&self, from: u64, to: u64) -> Vec<u64> {
        self.range(from, to).map(|(k, _)| k).collect()
    }

    /// Insert or replace; returns the value replaced. Inlined (the IOAS
    /// map inserts an area on every call); a split is out of line.
    #[inline(always)]
    pub fn insert(&mut self, key: u64, val: V) -> Option<V> {
        if self.root == NIL {
            self.alloc_root();
        }
        let l = self.leaf_for(key);
        let at = match Self::search(&self.leaves[l as usize], key) {
            Ok(i) => return Some(std::mem::replace(&mut self.leaves[l as usize].vals[i], val)),
            Err(i) => i,
        };
        self.len += 1;
        if (self.leaves[l as usize].n as usize) < B {
            Self::leaf_insert(&mut self.leaves[l as usize], at, key, val);
            return None;
        }
        self.insert_split(l, at, key, val);
        None
    }

    /// The first insertion's root leaf (out of the usual way).
    #[cold]
    #[inline(never)]
    fn alloc_root(&mut self) {
        self.root = self.alloc_leaf();
        self.height = 0;
    }

    /// [`insert`](Self::insert) of `key` at position `at` of the full leaf
    /// `l` (rare: out of the usual way).
    #[cold]
    #[inline(never)]
    fn insert_split(&mut self, l: u32, at: usize, key: u64, val: V) {
        // Walk down again, noting the path.
        let mut path = [(NIL, 0usize); MAX_HEIGHT];
        self.descend(key, &mut path);
        // Split the full leaf in two halves, then insert into the right one.
        // Appending past the last key of the whole map (an IOAS filled in
        // IOVA order, PFNs handed out in order) leaves the full leaf as it
        // is and starts a new one: nodes then stay full instead of half.
        let append = at == B && self.leaves[l as usize].next == NIL;
        let r = self.alloc_leaf();
        let half = if append { B } else { B / 2 };
        let (left_next, right_keys, right_vals) = {
            let leaf = &self.leaves[l as usize];
            let mut keys = [0u64; B];
            let mut vals = [V::default(); B];
            keys[..B - half].copy_from_slice(&leaf.keys[half..]);
            vals[..B - half].copy_from_slice(&leaf.vals[half..]);
            (leaf.next, keys, vals)
        };
        {
            let right = &mut self.leaves[r as usize];
            right.keys = right_keys;
            right.vals = right_vals;
            right.n = (B - half) as u32;
            right.prev = l;
            right.next = left_next;
        }
        if left_next != NIL {
            self.leaves[left_next as usize].prev = r;
        }
        self.leaves[l as usize].n = half as u32;
        self.leaves[l as usize].next = r;
        if at <= half && half < B {
            Self::leaf_insert(&mut self.leaves[l as usize], at, key, val);
        } else {
            Self::leaf_insert(&mut self.leaves[r as usize], at - half, key, val);
        }
        let sep = self.leaves[r as usize].keys[0];
        self.insert_child(&path, self.height as usize, sep, r, append);
    }

    #[inline(always)]
    fn leaf_insert(leaf: &mut Leaf<V>, at: usize, key: u64, val: V) {
        // Element loops: for a few entries they beat a call to memmove.
        let mut i = leaf.n as usize;
        while i > at {
            leaf.keys[i] = leaf.keys[i - 1];
            leaf.vals[i] = leaf.vals[i - 1];
            i -= 1;
        }
        leaf.keys[at] = key;
        leaf.vals[at] = val;
        leaf.n += 1;
    }

    /// Add `child` (smallest key `sep`) after the child at `path[depth - 1]`
    /// (`depth` 0: the root split). `append`: `child` is the new last node
    /// of its level (see [`insert`](Self::insert)).
    fn insert_child(&mut self, path: &[(u32, usize); MAX_HEIGHT], depth: usize, sep: u64, child: u32, append: bool) {
        if depth == 0 {
            let old = self.root;
            let root = self.alloc_inner();
            let inner = &mut self.inners[root as usize];
            inner.kids[0] = old;
            inner.kids[1] = child;
            inner.keys[1] = sep;
            inner.n = 2;
            self.root = root;
            self.height += 1;
            return;
        }
        let (node, idx) = path[depth - 1];
        let at = idx + 1;
        if (self.inners[node as usize].n as usize) < B {
            Self::inner_insert(&mut self.inners[node as usize], at, sep, child);
            return;
        }
        let r = self.alloc_inner();
        let half = if append && at == B { B } else { B / 2 };
        let (keys, kids) = {
            let inner = &self.inners[node as usize];
            let mut keys = [0u64; B];
            let mut kids = [NIL; B];
            keys[..B - half].copy_from_slice(&inner.keys[half..]);
            kids[..B - half].copy_from_slice(&inner.kids[half..]);
            (keys, kids)
        };
        {
            let right = &mut self.inners[r as usize];
            right.keys = keys;
            right.kids = kids;
            right.n = (B - half) as u32;
        }
        self.inners[node as usize].n = half as u32;
        if at <= half && half < B {
            Self::inner_insert(&mut self.inners[node as usize], at, sep, child);
        } else {
            Self::inner_insert(&mut self.inners[r as usize], at - half, sep, child);
        }
        // The right node's first key bounds everything under it.
        let up = self.inners[r as usize].keys[0];
        self.insert_child(path, depth - 1, up, r, append && at == B);
    }

    fn inner_insert(inner: &mut Inner, at: usize, key: u64, child: u32) {
        let n = inner.n as usize;
        inner.keys.copy_within(at..n, at + 1);
        inner.kids.copy_within(at..n, at + 1);
        inner.keys[at] = key;
        inner.kids[at] = child;
        inner.n += 1;
    }

    /// Remove `key` if `take` says its value is to go; that value then
    /// (one lookup for what [`get`](Self::get) and [`remove`](Self::remove)
    /// would do).
    #[inline(always)]
    pub fn remove_if(&mut self, key: u64, take: impl FnOnce(&V) -> bool) -> Option<V> {
        if self.len == 0 {
            return None;
        }
        let l = self.leaf_for(key);
        let leaf = &mut self.leaves[l as usize];
        let i = Self::search(leaf, key).ok()?;
        if !take(&leaf.vals[i]) {
            return None;
        }
        let val = Self::leaf_remove(leaf, i);
        self.removed(key, l);
        Some(val)
    }

    /// Remove `key`; returns its value. Inlined (the IOAS unmap removes an
    /// area on every call); unlinking an emptied leaf is out of line.
    #[inline(always)]
    pub fn remove(&mut self, key: u64) -> Option<V> {
        if self.len == 0 {
            return None;
        }
        let l = self.leaf_for(key);
        let leaf = &mut self.leaves[l as usize];
        let i = Self::search(leaf, key).ok()?;
        let val = Self::leaf_remove(leaf, i);
        self.removed(key, l);
        Some(val)
    }

    /// Take entry `i` out of `leaf`; its value.
    #[inline(always)]
    fn leaf_remove(leaf: &mut Leaf<V>, i: usize) -> V {
        let val = leaf.vals[i];
        let n = leaf.n as usize;
        for j in i..n - 1 {
            leaf.keys[j] = leaf.keys[j + 1];
            leaf.vals[j] = leaf.vals[j + 1];
        }
        leaf.n -= 1;
        val
    }

    /// The count after [`leaf_remove`](Self::leaf_remove) of `key` from
    /// leaf `l`, which is unlinked if that emptied it.
    #[inline(always)]
    fn removed(&mut self, key: u64, l: u32) {
        self.len -= 1;
        if self.height > 0 && self.leaves[l as usize].n == 0 {
            self.unlink_leaf(key, l);
        }
    }

    /// Unlink and free the leaf `l` that [`remove`](Self::remove) of `key`
    /// emptied (rare: out of the usual way).
    #[cold]
    #[inline(never)]
    fn unlink_leaf(&mut self, key: u64, l: u32) {
        let mut path = [(NIL, 0usize); MAX_HEIGHT];
        self.descend(key, &mut path);
        let leaf = &self.leaves[l as usize];
        let (prev, next) = (leaf.prev, leaf.next);
        if prev != NIL {
            self.leaves[prev as usize].next = next;
        }
        if next != NIL {
            self.leaves[next as usize].prev = prev;
        }
        self.free_leaf(l);
        self.remove_child(&path, self.height as usize);
    }

    /// Drop the child at `path[depth - 1]`, which has been freed.
    fn remove_child(&mut self, path: &[(u32, usize); MAX_HEIGHT], depth: usize) {
        let (node, idx) = path[depth - 1];
        let inner = &mut self.inners[node as usize];
        let n = inner.n as usize;
        inner.keys.copy_within(idx + 1..n, idx);
        inner.kids.copy_within(idx + 1..n, idx);
        inner.n -= 1;
        if inner.n == 0 {
            // Only a non-root inner node can empty (a root keeps two or
            // more children, see below).
            self.free_inner(node);
            self.remove_child(path, depth - 1);
            return;
        }
        // A root with one child gives way to it.
        while self.height > 0 && self.inners[self.root as usize].n == 1 {
            let old = self.root;
            self.root = self.inners[old as usize].kids[0];
            self.height -= 1;
            self.free_inner(old);
        }
    }

    /// Remove everything, keeping the node storage.
    pub fn clear(&mut self) {
        self.leaves.clear();
        self.inners.clear();
        self.free_leaf = NIL;
        self.free_inner = NIL;
        self.root = NIL;
        self.height = 0;
        self.len = 0;
    }
}

/// In-order iterator over a key range.
pub struct Iter<'a, V: Copy + Default> {
    map: &'a SlabMap<V>,
    pos: Option<(u32, usize)>,
    to: u64,
}

impl<'a, V: Copy + Default> Iterator for Iter<'a, V> {
    type Item = (u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let (l, i) = self.pos?;
        let leaf = &self.map.leaves[l as usize];
        let key = leaf.keys[i];
        if key > self.to {
            self.pos = None;
            return None;
        }
        self.pos = if i + 1 < leaf.n as usize {
            Some((l, i + 1))
        } else if leaf.next != NIL {
            Some((leaf.next, 0))
        } else {
            None
        };
        Some((key, &leaf.vals[i]))
    }
}

/// A [`SlabMap`] that keeps a single entry inline: no node storage at all
/// until a second key arrives (then the nodes live behind one box). For
/// maps that usually hold one entry: a `Pages`' pin records, whose usual
/// state is one segment, where a leaf node (with its vector's spare
/// capacity) would cost several times the rest of a mapping.
#[derive(Clone, Default)]
pub enum SmallMap<V: Copy + Default> {
    #[default]
    Empty,
    One(u64, V),
    /// Once promoted, a map stays a tree (emptied or not), keeping its
    /// nodes for reuse.
    Many(Box<SlabMap<V>>),
}

impl<V: Copy + Default + std::fmt::Debug> std::fmt::Debug for SmallMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Copy + Default> SmallMap<V> {
    pub fn len(&self) -> usize {
        match self {
            SmallMap::Empty => 0,
            SmallMap::One(..) => 1,
            SmallMap::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held beyond the enum itself (for memory accounting).
    pub fn capacity_bytes(&self) -> usize {
        match self {
            SmallMap::Many(m) => std::mem::size_of::<SlabMap<V>>() + m.capacity_bytes(),
            _ => 0,
        }
    }

    pub fn get(&self, key: u64) -> Option<&V> {
        match self {
            SmallMap::Empty => None,
            SmallMap::One(k, v) => (*k == key).then_some(v),
            SmallMap::Many(m) => m.get(key),
        }
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        match self {
            SmallMap::Empty => None,
            SmallMap::One(k, v) => (*k == key).then_some(v),
            SmallMap::Many(m) => m.get_mut(key),
        }
    }

    /// Insert or replace; returns the value replaced.
    pub fn insert(&mut self, key: u64, val: V) -> Option<V> {
        match self {
            SmallMap::Empty => {
                *self = SmallMap::One(key, val);
                None
            }
            SmallMap::One(k, v) if *k == key => Some(std::mem::replace(v, val)),
            SmallMap::One(k, v) => {
                let mut m = Box::new(SlabMap::new());
                m.insert(*k, *v);
                m.insert(key, val);
                *self = SmallMap::Many(m);
                None
            }
            SmallMap::Many(m) => m.insert(key, val),
        }
    }

    /// Remove `key`; returns its value.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        match self {
            SmallMap::One(k, v) if *k == key => {
                let v = *v;
                *self = SmallMap::Empty;
                Some(v)
            }
            SmallMap::Many(m) => m.remove(key),
            _ => None,
        }
    }

    /// The entry with the largest key at or below `key`.
    pub fn prev(&self, key: u64) -> Option<(u64, &V)> {
        match self {
            SmallMap::Empty => None,
            SmallMap::One(k, v) => (*k <= key).then_some((*k, v)),
            SmallMap::Many(m) => m.prev(key),
        }
    }

    /// The entry with the largest key below `key`.
    pub fn prev_below(&self, key: u64) -> Option<(u64, &V)> {
        key.checked_sub(1).and_then(|k| self.prev(k))
    }

    /// The entry with the smallest key at or above `key`.
    pub fn next(&self, key: u64) -> Option<(u64, &V)> {
        match self {
            SmallMap::Empty => None,
            SmallMap::One(k, v) => (*k >= key).then_some((*k, v)),
            SmallMap::Many(m) => m.next(key),
        }
    }

    /// Entries with keys in `from..=to`, in order.
    pub fn range(&self, from: u64, to: u64) -> SmallIter<'_, V> {
        match self {
            SmallMap::Empty => SmallIter::One(None),
            SmallMap::One(k, v) => SmallIter::One((from <= *k && *k <= to).then_some((*k, v))),
            SmallMap::Many(m) => SmallIter::Many(m.range(from, to)),
        }
    }

    /// Every entry, in order.
    pub fn iter(&self) -> SmallIter<'_, V> {
        self.range(0, u64::MAX)
    }

    /// Keys in `from..=to`, collected (for loops that change the map).
    pub fn keys_in(&self, from: u64, to: u64) -> Vec<u64> {
        self.range(from, to).map(|(k, _)| k).collect()
    }
}

/// In-order iterator over a key range of a [`SmallMap`].
pub enum SmallIter<'a, V: Copy + Default> {
    One(Option<(u64, &'a V)>),
    Many(Iter<'a, V>),
}

impl<'a, V: Copy + Default> Iterator for SmallIter<'a, V> {
    type Item = (u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SmallIter::One(e) => e.take(),
            SmallIter::Many(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::rng::XorShift64 as Rng;

    fn check(m: &SlabMap<u32>, r: &BTreeMap<u64, u32>, probes: &[u64]) {
        assert_eq!(m.len(), r.len());
        assert!(m.iter().map(|(k, &v)| (k, v)).eq(r.iter().map(|(&k, &v)| (k, v))));
        for &p in probes {
            assert_eq!(m.get(p), r.get(&p));
            assert_eq!(m.prev(p).map(|(k, &v)| (k, v)), r.range(..=p).next_back().map(|(&k, &v)| (k, v)));
            assert_eq!(m.next(p).map(|(k, &v)| (k, v)), r.range(p..).next().map(|(&k, &v)| (k, v)));
            let to = p.saturating_add(1000);
            assert!(m.range(p, to).map(|(k, &v)| (k, v)).eq(r.range(p..=to).map(|(&k, &v)| (k, v))));
        }
    }

    /// Random inserts and removes against `BTreeMap`, with key spaces
    /// small (many collisions, deep churn) and large, growing the tree to
    /// several levels and shrinking it back to nothing.
    #[test]
    fn behaves_like_btreemap() {
        for (seed, space, ops) in [(1u64, 64u64, 20_000), (7, 5_000, 60_000), (99, u64::MAX, 30_000)] {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut m = SlabMap::<u32>::new();
            let mut r = BTreeMap::new();
            for op in 0..ops {
                let k = rng.next() % space.max(1);
                let grow = (op / 5_000) % 2 == 0;
                if rng.next() % 3 != 0 || (grow && rng.next() % 2 == 0) {
                    let v = rng.next() as u32;
                    assert_eq!(m.insert(k, v), r.insert(k, v));
                } else {
                    let victim =
                        if rng.next() % 2 == 0 { r.range(k..).next().map(|(&k, _)| k).unwrap_or(k) } else { k };
                    if rng.next() % 2 == 0 {
                        assert_eq!(m.remove(victim), r.remove(&victim));
                    } else {
                        // Only values that are even go.
                        let want = r.get(&victim).copied().filter(|v| v % 2 == 0);
                        if want.is_some() {
                            r.remove(&victim);
                        }
                        assert_eq!(m.remove_if(victim, |v| v % 2 == 0), want);
                    }
                }
                if op % 997 == 0 {
                    let probes: Vec<u64> = (0..20).map(|_| rng.next() % space.max(1)).collect();
                    check(&m, &r, &probes);
                }
            }
            // Empty it in random order: every node comes back.
            let mut keys: Vec<u64> = r.keys().copied().collect();
            while !keys.is_empty() {
                let i = (rng.next() % keys.len() as u64) as usize;
                let k = keys.swap_remove(i);
                assert_eq!(m.remove(k), r.remove(&k));
            }
            check(&m, &r, &[0, 5, u64::MAX]);
            assert_eq!(m.height, 0);
        }
    }

    #[test]
    fn edges() {
        let mut m = SlabMap::<u64>::new();
        assert_eq!(m.prev(5), None);
        assert_eq!(m.next(5), None);
        assert_eq!(m.remove(5), None);
        m.insert(u64::MAX, 1);
        m.insert(0, 2);
        assert_eq!(m.prev(u64::MAX), Some((u64::MAX, &1)));
        assert_eq!(m.prev_below(u64::MAX), Some((0, &2)));
        assert_eq!(m.prev_below(0), None);
        assert_eq!(m.next(1), Some((u64::MAX, &1)));
        assert_eq!(m.range(5, 4).count(), 0);
        assert_eq!(m.first(), Some((0, &2)));
        assert_eq!(m.last(), Some((u64::MAX, &1)));
        *m.get_mut(0).unwrap() = 9;
        *m.prev_mut(3).unwrap().1 += 1;
        assert_eq!(m.get(0), Some(&10));
    }

    /// The steady state reuses nodes: inserting and removing one key, or a
    /// few thousand, again and again leaves the storage as it was.
    #[test]
    fn steady_state_reuses_nodes() {
        let mut m = SlabMap::<u32>::new();
        for round in 0..3 {
            for k in 0..5_000u64 {
                m.insert(k * 4096, k as u32);
            }
            let cap = (m.leaves.len(), m.inners.len());
            for k in 0..5_000u64 {
                assert_eq!(m.remove(k * 4096), Some(k as u32));
            }
            assert!(m.is_empty());
            if round > 0 {
                for k in 0..5_000u64 {
                    m.insert(k * 4096, 0);
                }
                assert_eq!((m.leaves.len(), m.inners.len()), cap, "no new nodes");
                for k in 0..5_000u64 {
                    m.remove(k * 4096);
                }
            }
        }
        let before = m.leaves.len();
        for _ in 0..100 {
            m.insert(42, 1);
            m.remove(42);
        }
        assert_eq!(m.leaves.len(), before);
    }
    /// The small map against `BTreeMap`: single entries inline, then a
    /// tree, emptied and refilled.
    #[test]
    fn small_map_behaves_like_btreemap() {
        let mut rng = Rng(0x5eed_1234_5678_9abd);
        let mut m = SmallMap::<u32>::default();
        let mut r = BTreeMap::new();
        for op in 0..20_000u32 {
            let k = rng.next() % if op % 4000 < 2000 { 3 } else { 200 };
            if rng.next() % 2 == 0 {
                assert_eq!(m.insert(k, op), r.insert(k, op));
            } else {
                assert_eq!(m.remove(k), r.remove(&k));
            }
            assert_eq!(m.len(), r.len());
            let p = rng.next() % 210;
            assert_eq!(m.get(p), r.get(&p));
            assert_eq!(m.prev(p).map(|(k, &v)| (k, v)), r.range(..=p).next_back().map(|(&k, &v)| (k, v)));
            assert_eq!(m.next(p).map(|(k, &v)| (k, v)), r.range(p..).next().map(|(&k, &v)| (k, v)));
            assert!(m.range(p, p + 20).map(|(k, &v)| (k, v)).eq(r.range(p..=p + 20).map(|(&k, &v)| (k, v))));
        }
        let mut one = SmallMap::<u32>::default();
        one.insert(7, 1);
        assert!(matches!(one, SmallMap::One(7, 1)) && one.capacity_bytes() == 0);
        *one.get_mut(7).unwrap() = 2;
        assert_eq!(one.remove(7), Some(2));
        assert!(one.is_empty() && matches!(one, SmallMap::Empty));
    }

    /// Keys inserted in ascending order fill their nodes (the split at the
    /// end of the map leaves the full node as it is), and the map still
    /// agrees with `BTreeMap` after removals in and around them.
    #[test]
    fn ascending_inserts_fill_nodes() {
        let mut m = SlabMap::<u32>::new();
        let mut r = BTreeMap::new();
        let n = 100_000u64;
        for k in 0..n {
            m.insert(k * 8192, k as u32);
            r.insert(k * 8192, k as u32);
        }
        let full = (n as usize).div_ceil(B);
        assert!(m.leaves_in_use() <= full + 1, "{} leaves for {n} keys", m.leaves_in_use());
        check(&m, &r, &[0, 8191, 8192, 5 * 8192 + 1, (n - 1) * 8192, u64::MAX]);
        let mut rng = Rng(3);
        for _ in 0..20_000 {
            let k = (rng.next() % (n + 10)) * 8192 + rng.next() % 2;
            if rng.next() % 2 == 0 {
                assert_eq!(m.remove(k), r.remove(&k));
            } else {
                assert_eq!(m.insert(k, 1), r.insert(k, 1));
            }
        }
        let probes: Vec<u64> = (0..50).map(|_| rng.next() % (n * 8192)).collect();
        check(&m, &r, &probes);
    }
}
