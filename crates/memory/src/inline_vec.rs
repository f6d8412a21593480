//! A vector of `Copy` items whose first `N` live inline: what one pin or
//! one fill returns (usually a single run), without an allocation.

/// `N` items inline, more on the heap.
#[derive(Clone, Debug)]
pub enum InlineVec<T: Copy + Default, const N: usize> {
    Inline([T; N], usize),
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> Default for InlineVec<T, N> {
    fn default() -> Self {
        InlineVec::Inline([T::default(); N], 0)
    }
}

impl<T: Copy + Default, const N: usize> InlineVec<T, N> {
    pub fn new() -> Self {
        Self::default()
    }

    /// One item (the usual content), inline.
    #[inline]
    pub fn one(item: T) -> Self {
        let mut a = [T::default(); N];
        a[0] = item;
        InlineVec::Inline(a, 1)
    }

    #[inline]
    pub fn push(&mut self, item: T) {
        match self {
            InlineVec::Inline(a, n) if *n < N => {
                a[*n] = item;
                *n += 1;
            }
            _ => self.push_spilled(item),
        }
    }

    #[cold]
    fn push_spilled(&mut self, item: T) {
        match self {
            InlineVec::Inline(a, n) => {
                let mut v = Vec::with_capacity(2 * N.max(1));
                v.extend_from_slice(&a[..*n]);
                v.push(item);
                *self = InlineVec::Heap(v);
            }
            InlineVec::Heap(v) => v.push(item),
        }
    }
}

impl<T: Copy + Default, const N: usize> std::ops::Deref for InlineVec<T, N> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        match self {
            InlineVec::Inline(a, n) => &a[..*n],
            InlineVec::Heap(v) => v,
        }
    }
}

impl<T: Copy + Default, const N: usize> std::ops::DerefMut for InlineVec<T, N> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            InlineVec::Inline(a, n) => &mut a[..*n],
            InlineVec::Heap(v) => v,
        }
    }
}

impl<'a, T: Copy + Default, const N: usize> IntoIterator for &'a InlineVec<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for InlineVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for InlineVec<T, N> {}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq<Vec<T>> for InlineVec<T, N> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for InlineVec<T, N> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut v = Self::new();
        for x in iter {
            v.push(x);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_past_n() {
        let mut v = InlineVec::<u32, 2>::new();
        assert!(v.is_empty());
        assert_eq!(InlineVec::<u32, 2>::one(7), vec![7]);
        v.push(1);
        v.push(2);
        assert!(matches!(v, InlineVec::Inline(_, 2)));
        v.push(3);
        assert!(matches!(v, InlineVec::Heap(_)));
        assert_eq!(v, vec![1, 2, 3]);
        v[0] = 9;
        assert_eq!(v.iter().sum::<u32>(), 14);
    }
}
