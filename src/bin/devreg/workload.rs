//! The demo's synthetic but realistic event stream: installs, logins,
//! account switches, logouts, token refreshes, touches, merges, dead
//! tokens and uninstalls over ~120 days, reproducible from a seed.

use devreg::{Attributes, LogoutPolicy, Op, Platform, Register};

/// The demo's fixed "now": 2026-01-01T00:00:00Z, so every run is identical.
pub const NOW_MS: u64 = 1_767_225_600_000;
/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;
/// How far back the workload starts.
const SPAN_DAYS: u64 = 120;

/// SplitMix64: tiny, fast, and good enough for a workload (not for secrets).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// 64 lowercase hex characters, like an APNs device token.
fn apns_token(rng: &mut Rng) -> String {
    (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect()
}

/// `<22 chars>:APA91b<134 chars>`, the shape of an FCM registration token.
fn fcm_token(rng: &mut Rng) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut chars = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(ALPHABET[rng.below(64) as usize]))
            .collect()
    };
    let instance = chars(22);
    let rest = chars(134);
    format!("{instance}:APA91b{rest}")
}

/// Attributes drawn from small sets, so many devices share each value
/// (as in a real app population, and as the interned storage expects).
fn attributes(rng: &mut Rng, platform: Platform) -> Attributes {
    let (os, models, sdk) = match platform {
        Platform::Ios => (
            rng.pick(&["17.4", "17.5", "17.6", "18.0", "18.1", "18.2"]),
            rng.pick(&[
                "iPhone13,2",
                "iPhone14,5",
                "iPhone15,3",
                "iPhone16,1",
                "iPad13,4",
            ]),
            rng.pick(&["3.1.0", "3.2.1"]),
        ),
        Platform::Android => (
            rng.pick(&["12", "13", "14", "15"]),
            rng.pick(&[
                "Pixel 7", "Pixel 8", "SM-S911B", "SM-A546B", "moto g54", "CPH2451",
            ]),
            rng.pick(&["4.0.2", "4.1.0"]),
        ),
    };
    let version = rng.pick(&["5.8.0", "5.9.0", "5.9.1", "6.0.0", "6.0.2"]);
    let locale = rng.pick(&[
        "en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "pt-BR", "ja-JP",
    ]);
    let push = if rng.percent(85) { "true" } else { "false" };
    [
        ("app_version", version),
        ("device_os", os),
        ("device_model", models),
        ("push_enabled", push),
        ("device_locale", locale),
        ("cio_sdk_version", sdk),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// What the generator believes about a device, to aim events at real ones.
/// It can drift from the registry (cap evictions, merges), which only turns
/// some later events into counted "not found" skips, as in production.
struct Known {
    token: String,
    platform: Platform,
    person: Option<u32>,
    seen_ms: u64,
}

/// The generated events and a person worth showing in the report.
pub struct Workload {
    pub ops: Vec<Op>,
    /// Persons are named `cust-<n>`; this one got the most logins.
    pub busiest_person: String,
    /// The final prune's cut-off (90 days before `NOW_MS`).
    pub prune_before_ms: u64,
}

fn person_name(id: u32) -> String {
    format!("cust-{id:05}")
}

/// Generates about `events` operations (a rare self-merge is dropped), then
/// the final prune.
pub fn generate(seed: u64, events: usize) -> Workload {
    let mut rng = Rng::new(seed);
    let mut known: Vec<Known> = Vec::new();
    let mut ops = Vec::with_capacity(events + 1);
    let persons = (events / 6).max(10) as u64;
    let mut logins = vec![0u32; persons as usize];
    let start = NOW_MS - SPAN_DAYS * DAY_MS;
    for i in 0..events {
        // Time advances evenly, with jitter so events arrive out of order.
        let base = start + (SPAN_DAYS * DAY_MS) * i as u64 / events as u64;
        let t = (base + rng.below(600_000)).saturating_sub(300_000);
        let roll = rng.below(100);
        // Installs dominate early so later events have devices to act on.
        if known.len() < 100 || roll < 28 {
            let platform = if rng.percent(45) {
                Platform::Ios
            } else {
                Platform::Android
            };
            let token = match platform {
                Platform::Ios => apns_token(&mut rng),
                Platform::Android => fcm_token(&mut rng),
            };
            let attributes = Some(attributes(&mut rng, platform));
            ops.push(register(&token, platform, None, t, attributes));
            known.push(Known {
                token,
                platform,
                person: None,
                seen_ms: t,
            });
            continue;
        }
        let k = rng.below(known.len() as u64) as usize;
        match roll {
            // Login, or an account switch when someone else was logged in.
            28..=45 => {
                // Squaring skews logins toward low ids: some people own many devices.
                let r = rng.below(persons);
                let p = (r * r / persons) as u32;
                logins[p as usize] += 1;
                let d = &mut known[k];
                d.person = Some(p);
                d.seen_ms = d.seen_ms.max(t);
                ops.push(register(
                    &d.token,
                    d.platform,
                    Some(person_name(p)),
                    t,
                    None,
                ));
            }
            // App update: new attributes, owner kept.
            46..=50 => {
                let d = &mut known[k];
                d.seen_ms = d.seen_ms.max(t);
                let attrs = Some(attributes(&mut rng, d.platform));
                ops.push(register(&d.token, d.platform, None, t, attrs));
            }
            51..=54 => {
                let remove = rng.percent(25);
                let policy = if remove {
                    LogoutPolicy::Remove
                } else {
                    LogoutPolicy::Keep
                };
                ops.push(Op::Logout {
                    token: known[k].token.clone(),
                    policy,
                });
                if remove {
                    known.swap_remove(k);
                } else {
                    known[k].person = None;
                }
            }
            // Token refresh: the provider issued a new token.
            55..=59 => {
                let new_token = match known[k].platform {
                    Platform::Ios => apns_token(&mut rng),
                    Platform::Android => fcm_token(&mut rng),
                };
                let d = &mut known[k];
                let old_token = std::mem::replace(&mut d.token, new_token.clone());
                d.seen_ms = d.seen_ms.max(t);
                ops.push(Op::Rotate {
                    old_token,
                    new_token,
                    seen_ms: t,
                });
            }
            60..=93 => {
                known[k].seen_ms = known[k].seen_ms.max(t);
                ops.push(Op::Touch {
                    token: known[k].token.clone(),
                    seen_ms: t,
                });
            }
            94 => {
                let (a, b) = (rng.below(persons) as u32, rng.below(persons) as u32);
                if a == b {
                    continue;
                }
                for d in known.iter_mut().filter(|d| d.person == Some(b)) {
                    d.person = Some(a);
                }
                ops.push(Op::Merge {
                    primary: person_name(a),
                    secondary: person_name(b),
                });
            }
            // Dead token: the provider's timestamp is usually after the last
            // sighting (deleted), sometimes before it (kept: it re-registered).
            95..=97 => {
                let d = &known[k];
                let provider_ms = if rng.percent(85) {
                    d.seen_ms + rng.below(DAY_MS)
                } else {
                    d.seen_ms.saturating_sub(1 + rng.below(DAY_MS))
                };
                ops.push(Op::Invalidate {
                    token: d.token.clone(),
                    provider_ms,
                });
                if provider_ms >= d.seen_ms {
                    known.swap_remove(k);
                }
            }
            _ => {
                ops.push(Op::Remove {
                    token: known[k].token.clone(),
                });
                known.swap_remove(k);
            }
        }
    }
    let prune_before_ms = NOW_MS - 90 * DAY_MS;
    ops.push(Op::Prune {
        before_ms: prune_before_ms,
    });
    let busiest = (0..persons as u32)
        .max_by_key(|&p| (logins[p as usize], std::cmp::Reverse(p)))
        .unwrap_or(0);
    Workload {
        ops,
        busiest_person: person_name(busiest),
        prune_before_ms,
    }
}

fn register(
    token: &str,
    platform: Platform,
    person: Option<String>,
    seen_ms: u64,
    attributes: Option<Attributes>,
) -> Op {
    Op::Register(Register {
        token: token.to_string(),
        platform,
        person,
        seen_ms,
        attributes,
    })
}
