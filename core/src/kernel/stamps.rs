//! Sector contents of a bio or a buffer, held as runs of stamps.
//!
//! Most data the engine moves counts up or repeats: a user write is a block
//! of fresh stamps, a never-written range is the device's pattern or zeros.
//! Held as runs (first stamp, step, length), a 512 MiB chunk copy of such a
//! range is one run, so moving it costs O(1) in time and memory whatever
//! the chunk size. Stamps that follow no rule cost one run each.
//!
//! Equality is on content, never on how the runs happen to be cut, so two
//! `Stamps` built different ways compare equal when they read the same.

use std::fmt;

use super::Stamp;

/// `len` stamps: sector `i` holds `first + i * step` (wrapping). `step` is
/// 1 (a user write, the pattern) or 0 (zeros, one repeated stamp).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Run {
    pub first: Stamp,
    pub step: u64,
    pub len: u64,
}

impl Run {
    /// The stamp of sector `i` of the run.
    pub fn at(&self, i: u64) -> Stamp {
        self.first.wrapping_add(i.wrapping_mul(self.step))
    }

    /// Sectors [from, to) of the run.
    pub fn slice(&self, from: u64, to: u64) -> Run {
        debug_assert!(from <= to && to <= self.len);
        Run {
            first: self.at(from),
            step: self.step,
            len: to - from,
        }
    }

    /// Whether `next` can continue this run without a new one.
    fn continues_with(&self, next: &Run) -> Option<u64> {
        if self.len == 1 {
            // A lone stamp takes the step the next run gives it.
            let step = next.first.wrapping_sub(self.first);
            ((step == 0 || step == 1) && (next.len == 1 || next.step == step)).then_some(step)
        } else {
            (next.first == self.at(self.len) && (next.len == 1 || next.step == self.step))
                .then_some(self.step)
        }
    }
}

/// The panic of a cut past the end, out of line so that the inlined
/// `slice` carries no formatting code.
#[cold]
#[inline(never)]
#[track_caller]
fn out_of_range(from: u64, to: u64, len: u64) -> ! {
    panic!("[{from}, {to}) of {len}")
}

/// `data` as one run, if it is one: counting up, or one stamp repeated
/// (a lone stamp is a run of step 0). None for empty data.
#[inline]
fn one_run(data: &[Stamp]) -> Option<Run> {
    let (&first, tail) = data.split_first()?;
    let step = tail.first().map_or(0, |next| next.wrapping_sub(first));
    if step > 1 {
        return None;
    }
    let mut previous = first;
    for &stamp in tail {
        if stamp != previous.wrapping_add(step) {
            return None;
        }
        previous = stamp;
    }
    Some(Run {
        first,
        step,
        len: data.len() as u64,
    })
}

/// A run as `push_run` keeps it: a lone stamp has step 0.
fn normal(run: Run) -> Run {
    if run.len == 1 {
        Run { step: 0, ..run }
    } else {
        run
    }
}

/// A run and the offset of its first sector in the whole.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Piece {
    at: u64,
    run: Run,
}

/// The pieces of a `Stamps`. Most data is one run (a user write, a chunk
/// of a never-written range), so one piece is held inline: cloning or
/// building such data allocates nothing.
#[derive(Clone, Default)]
enum Pieces {
    #[default]
    Empty,
    One(Piece),
    Many(Vec<Piece>),
}

impl Pieces {
    fn as_slice(&self) -> &[Piece] {
        match self {
            Pieces::Empty => &[],
            Pieces::One(piece) => std::slice::from_ref(piece),
            Pieces::Many(pieces) => pieces,
        }
    }

    fn last_mut(&mut self) -> Option<&mut Piece> {
        match self {
            Pieces::Empty => None,
            Pieces::One(piece) => Some(piece),
            Pieces::Many(pieces) => pieces.last_mut(),
        }
    }

    /// Inlined for the usual first piece; growing past one piece
    /// allocates, so it stays out of line (`push_more`).
    #[inline]
    fn push(&mut self, piece: Piece) {
        match self {
            Pieces::Empty => *self = Pieces::One(piece),
            _ => self.push_more(piece),
        }
    }

    #[inline(never)]
    fn push_more(&mut self, piece: Piece) {
        match self {
            Pieces::Empty => *self = Pieces::One(piece),
            Pieces::One(first) => *self = Pieces::Many(vec![*first, piece]),
            Pieces::Many(pieces) => pieces.push(piece),
        }
    }
}

/// A sequence of stamps, one per sector, stored run by run.
#[derive(Clone, Default)]
pub struct Stamps {
    pieces: Pieces,
    len: u64,
}

impl Stamps {
    pub fn new() -> Stamps {
        Stamps::default()
    }

    /// `len` sectors all holding `stamp` (zeros: `repeat(0, len)`).
    pub fn repeat(stamp: Stamp, len: u64) -> Stamps {
        Stamps::run(stamp, 0, len)
    }

    /// `len` sectors counting up from `first`.
    pub fn counting(first: Stamp, len: u64) -> Stamps {
        Stamps::run(first, 1, len)
    }

    pub fn run(first: Stamp, step: u64, len: u64) -> Stamps {
        Stamps::of_run(Run { first, step, len })
    }

    /// One run as `push_run` onto empty data holds it, built directly.
    #[inline]
    fn of_run(run: Run) -> Stamps {
        if run.len == 0 {
            return Stamps::new();
        }
        Stamps {
            pieces: Pieces::One(Piece {
                at: 0,
                run: normal(run),
            }),
            len: run.len,
        }
    }

    /// Cut into runs as pushing the stamps one by one would: each run is
    /// as long as it can be, its step set by its first two stamps.
    pub fn from_slice(data: &[Stamp]) -> Stamps {
        // A user write's data is one run: built directly, as `push_run`
        // onto empty data would hold it.
        if let Some(run) = one_run(data) {
            return Stamps::of_run(run);
        }
        let mut out = Stamps::new();
        let mut rest = data;
        // Walked by slice patterns: no index, so no bounds check per stamp
        // (every user write's data comes through here).
        while let [first, tail @ ..] = rest {
            let step = tail.first().map_or(0, |next| next.wrapping_sub(*first));
            let mut len = 1;
            if step <= 1 {
                let mut previous = *first;
                for &stamp in tail {
                    if stamp != previous.wrapping_add(step) {
                        break;
                    }
                    previous = stamp;
                    len += 1;
                }
            }
            out.push_run(Run {
                first: *first,
                step: if len == 1 { 0 } else { step },
                len: len as u64,
            });
            rest = &rest[len..];
        }
        out
    }

    pub fn from_vec(data: Vec<Stamp>) -> Stamps {
        Stamps::from_slice(&data)
    }

    /// The parts one after the other.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Stamps>) -> Stamps {
        let mut out = Stamps::new();
        for part in parts {
            out.append(part);
        }
        out
    }

    /// Sectors held.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs held (what the memory grows with).
    pub fn runs(&self) -> usize {
        self.pieces.as_slice().len()
    }

    /// The index of the piece holding sector `i`. With pieces of about
    /// one length (a device's media after many writes of one size) it is
    /// near `i * pieces / len`: that piece is looked at first, one load
    /// where the binary search waited on a chain of about log2(pieces)
    /// dependent ones (the costliest stall of a non-COW write's device
    /// update, issue 10); any other sector is found by the search.
    fn piece_of(&self, i: u64) -> usize {
        assert!(i < self.len, "stamp {i} of {}", self.len);
        let pieces = self.pieces.as_slice();
        if let Some(scaled) = i.checked_mul(pieces.len() as u64) {
            // Below `pieces.len()`, as `i < len`.
            let guess = (scaled / self.len) as usize;
            let piece = &pieces[guess];
            if piece.at <= i && i < piece.at + piece.run.len {
                return guess;
            }
        }
        pieces.partition_point(|p| p.at <= i) - 1
    }

    /// `piece_of(i)` for an `i` at or past piece `from`: usually in that
    /// same piece (a small write), so no second binary search.
    fn piece_of_from(&self, from: usize, i: u64) -> usize {
        let pieces = self.pieces.as_slice();
        let piece = &pieces[from];
        if i < piece.at + piece.run.len {
            return from;
        }
        self.piece_of(i)
    }

    /// The stamp of sector `i`; panics past the end, as indexing does.
    pub fn get(&self, i: u64) -> Stamp {
        if let Pieces::One(piece) = &self.pieces {
            assert!(i < self.len, "stamp {i} of {}", self.len);
            return piece.run.at(i - piece.at);
        }
        let piece = &self.pieces.as_slice()[self.piece_of(i)];
        piece.run.at(i - piece.at)
    }

    pub fn push(&mut self, stamp: Stamp) {
        self.push_run(Run {
            first: stamp,
            step: 0,
            len: 1,
        });
    }

    /// Append a run, merged into the last one when it continues it.
    /// Inlined: every bio's data is built or joined run by run through
    /// here (a 512 MiB chunk copy is 1024 bios), and the call itself
    /// cost about as much as the merge. `#[inline]` alone was not taken
    /// (it stayed a 40-instruction call, 17.7 M on pib200), so it is forced.
    #[inline(always)]
    pub fn push_run(&mut self, run: Run) {
        if run.len == 0 {
            return;
        }
        let run = if run.len == 1 {
            Run { step: 0, ..run }
        } else {
            run
        };
        self.len += run.len;
        if let Some(last) = self.pieces.last_mut() {
            if let Some(step) = last.run.continues_with(&run) {
                last.run.step = step;
                last.run.len += run.len;
                return;
            }
        }
        self.pieces.push(Piece {
            at: self.len - run.len,
            run,
        });
    }

    /// Inlined: most data is one run (each part of a split bio), and a
    /// call with the loop's register saves cost about as much as the push
    /// itself. Many runs go out of line (`append_pieces`).
    #[inline]
    pub fn append(&mut self, other: &Stamps) {
        match &other.pieces {
            Pieces::One(piece) => self.push_run(piece.run),
            Pieces::Empty => {}
            Pieces::Many(pieces) => self.append_pieces(pieces),
        }
    }

    #[inline(never)]
    fn append_pieces(&mut self, pieces: &[Piece]) {
        for piece in pieces {
            self.push_run(piece.run);
        }
    }

    /// Sectors [from, to) as their own `Stamps`. Inlined for one run (most
    /// data, e.g. each part of a split chunk IO): its cut, without the
    /// iterator, the call, or the panic's formatting in line.
    #[inline]
    pub fn slice(&self, from: u64, to: u64) -> Stamps {
        if let Pieces::One(piece) = &self.pieces {
            if !(from <= to && to <= self.len) {
                out_of_range(from, to, self.len);
            }
            // The only piece starts at sector 0.
            return Stamps::of_run(piece.run.slice(from, to));
        }
        self.slice_pieces(from, to)
    }

    #[inline(never)]
    fn slice_pieces(&self, from: u64, to: u64) -> Stamps {
        let mut out = Stamps::new();
        for (_, run) in self.runs_in(from, to) {
            out.push_run(run);
        }
        out
    }

    /// The runs covering sectors [from, to), cut to it, each with the
    /// offset of its first sector in `self`.
    pub fn runs_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, Run)> + '_ {
        assert!(
            from <= to && to <= self.len,
            "[{from}, {to}) of {}",
            self.len
        );
        let pieces = self.pieces.as_slice();
        let first = if from == to {
            pieces.len()
        } else {
            self.piece_of(from)
        };
        pieces[first..]
            .iter()
            .take_while(move |p| p.at < to)
            .map(move |p| {
                let start = from.max(p.at);
                let stop = to.min(p.at + p.run.len);
                (start, p.run.slice(start - p.at, stop - p.at))
            })
    }

    /// The one run the data is held as, if it is one (a user write's
    /// data): a match, where `runs` and `iter_runs` went through slices.
    #[inline]
    pub fn single_run(&self) -> Option<Run> {
        match &self.pieces {
            Pieces::One(piece) => Some(piece.run),
            _ => None,
        }
    }

    /// Every run with the offset of its first sector.
    pub fn iter_runs(&self) -> impl Iterator<Item = (u64, Run)> + '_ {
        self.pieces.as_slice().iter().map(|p| (p.at, p.run))
    }

    /// Every stamp, one per sector (O(len): for small data and messages).
    pub fn iter(&self) -> impl Iterator<Item = Stamp> + '_ {
        self.pieces
            .as_slice()
            .iter()
            .flat_map(|p| (0..p.run.len).map(move |i| p.run.at(i)))
    }

    pub fn to_vec(&self) -> Vec<Stamp> {
        self.iter().collect()
    }

    /// Replace sectors [at, at + src.len()) with `src`, cut into runs
    /// exactly as the rebuild (the part before, `src`, then the part after
    /// cut again by `slice`) cuts them, but in place: only the pieces a
    /// merge can reach are pushed again, so a small write into data of
    /// many runs costs O(its runs + log n), not O(n).
    pub fn overwrite(&mut self, at: u64, src: &Stamps) {
        let end = at + src.len;
        assert!(end <= self.len, "[{at}, {end}) of {}", self.len);
        if src.is_empty() {
            // Rare; cutting the part after again may still merge runs.
            let mut out = self.slice(0, at);
            out.append(&self.slice(end, self.len));
            *self = out;
            return;
        }
        let first = self.piece_of(at);
        let last = self.piece_of_from(first, end - 1);
        if self.overwrite_without_merges(at, src, first, last) {
            return;
        }
        let pieces = self.pieces.as_slice();
        // The pieces before `first` come back unchanged, but the part of
        // `first` before the write may merge into the one before it.
        let start = first.saturating_sub(1);
        let mut mid = Stamps::new();
        if start < first {
            mid.push_run(pieces[start].run);
        }
        let head = &pieces[first];
        mid.push_run(head.run.slice(0, at - head.at));
        mid.append(src);
        // The part after, cut again on its own as `slice` does, then
        // pushed after `src`: each pass re-pushes pieces only while they
        // merge; from the first that does not, the rest is unchanged.
        let tail = &pieces[last];
        let mut after = Stamps::new();
        after.push_run(tail.run.slice(end - tail.at, tail.run.len));
        let mut stop = Self::push_while_merging(&mut after, pieces, last + 1);
        mid.append(&after);
        stop = Self::push_while_merging(&mut mid, pieces, stop);
        let base = pieces[start].at;
        self.splice(start..stop, base, mid);
    }

    /// The usual overwrite (one run into data of many, the device's
    /// extents): when no run merges with its neighbour along the part
    /// before the write, `src` and the part after, the rebuild cuts them
    /// as they stand, so they replace pieces `first..=last` in place with
    /// no allocation. False, having changed nothing, otherwise.
    fn overwrite_without_merges(
        &mut self,
        at: u64,
        src: &Stamps,
        first: usize,
        last: usize,
    ) -> bool {
        let Pieces::One(middle) = src.pieces else {
            return false;
        };
        let Pieces::Many(pieces) = &mut self.pieces else {
            return false;
        };
        let end = at + src.len;
        let (head, tail) = (pieces[first], pieces[last]);
        let before = Piece {
            at: head.at,
            run: normal(head.run.slice(0, at - head.at)),
        };
        let after = Piece {
            at: end,
            run: normal(tail.run.slice(end - tail.at, tail.run.len)),
        };
        let middle = Piece { at, ..middle };
        // The non-empty parts, in a fixed array: no iterator adapters,
        // whose inlined code cost more than the rest of the overwrite.
        let mut new = [middle; 3];
        let mut n = 0;
        for piece in [before, middle, after] {
            if piece.run.len > 0 {
                new[n] = piece;
                n += 1;
            }
        }
        let new = &new[..n];
        let mut previous = first.checked_sub(1).map(|i| pieces[i]);
        for piece in new.iter().chain(pieces.get(last + 1)) {
            if previous.is_some_and(|p| p.run.continues_with(&piece.run).is_some()) {
                return false;
            }
            previous = Some(*piece);
        }
        Self::replace_pieces(pieces, first, last, new);
        if let [one] = pieces[..] {
            self.pieces = Pieces::One(one);
        }
        true
    }

    /// Replace `pieces[first..=last]` with `new`: in place when the count
    /// is unchanged, else one move of the tail.
    fn replace_pieces(pieces: &mut Vec<Piece>, first: usize, last: usize, new: &[Piece]) {
        let removed = last + 1 - first;
        if new.len() == removed {
            pieces[first..=last].copy_from_slice(new);
        } else {
            pieces.splice(first..=last, new.iter().copied());
        }
    }

    /// Push `pieces[from..]` onto `out` while each merges into its last
    /// run; the index of the first that would not.
    fn push_while_merging(out: &mut Stamps, pieces: &[Piece], from: usize) -> usize {
        let mut at = from;
        while let Some(next) = pieces.get(at) {
            let last = out.pieces.as_slice().last();
            if last.is_none_or(|p| p.run.continues_with(&next.run).is_none()) {
                break;
            }
            out.push_run(next.run);
            at += 1;
        }
        at
    }

    /// Replace `range` of the pieces with `mid`'s, which start at `base`.
    fn splice(&mut self, range: std::ops::Range<usize>, base: u64, mid: Stamps) {
        let whole = range.start == 0 && range.end == self.pieces.as_slice().len();
        if whole {
            self.pieces = mid.pieces;
            return;
        }
        let moved = mid.pieces.as_slice().iter().map(|p| Piece {
            at: p.at + base,
            run: p.run,
        });
        match &mut self.pieces {
            Pieces::Many(pieces) => {
                pieces.splice(range, moved);
                if pieces.len() == 1 {
                    self.pieces = Pieces::One(pieces[0]);
                }
            }
            _ => unreachable!("one piece or none is always replaced whole"),
        }
    }

    /// Cut to `len` sectors, or grow with `stamp`.
    pub fn resize(&mut self, len: u64, stamp: Stamp) {
        if len <= self.len {
            *self = self.slice(0, len);
        } else {
            self.push_run(Run {
                first: stamp,
                step: 0,
                len: len - self.len,
            });
        }
    }

    /// Whether every sector holds `stamp` (true when empty).
    pub fn is_all(&self, stamp: Stamp) -> bool {
        self.pieces
            .as_slice()
            .iter()
            .all(|p| p.run.first == stamp && (p.run.step == 0 || p.run.len == 1))
    }
}

impl PartialEq for Stamps {
    /// Content equality, walked run against run.
    fn eq(&self, other: &Stamps) -> bool {
        if self.len != other.len {
            return false;
        }
        let (mut a, mut b) = (
            self.pieces.as_slice().iter(),
            other.pieces.as_slice().iter(),
        );
        let (mut ra, mut rb) = (None::<Run>, None::<Run>);
        loop {
            let x = match ra.take().or_else(|| a.next().map(|p| p.run)) {
                Some(run) => run,
                None => return rb.is_none() && b.next().is_none(),
            };
            let y = match rb.take().or_else(|| b.next().map(|p| p.run)) {
                Some(run) => run,
                None => return false,
            };
            let n = x.len.min(y.len);
            if x.first != y.first || (n > 1 && x.step != y.step) {
                return false;
            }
            if x.len > n {
                ra = Some(x.slice(n, x.len));
            }
            if y.len > n {
                rb = Some(y.slice(n, y.len));
            }
        }
    }
}

impl Eq for Stamps {}

impl PartialEq<[Stamp]> for Stamps {
    fn eq(&self, other: &[Stamp]) -> bool {
        self.len == other.len() as u64 && self.iter().eq(other.iter().copied())
    }
}

impl PartialEq<Vec<Stamp>> for Stamps {
    fn eq(&self, other: &Vec<Stamp>) -> bool {
        self == other.as_slice()
    }
}

/// Printed as the list of stamps, as the `Vec` it replaces was.
impl fmt::Debug for Stamps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl From<Vec<Stamp>> for Stamps {
    fn from(data: Vec<Stamp>) -> Stamps {
        Stamps::from_vec(data)
    }
}

impl From<&[Stamp]> for Stamps {
    fn from(data: &[Stamp]) -> Stamps {
        Stamps::from_slice(data)
    }
}

impl FromIterator<Stamp> for Stamps {
    fn from_iter<I: IntoIterator<Item = Stamp>>(iter: I) -> Stamps {
        let mut out = Stamps::new();
        for stamp in iter {
            out.push(stamp);
        }
        out
    }
}

#[cfg(test)]
mod tests {

    /// The one-run short path of `slice` cuts as the general path would:
    /// the same stamps, and the same runs as pushing them one by one.
    #[test]
    fn a_slice_of_one_run_is_cut_as_its_stamps() {
        for (first, step) in [(7, 0), (7, 1), (u64::MAX - 3, 1)] {
            for len in 1..12 {
                let whole = Stamps::run(first, step, len);
                let stamps = whole.to_vec();
                for from in 0..=len {
                    for to in from..=len {
                        let cut = whole.slice(from, to);
                        let want = Stamps::from_slice(&stamps[from as usize..to as usize]);
                        assert_eq!(cut.len(), to - from);
                        assert_eq!(cut.to_vec(), want.to_vec(), "[{from}, {to}) of {len}");
                        let runs: Vec<_> = cut.iter_runs().collect();
                        let want_runs: Vec<_> = want.iter_runs().collect();
                        assert_eq!(runs, want_runs, "[{from}, {to}) of {len}");
                    }
                }
            }
        }
    }

    use super::*;

    /// A cut past the end panics with the same message on both paths of
    /// `slice`: the one-run path inlined, the many-run path out of line.
    #[test]
    fn a_slice_past_the_end_panics_on_both_paths() {
        let one = Stamps::counting(1, 8);
        let many = Stamps::from_slice(&[1, 5, 9]);
        for (stamps, from, to, want) in [
            (&one, 4, 9, "[4, 9) of 8"),
            (&one, 5, 4, "[5, 4) of 8"),
            (&many, 0, 4, "[0, 4) of 3"),
        ] {
            let panic = std::panic::catch_unwind(|| stamps.slice(from, to)).unwrap_err();
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .unwrap_or_default();
            assert_eq!(message, want);
        }
    }

    /// `append` of an empty, a one-run and a many-run `Stamps` (the inlined
    /// paths and the loop) reads as the concatenated stamps, and merges a
    /// run that goes on across the seam.
    #[test]
    fn append_of_each_shape_reads_as_the_concatenation() {
        let parts = [
            Stamps::new(),
            Stamps::counting(10, 4),
            Stamps::from_slice(&[14, 15, 3, 3, 3]),
            Stamps::counting(4, 2),
            Stamps::new(),
        ];
        let mut whole = Stamps::new();
        let mut model = Vec::new();
        for part in &parts {
            whole.append(part);
            model.extend(part.to_vec());
            assert_eq!(whole, model);
        }
        // 10..=15 is one run; 3, 3, 3 then 4, 5 are two more.
        assert_eq!(whole.runs(), 3);
    }

    #[test]
    fn runs_merge_and_read_back() {
        let data: Vec<Stamp> = vec![5, 6, 7, 7, 7, 0, 9, 10, 1 << 62, 3];
        let s = Stamps::from_slice(&data);
        assert_eq!(s.len(), 10);
        assert_eq!(s.to_vec(), data);
        assert_eq!(s, data);
        for (i, &d) in data.iter().enumerate() {
            assert_eq!(s.get(i as u64), d);
        }
        assert_eq!(Stamps::counting(100, 1 << 40).runs(), 1);
        assert!(Stamps::repeat(0, 1 << 40).is_all(0));
    }

    #[test]
    fn slices_and_overwrites_match_a_vec() {
        let mut model: Vec<Stamp> = (0..64)
            .map(|i| if i % 9 == 0 { 0 } else { 1000 + i })
            .collect();
        let mut s = Stamps::from_slice(&model);
        for (from, to) in [(0, 64), (3, 3), (5, 40), (63, 64), (8, 9)] {
            assert_eq!(
                s.slice(from, to),
                model[from as usize..to as usize].to_vec()
            );
        }
        for (at, src) in [
            (4u64, vec![1, 2, 3]),
            (0, vec![9; 5]),
            (60, vec![7, 8, 9, 10]),
        ] {
            model[at as usize..at as usize + src.len()].copy_from_slice(&src);
            s.overwrite(at, &Stamps::from_vec(src));
            assert_eq!(s, model);
        }
        s.resize(70, 4);
        model.resize(70, 4);
        assert_eq!(s, model);
        s.resize(10, 0);
        assert_eq!(s, model[..10].to_vec());
    }

    /// `piece_of` finds each sector's piece whether its guess holds
    /// (pieces of one length) or not (pieces of many lengths).
    #[test]
    fn piece_of_finds_every_sector_with_or_without_its_guess() {
        let even: Vec<Stamp> = (0..64).map(|i| 1000 * (i / 8)).collect();
        let uneven: Vec<Stamp> = (0..64)
            .map(|i| if i % 9 == 0 { 0 } else { 1000 + i })
            .collect();
        for data in [even, uneven] {
            let s = Stamps::from_slice(&data);
            let pieces = s.pieces.as_slice();
            for i in 0..s.len() {
                let at = s.piece_of(i);
                assert_eq!(at, pieces.partition_point(|p| p.at <= i) - 1, "sector {i}");
                assert_eq!(pieces[at].run.at(i - pieces[at].at), data[i as usize]);
            }
        }
    }

    /// The old overwrite, the model of the in-place one: rebuild it all.
    fn rebuilt_overwrite(s: &Stamps, at: u64, src: &Stamps) -> Stamps {
        let mut out = s.slice(0, at);
        out.append(src);
        out.append(&s.slice(at + src.len(), s.len()));
        out
    }

    /// Overwrites in place cut the runs exactly as the rebuild does, on
    /// data whose few values make runs merge across every edge.
    #[test]
    fn an_overwrite_in_place_cuts_as_the_rebuild() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let runs = |s: &Stamps| s.iter_runs().collect::<Vec<_>>();
        for _ in 0..3000 {
            let n = 1 + next(20);
            let values = [0, 1, 2, 3, 4, u64::MAX];
            let data: Vec<Stamp> = (0..n).map(|_| values[next(6) as usize]).collect();
            let mut s = Stamps::from_slice(&data);
            let at = next(n);
            let len = next(n - at + 1);
            let src: Vec<Stamp> = (0..len).map(|_| values[next(6) as usize]).collect();
            let src = Stamps::from_slice(&src);
            let model = rebuilt_overwrite(&s, at, &src);
            s.overwrite(at, &src);
            assert_eq!(runs(&s), runs(&model), "{data:?} at {at} by {src:?}");
            assert_eq!(matches!(s.pieces, Pieces::One(_)), model.runs() == 1);
        }
    }

    #[test]
    fn from_slice_cuts_as_pushing_one_by_one() {
        // Stamps drawn from a few values so that runs of both steps, lone
        // stamps and wrap-arounds all occur; the greedy push is the model.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let n = (x % 12) as usize;
            let data: Vec<Stamp> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    [0, 1, 2, 3, u64::MAX, 7][(x % 6) as usize]
                })
                .collect();
            let fast = Stamps::from_slice(&data);
            let pushed: Stamps = data.iter().copied().collect();
            assert_eq!(fast.to_vec(), data);
            let runs = |s: &Stamps| s.iter_runs().collect::<Vec<_>>();
            assert_eq!(runs(&fast), runs(&pushed), "{data:?}");
        }
    }

    #[test]
    fn one_run_is_held_inline_and_grows_past_it() {
        let mut s = Stamps::counting(10, 4);
        assert!(matches!(s.pieces, Pieces::One(_)));
        s.push_run(Run {
            first: 0,
            step: 0,
            len: 3,
        });
        s.push(9);
        assert!(matches!(s.pieces, Pieces::Many(_)));
        assert_eq!(s.to_vec(), vec![10, 11, 12, 13, 0, 0, 0, 9]);
        assert_eq!(s.slice(2, 6).to_vec(), vec![12, 13, 0, 0]);
        assert!(Stamps::new().is_empty() && Stamps::new().runs() == 0);
    }

    #[test]
    fn equality_is_on_content_not_on_cuts() {
        // Greedy merging cuts 5,5,6,7 as [5 x2][6,7]; built the other way
        // it is [5][5,6,7]; both read the same.
        let a = Stamps::from_slice(&[5, 5, 6, 7]);
        let mut b = Stamps::repeat(5, 1);
        b.append(&Stamps::counting(5, 3));
        assert_eq!(a, b);
        assert_ne!(a, Stamps::from_slice(&[5, 5, 6, 8]));
        assert_ne!(a, Stamps::from_slice(&[5, 5, 6]));
    }
}
