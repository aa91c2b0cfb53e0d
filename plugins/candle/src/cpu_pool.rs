//! Sharing work of the CPU kernels ([`crate::cpu_gemm`], [`crate::cpu_act`], [`crate::cpu_q8`])
//! out over candle's barrier pool, where each thread writes its own part of one buffer.

/// A raw pointer the pool's threads may share: each writes only its own part.
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// Copied whatever `T` is (a derive would ask `T: Copy`).
impl<T> Clone for SyncPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SyncPtr<T> {}
// SAFETY: see the type's docs; users write disjoint ranges.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// `f(i, chunk i of buf)` for every `width`-long chunk of `buf` (the last may be shorter),
/// chunks handed out on the barrier pool; a `buf` shorter than `inline_below` elements is
/// done on this thread (less work than the hand-off).
pub(crate) fn for_each_chunk<T: Send>(
    buf: &mut [T],
    width: usize,
    inline_below: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if width == 0 || buf.is_empty() {
        return;
    }
    if buf.len() < inline_below {
        buf.chunks_mut(width)
            .enumerate()
            .for_each(|(i, chunk)| f(i, chunk));
        return;
    }
    let (len, base) = (buf.len(), SyncPtr(buf.as_mut_ptr()));
    candle_core::utils::barrier_pool().execute_chunked(len.div_ceil(width), |range| {
        for i in range {
            let start = i * width;
            // SAFETY: each index is handed out once, so chunks never overlap; they lie inside
            // `buf`, which the caller's borrow keeps alive until the pool returns.
            let chunk = unsafe {
                std::slice::from_raw_parts_mut(base.get().add(start), width.min(len - start))
            };
            f(i, chunk);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_visited_once_inline_and_on_the_pool() {
        for inline_below in [usize::MAX, 0] {
            let mut buf = vec![0usize; 103];
            for_each_chunk(&mut buf, 10, inline_below, |i, chunk| {
                chunk.iter_mut().for_each(|v| *v += i + 1)
            });
            let want: Vec<usize> = (0..103).map(|j| j / 10 + 1).collect();
            assert_eq!(buf, want, "inline below {inline_below}");
        }
    }
}
