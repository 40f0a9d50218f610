//! The synthetic data set every system is measured on, generated
//! deterministically so that every child process builds the same devices.

use std::collections::HashMap;
use std::sync::Arc;

use devreg::{Attributes, Device, Platform};

/// "Now" for every workload: a fixed instant, so runs are repeatable.
pub const NOW_MS: u64 = 1_750_000_000_000;
pub const DAY_MS: u64 = 86_400_000;

/// splitmix64: a tiny, good-enough PRNG (no extra dependency for benches),
/// and a cursor for walking a `KeyList` in order from a place that depends
/// on the seed.
#[derive(Clone)]
pub struct Rng(u64, u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(
            seed ^ 0x9e37_79b9_7f4a_7c15,
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 16,
        )
    }

    /// The next place of a walk over `len` items (len > 0).
    pub fn walk(&mut self, len: usize) -> usize {
        self.1 = self.1.wrapping_add(1);
        (self.1 % len as u64) as usize
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Keys a read phase looks up: `READ_KEYS` tokens of devices drawn at
/// random, copied one after another. A reader walks the list in order, so
/// choosing its next key costs the harness no random read of memory at any
/// size, while the system's own reads stay random. (Until 2026-12-04 each
/// read picked a random device of the data set and read its token: two
/// random reads of the harness's memory before the system's first, 0.5 µs
/// or more of a point read at 10^7; `harness_pick_ns` measured them.)
pub struct KeyList {
    bytes: String,
    ends: Vec<usize>,
}

/// Keys in a `KeyList`: more than one thread reads in a 2 s phase at 10^7.
pub const READ_KEYS: usize = 1 << 20;

impl KeyList {
    pub fn draw(devs: &[Dev], count: usize, seed: u64) -> KeyList {
        let mut r = Rng::new(seed);
        let mut bytes = String::new();
        let mut ends = Vec::with_capacity(count);
        for _ in 0..count {
            bytes.push_str(&devs[r.below(devs.len() as u64) as usize].token);
            ends.push(bytes.len());
        }
        KeyList { bytes, ends }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// The next key of `r`'s walk over the list.
    pub fn next(&self, r: &mut Rng) -> &str {
        self.get(r.walk(self.len()))
    }

    /// Key `i` (i < len).
    pub fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }
}

/// One device as the application hands it to a store.
#[derive(Clone, Debug)]
pub struct Dev {
    pub token: String,
    pub platform: Platform,
    pub person: Option<String>,
    pub seen_ms: u64,
    /// Shared between devices with the same attributes (there are a few
    /// thousand combinations), so that 10^7 devices fit in a child process.
    pub attrs: Arc<Attributes>,
}

impl Dev {
    pub fn to_device(&self, seen_ms: u64) -> Device {
        Device {
            token: self.token.clone(),
            platform: self.platform,
            person: self.person.clone(),
            last_seen_ms: seen_ms,
            attributes: (*self.attrs).clone(),
        }
    }
}

/// A 64-character lowercase hex token (the APNs shape), derived from `i`.
pub fn token(seed: u64, i: u64) -> String {
    let mut r = Rng::new(seed.wrapping_mul(1_000_003) ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        r.next_u64(),
        r.next_u64(),
        r.next_u64(),
        r.next_u64()
    )
}

pub fn person_name(i: u64) -> String {
    format!("person-{i:08}")
}

/// How many people own the `n` devices (about two devices each).
pub fn persons_for(n: usize) -> u64 {
    (n as u64 / 2).max(2)
}

fn pick<'a>(r: &mut Rng, set: &[&'a str]) -> &'a str {
    set[r.below(set.len() as u64) as usize]
}

/// Attribute values from the small sets a real app fleet has.
pub fn attributes(r: &mut Rng, platform: Platform) -> Attributes {
    let (os, models): (&[&str], &[&str]) = match platform {
        Platform::Ios => (
            &["16.7", "17.4", "17.5", "18.0", "18.1"],
            &["iPhone14,2", "iPhone15,3", "iPhone16,1", "iPad13,4"],
        ),
        Platform::Android => (
            &["12", "13", "14", "15"],
            &["Pixel 7", "Pixel 8", "SM-S911B", "SM-A546B", "moto g84"],
        ),
    };
    let mut a = Attributes::new();
    a.insert(
        "app_version".into(),
        pick(r, &["3.9.0", "4.0.1", "4.1.0", "4.2.0", "4.2.1"]).into(),
    );
    a.insert("device_os".into(), pick(r, os).into());
    a.insert("device_model".into(), pick(r, models).into());
    a.insert(
        "push_enabled".into(),
        pick(r, &["true", "true", "false"]).into(),
    );
    a.insert(
        "device_locale".into(),
        pick(r, &["en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR"]).into(),
    );
    a.insert(
        "cio_sdk_version".into(),
        pick(r, &["3.1.0", "3.2.1", "3.3.0"]).into(),
    );
    a
}

/// `n` devices: 60% iOS, 10% anonymous, the rest owned by ~n/2 people; half
/// seen in the last 30 days, half 31..365 days ago.
pub fn generate(n: usize, seed: u64) -> Vec<Dev> {
    let persons = persons_for(n);
    let mut r = Rng::new(seed);
    let mut interned: HashMap<Attributes, Arc<Attributes>> = HashMap::new();
    (0..n as u64)
        .map(|i| {
            let platform = if r.below(10) < 6 {
                Platform::Ios
            } else {
                Platform::Android
            };
            let person = (r.below(10) != 0).then(|| person_name(r.below(persons)));
            let age_days = if i % 2 == 0 {
                r.below(30)
            } else {
                31 + r.below(334)
            };
            let seen_ms = NOW_MS - age_days * DAY_MS - r.below(DAY_MS);
            let attrs = attributes(&mut r, platform);
            let attrs = interned
                .entry(attrs)
                .or_insert_with_key(|a| Arc::new(a.clone()))
                .clone();
            Dev {
                token: token(seed, i),
                platform,
                person,
                seen_ms,
                attrs,
            }
        })
        .collect()
}

/// The person ids merged in the merge workload: pair `k` is
/// (person 2k, person 2k+1), so no pair repeats within a run.
pub fn merge_pair(k: u64, n: usize) -> Option<(String, String)> {
    let persons = persons_for(n);
    (2 * k + 1 < persons).then(|| (person_name(2 * k), person_name(2 * k + 1)))
}

/// Sets attribute `name` to `value` on every device, keeping them shared.
pub fn set_attribute(devs: &mut [Dev], name: &str, value: &str) {
    let mut updated: HashMap<usize, Arc<Attributes>> = HashMap::new();
    for d in devs {
        let old = Arc::as_ptr(&d.attrs) as usize;
        let new = updated.entry(old).or_insert_with(|| {
            let mut a = (*d.attrs).clone();
            a.insert(name.into(), value.into());
            Arc::new(a)
        });
        d.attrs = new.clone();
    }
}
