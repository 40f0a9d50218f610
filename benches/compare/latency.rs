//! The host's memory latency, written beside the machine in every results
//! file: how long a load takes when its address depends on the load
//! before it (a pointer chase through a random cycle of cache lines).
//!
//! The growth rows (10^7 over 10^4) measure little else: at 10^4 devices
//! devreg's state is in the CPU's caches, at 10^7 a point read or a
//! `most_recent` waits for two such loads and a bulk write for several,
//! some overlapped by the read-ahead. The same engine read 0.56 for
//! `most_recent` on one host (an AMD EPYC) and 0.41 on another (a Xeon
//! VM; DESIGN.md 13 step 50), so a growth row means little without the
//! latency of the host that produced it.
//!
//! Three chases: 64 MiB and 1 GiB on 2 MiB pages (as devreg's slots and
//! indexes, `state/huge.rs`), and 1 GiB on 4 KiB pages (as the rest of
//! its heap). The 1 GiB ones are also the harness's sizes: a 10^7
//! state's slots are about 1 GiB.

use std::time::Instant;

/// Bytes a chase steps by: one cache line per step.
const LINE_BYTES: usize = 64;
/// The huge page size of x86-64 (and of aarch64 with 4 KiB pages).
const HUGE_PAGE_BYTES: usize = 2 << 20;
/// Loads timed per chase: about half a second at 500 ns a load.
const STEPS: usize = 1 << 20;
/// Lines visited before the timing starts, so the first page faults and
/// the cold TLB are not timed.
const WARM_STEPS: usize = 1 << 14;

/// One chase: its array's size, its pages and the mean time of a load.
pub struct Chase {
    pub mib: usize,
    pub huge_pages: bool,
    pub ns_per_load: f64,
}

/// The three chases (see the module doc), one after another.
pub fn measure() -> Vec<Chase> {
    [(64, true), (1024, true), (1024, false)]
        .into_iter()
        .map(|(mib, huge_pages)| Chase {
            mib,
            huge_pages,
            ns_per_load: chase_ns(mib << 20, huge_pages),
        })
        .collect()
}

/// One line of text: "64 MiB: 170 ns, 1 GiB: 280 ns (2 MiB pages); ...".
pub fn text(chases: &[Chase]) -> String {
    let part = |c: &Chase| {
        let size = if c.mib >= 1024 {
            format!("{} GiB", c.mib / 1024)
        } else {
            format!("{} MiB", c.mib)
        };
        let pages = if c.huge_pages { "2 MiB" } else { "4 KiB" };
        format!("{size} on {pages} pages {:.0} ns", c.ns_per_load)
    };
    let parts: Vec<String> = chases.iter().map(part).collect();
    format!(
        "memory: a load whose address depends on the load before takes {}\n",
        parts.join(", ")
    )
}

/// Mean nanoseconds of a dependent load in a random cycle through every
/// line of `bytes` of memory, on huge pages or not.
fn chase_ns(bytes: usize, huge_pages: bool) -> f64 {
    let lines = bytes / LINE_BYTES;
    let words_per_line = LINE_BYTES / std::mem::size_of::<u64>();
    // Room to start at a huge page boundary. `vec!` of zeros maps fresh
    // pages untouched, so the advice below comes before the first fault.
    let mut buf: Vec<u64> = vec![0; (bytes + HUGE_PAGE_BYTES) / 8];
    let skew = buf.as_ptr() as usize % HUGE_PAGE_BYTES;
    let start = (HUGE_PAGE_BYTES - skew) % HUGE_PAGE_BYTES / 8;
    let ring = &mut buf[start..start + bytes / 8];
    advise(ring, huge_pages);
    // Sattolo's shuffle: one cycle through every line.
    let mut order: Vec<u32> = (0..lines as u32).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..lines).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % i as u64) as usize);
    }
    for (i, &line) in order.iter().enumerate() {
        let next = order[(i + 1) % lines];
        ring[line as usize * words_per_line] = u64::from(next);
    }
    drop(order);
    let mut at = 0usize;
    for _ in 0..WARM_STEPS {
        at = ring[at * words_per_line] as usize;
    }
    let t = Instant::now();
    for _ in 0..STEPS {
        at = ring[at * words_per_line] as usize;
    }
    let ns = t.elapsed().as_nanos() as f64 / STEPS as f64;
    std::hint::black_box(at);
    ns
}

/// Asks for huge pages on `ring` (or for none, whatever the host's THP
/// mode): an advice that changes no byte; an error leaves the pages as
/// they are, and the text says which were asked for.
fn advise(ring: &mut [u64], huge_pages: bool) {
    #[cfg(target_os = "linux")]
    {
        let advice = if huge_pages {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: madvise reads and writes no memory of the process; the
        // range is inside `ring`'s live allocation.
        let _ = unsafe {
            libc::madvise(
                ring.as_mut_ptr().cast::<libc::c_void>(),
                std::mem::size_of_val(ring),
                advice,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ring, huge_pages);
}
