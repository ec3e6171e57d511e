//! What each request asks for: which key ([`Dist`], [`Keys`]), how big its object is
//! ([`Sizes`]) and which operation it is ([`Mix`]).

use rand::RngExt;

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Keys in order, 0, 1, 2, … (then again from 0): loads every key once per pass.
    Sequential,
    /// Zipf with this exponent (0.99 is the classic web cache workload).
    Zipf(f64),
    /// A hot set: `keys` of the keys get `traffic` of the requests (e.g. 0.01 and 0.9).
    Hot {
        /// Fraction of the keys that are hot.
        keys: f64,
        /// Fraction of the requests they get.
        traffic: f64,
    },
}

impl std::str::FromStr for Dist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}`: use uniform, seq, zipf:S (e.g. zipf:0.99) or hot:KEYS:TRAFFIC (e.g. hot:0.01:0.9)")
        };
        let mut parts = s.split(':');
        match parts.next() {
            Some("uniform") => Ok(Dist::Uniform),
            Some("seq") | Some("sequential") => Ok(Dist::Sequential),
            Some("zipf") => {
                let e: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                if e <= 0.0 {
                    return Err(bad());
                }
                Ok(Dist::Zipf(e))
            }
            Some("hot") => {
                let k: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let t: f64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                if !(0.0..=1.0).contains(&k) || !(0.0..=1.0).contains(&t) {
                    return Err(bad());
                }
                Ok(Dist::Hot {
                    keys: k,
                    traffic: t,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// Draws keys from a distribution over `0..n`.
pub struct Keys {
    n: u64,
    dist: Dist,
    zipf: Option<rand_distr::Zipf<f64>>,
    // Sequential: the next key, shared by every worker of a run, so together they visit
    // each key once per pass however fast each one is.
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Keys {
    /// A sampler for `n` keys.
    pub fn new(n: u64, dist: Dist) -> anyhow::Result<Self> {
        let n = n.max(1);
        let zipf = match dist {
            Dist::Zipf(e) => {
                Some(rand_distr::Zipf::new(n as f64, e).map_err(|e| anyhow::anyhow!("zipf: {e}"))?)
            }
            _ => None,
        };
        Ok(Self {
            n,
            dist,
            zipf,
            next: std::sync::Arc::default(),
        })
    }

    /// A sampler sharing `next` (the sequential position) with the run's other workers.
    pub fn shared(
        n: u64,
        dist: Dist,
        next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<Self> {
        let mut k = Self::new(n, dist)?;
        k.next = next;
        Ok(k)
    }

    /// The next key.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u64 {
        use rand_distr::Distribution;
        match self.dist {
            Dist::Uniform => rng.random_range(0..self.n),
            Dist::Sequential => {
                self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.n
            }
            // Zipf ranks are 1..=n; rank 1 is the most popular key, 0.
            Dist::Zipf(_) => self
                .zipf
                .as_ref()
                .map(|z| z.sample(rng) as u64 - 1)
                .unwrap_or(0)
                .min(self.n - 1),
            Dist::Hot { keys, traffic } => {
                let hot = ((self.n as f64 * keys).ceil() as u64).clamp(1, self.n);
                if rng.random_bool(traffic) || hot == self.n {
                    rng.random_range(0..hot)
                } else {
                    rng.random_range(hot..self.n)
                }
            }
        }
    }
}

/// Object-size classes, `{size}` in the path template. Each key has one size for good, drawn
/// by weight from a hash of the key number, so a key's object is the same size in every
/// request and every run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    /// (bytes, cumulative weight in 0..=1), by increasing cumulative weight.
    classes: Vec<(u64, f64)>,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            classes: vec![(1024, 1.0)],
        }
    }
}

impl std::str::FromStr for Sizes {
    type Err = String;
    /// `16KiB`, or classes with weights: `1KiB=90,16KiB=9,1MiB=1`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: String| {
            format!(
                "`{s}`: {why}; use a size (16KiB) or classes with weights (1KiB=90,16KiB=9,1MiB=1)"
            )
        };
        let mut raw = Vec::new();
        for part in s.split(',') {
            let (size, weight) = match part.split_once('=') {
                Some((size, w)) => {
                    let w: f64 = w
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("weight `{w}` is not a number")))?;
                    (size, w)
                }
                None => (part, 1.0),
            };
            let bytes = size
                .trim()
                .parse::<bytesize::ByteSize>()
                .map_err(|_| bad(format!("`{size}` is not a size")))?
                .as_u64();
            if !(weight > 0.0 && weight.is_finite()) {
                return Err(bad(format!("weight of {size} must be above 0")));
            }
            raw.push((bytes, weight));
        }
        let total: f64 = raw.iter().map(|(_, w)| w).sum();
        let mut acc = 0.0;
        let classes = raw
            .into_iter()
            .map(|(b, w)| {
                acc += w / total;
                (b, acc)
            })
            .collect();
        Ok(Self { classes })
    }
}

impl Sizes {
    /// The size of key `key`'s object.
    pub fn of(&self, key: u64) -> u64 {
        let u = (splitmix64(key) >> 11) as f64 / (1u64 << 53) as f64;
        self.classes
            .iter()
            .find(|(_, cum)| u < *cum)
            .or(self.classes.last())
            .map(|(b, _)| *b)
            .unwrap_or(1024)
    }
}

/// A well-mixed hash of a key number (SplitMix64's finaliser).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One operation of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// `GET` of the path at a target (an edge).
    Get,
    /// `PUT /objects<path>` at the admin address: the object, `{size}` bytes.
    Push,
    /// `POST /purge {"urls": [path]}` at the admin address.
    Purge,
}

impl Op {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Push => "push",
            Op::Purge => "purge",
        }
    }
}

/// Ratios of operations, e.g. `get=98,push=1,purge=1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Weight of GETs.
    pub get: f64,
    /// Weight of pushes.
    pub push: f64,
    /// Weight of purges.
    pub purge: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            get: 1.0,
            push: 0.0,
            purge: 0.0,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: String| format!("`{s}`: {why}; use e.g. get=98,push=1,purge=1");
        let mut m = Mix {
            get: 0.0,
            push: 0.0,
            purge: 0.0,
        };
        for part in s.split(',') {
            let (op, w) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` has no `=`")))?;
            let w: f64 = w
                .trim()
                .parse()
                .ok()
                .filter(|w: &f64| *w >= 0.0 && w.is_finite())
                .ok_or_else(|| bad(format!("weight `{w}` is not a number ≥ 0")))?;
            match op.trim() {
                "get" => m.get = w,
                "push" => m.push = w,
                "purge" => m.purge = w,
                other => return Err(bad(format!("unknown operation `{other}`"))),
            }
        }
        if m.get + m.push + m.purge <= 0.0 {
            return Err(bad("all weights are 0".into()));
        }
        Ok(m)
    }
}

impl Mix {
    /// Whether any operation goes to the admin address.
    pub fn needs_admin(&self) -> bool {
        self.push > 0.0 || self.purge > 0.0
    }

    /// The next operation.
    pub fn pick(&self, rng: &mut impl rand::Rng) -> Op {
        if !self.needs_admin() {
            return Op::Get;
        }
        let x = rng.random::<f64>() * (self.get + self.push + self.purge);
        if x < self.get {
            Op::Get
        } else if x < self.get + self.push {
            Op::Push
        } else {
            Op::Purge
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn distributions_parse_and_skew_as_asked() {
        assert_eq!("uniform".parse::<Dist>().unwrap(), Dist::Uniform);
        assert_eq!("zipf:0.99".parse::<Dist>().unwrap(), Dist::Zipf(0.99));
        assert!("zipf:-1".parse::<Dist>().is_err());
        assert!("hot:2:0.9".parse::<Dist>().is_err());
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let n = 100_000;
        let zipf = Keys::new(1000, Dist::Zipf(1.1)).unwrap();
        let top10 = (0..n).filter(|_| zipf.sample(&mut rng) < 10).count();
        assert!(
            top10 as f64 / n as f64 > 0.4,
            "zipf 1.1: the top 1% of keys get most traffic ({top10})"
        );
        let hot = Keys::new(
            1000,
            Dist::Hot {
                keys: 0.01,
                traffic: 0.9,
            },
        )
        .unwrap();
        let hits = (0..n).filter(|_| hot.sample(&mut rng) < 10).count();
        assert!((hits as f64 / n as f64 - 0.9).abs() < 0.01, "{hits}");
        let seq = Keys::new(3, Dist::Sequential).unwrap();
        let drawn: Vec<u64> = (0..7).map(|_| seq.sample(&mut rng)).collect();
        assert_eq!(drawn, vec![0, 1, 2, 0, 1, 2, 0]);
        let uni = Keys::new(1000, Dist::Uniform).unwrap();
        assert!((0..n).all(|_| uni.sample(&mut rng) < 1000));
    }

    #[test]
    fn size_classes_keep_their_weights_and_each_key_its_size() {
        let one: Sizes = "16KiB".parse().unwrap();
        assert!((0..100).all(|k| one.of(k) == 16 * 1024));
        let s: Sizes = "1KiB=90,16KiB=9,1MiB=1".parse().unwrap();
        let n = 100_000;
        let count = |b: u64| (0..n).filter(|k| s.of(*k) == b).count() as f64 / n as f64;
        assert!((count(1024) - 0.90).abs() < 0.01, "{}", count(1024));
        assert!((count(16 * 1024) - 0.09).abs() < 0.01);
        assert!((count(1024 * 1024) - 0.01).abs() < 0.003);
        assert_eq!(s.of(12_345), s.of(12_345), "a key keeps its size");
        for bad in ["", "1KiB=x", "big", "1KiB=0", "1KiB=-2"] {
            assert!(bad.parse::<Sizes>().is_err(), "`{bad}` accepted");
        }
    }

    #[test]
    fn a_mix_draws_operations_by_weight() {
        let m: Mix = "get=90,push=5,purge=5".parse().unwrap();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let n = 100_000;
        let draws: Vec<Op> = (0..n).map(|_| m.pick(&mut rng)).collect();
        let share = |op| draws.iter().filter(|d| **d == op).count() as f64 / n as f64;
        assert!((share(Op::Get) - 0.90).abs() < 0.01);
        assert!((share(Op::Push) - 0.05).abs() < 0.005);
        assert!((share(Op::Purge) - 0.05).abs() < 0.005);
        assert!(m.needs_admin());
        assert!(!Mix::default().needs_admin());
        for bad in ["get", "get=x", "fetch=1", "get=0", "get=-1"] {
            assert!(bad.parse::<Mix>().is_err(), "`{bad}` accepted");
        }
    }
}
