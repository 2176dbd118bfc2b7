//! The WAN model: metros on five continents and the measured round-trip
//! times between them, with jitter drawn from the seed.
//!
//! Measured: IBM Cloud VPC's published inter-region latency (average round
//! trip, 31 Aug - 29 Sep 2024; github.com/ibm-cloud-docs/vpc,
//! `_include-segments/network-latency.md`) between Dallas, Toronto,
//! Washington DC, Frankfurt, London, Madrid, Osaka, Sydney, Tokyo and São
//! Paulo: 10 metros on 5 continents. The two directions of a pair differ
//! by at most 3 ms; the table keeps their mean.
//!
//! Estimated: Paris, Chicago, San Jose, Singapore, Mumbai and Johannesburg
//! (which make 16 metros on 6 continents) have no pair in that source; their
//! round trips come from a line fitted to the 45 measured pairs,
//! rtt = 14.4 ms + 15.66 ms per 1000 km over 45 measured pairs
//! (`tests/sim/data/make_wan_table.py` writes the table). A fitted line
//! knows nothing of cable routes, so those entries are the model's weakest
//! part; [`MEASURED_METROS`] says which rows are measured.

use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;

/// A metro: where POPs, clients, the store and the directory sit.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Metro {
    /// Short code (a POP there is named by it).
    pub code: &'static str,
    /// The city.
    pub name: &'static str,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Its continent.
    pub continent: &'static str,
}

pub const METROS: &[Metro] = &[
    Metro {
        code: "dal",
        name: "Dallas",
        lat: 32.78,
        lon: -96.8,
        continent: "north-america",
    },
    Metro {
        code: "yyz",
        name: "Toronto",
        lat: 43.65,
        lon: -79.38,
        continent: "north-america",
    },
    Metro {
        code: "iad",
        name: "Washington DC (Ashburn)",
        lat: 39.04,
        lon: -77.49,
        continent: "north-america",
    },
    Metro {
        code: "fra",
        name: "Frankfurt",
        lat: 50.11,
        lon: 8.68,
        continent: "europe",
    },
    Metro {
        code: "lhr",
        name: "London",
        lat: 51.51,
        lon: -0.13,
        continent: "europe",
    },
    Metro {
        code: "mad",
        name: "Madrid",
        lat: 40.42,
        lon: -3.7,
        continent: "europe",
    },
    Metro {
        code: "kix",
        name: "Osaka",
        lat: 34.69,
        lon: 135.5,
        continent: "asia",
    },
    Metro {
        code: "syd",
        name: "Sydney",
        lat: -33.87,
        lon: 151.21,
        continent: "oceania",
    },
    Metro {
        code: "nrt",
        name: "Tokyo",
        lat: 35.68,
        lon: 139.69,
        continent: "asia",
    },
    Metro {
        code: "gru",
        name: "Sao Paulo",
        lat: -23.55,
        lon: -46.63,
        continent: "south-america",
    },
    Metro {
        code: "cdg",
        name: "Paris",
        lat: 48.86,
        lon: 2.35,
        continent: "europe",
    },
    Metro {
        code: "ord",
        name: "Chicago",
        lat: 41.88,
        lon: -87.63,
        continent: "north-america",
    },
    Metro {
        code: "sjc",
        name: "San Jose",
        lat: 37.34,
        lon: -121.89,
        continent: "north-america",
    },
    Metro {
        code: "sin",
        name: "Singapore",
        lat: 1.35,
        lon: 103.82,
        continent: "asia",
    },
    Metro {
        code: "bom",
        name: "Mumbai",
        lat: 19.08,
        lon: 72.88,
        continent: "asia",
    },
    Metro {
        code: "jnb",
        name: "Johannesburg",
        lat: -26.2,
        lon: 28.05,
        continent: "africa",
    },
];

/// Round trips between the metros, ms, in the order of [`METROS`]. Rows
/// and columns from 10 on (and their pairs) are estimated (see the module
/// docs).
pub const RTT_MS: &[&[u16]] = &[
    &[
        0, 34, 31, 123, 113, 118, 150, 185, 142, 145, 139, 35, 51, 259, 236, 244,
    ], // dal: measured row
    &[
        34, 0, 20, 93, 82, 108, 168, 215, 162, 130, 108, 25, 71, 249, 210, 223,
    ], // yyz: measured row
    &[
        31, 20, 0, 91, 76, 88, 174, 214, 166, 118, 111, 29, 75, 257, 216, 219,
    ], // iad: measured row
    &[
        123, 93, 91, 0, 13, 29, 233, 250, 229, 196, 22, 123, 158, 175, 117, 151,
    ], // fra: measured row
    &[
        113, 82, 76, 13, 0, 27, 244, 261, 243, 186, 20, 114, 150, 184, 127, 156,
    ], // lhr: measured row
    &[
        118, 108, 88, 29, 27, 0, 258, 275, 258, 206, 31, 120, 160, 193, 132, 141,
    ], // mad: measured row
    &[
        150, 168, 174, 233, 244, 258, 0, 122, 9, 292, 165, 178, 151, 92, 114, 220,
    ], // kix: measured row
    &[
        185, 215, 214, 250, 261, 275, 122, 0, 115, 328, 280, 247, 202, 113, 173, 187,
    ], // syd: measured row
    &[
        142, 162, 166, 229, 243, 258, 9, 115, 0, 285, 166, 173, 145, 98, 120, 226,
    ], // nrt: measured row
    &[
        145, 130, 118, 196, 186, 206, 292, 328, 285, 0, 162, 146, 177, 265, 230, 131,
    ], // gru: measured row
    &[
        139, 108, 111, 22, 20, 31, 165, 280, 166, 162, 0, 118, 155, 182, 124, 151,
    ], // cdg: estimated row
    &[
        35, 25, 29, 123, 114, 120, 178, 247, 173, 146, 118, 0, 61, 250, 217, 233,
    ], // ord: estimated row
    &[
        51, 71, 75, 158, 150, 160, 151, 202, 145, 177, 155, 61, 0, 228, 227, 280,
    ], // sjc: estimated row
    &[
        259, 249, 257, 175, 184, 193, 92, 113, 98, 265, 182, 250, 228, 0, 75, 150,
    ], // sin: estimated row
    &[
        236, 210, 216, 117, 127, 132, 114, 173, 120, 230, 124, 217, 227, 75, 0, 124,
    ], // bom: estimated row
    &[
        244, 223, 219, 151, 156, 141, 220, 187, 226, 131, 151, 233, 280, 150, 124, 0,
    ], // jnb: estimated row
];

/// Metros whose every round trip is measured (the first ones).
pub const MEASURED_METROS: usize = 10;

/// Where [`RTT_MS`] comes from.
pub const SOURCE: &str = "IBM Cloud VPC inter-region latency, average round trip, 31 Aug - 29 Sep 2024 (github.com/ibm-cloud-docs/vpc, _include-segments/network-latency.md) for dal, yyz, iad, fra, lhr, mad, kix, syd, nrt, gru; the other metros' round trips estimated by a line fitted to those 45 pairs: 14.4 ms + 15.66 ms per 1000 km of great-circle distance (tests/sim/data/make_wan_table.py)";

/// Round trip between a client and a POP in the same metro (the last
/// mile), ms.
pub const ACCESS_MS: f64 = 2.0;
/// Round trip between two hosts in one metro or region (a POP and the
/// store in the same data centre region), ms.
pub const INTRA_METRO_MS: f64 = 1.0;
/// Jitter: each round trip is its base times (1 + x), x uniform in
/// [0, JITTER_FRACTION); and one in [`SPIKE_ONE_IN`] gains up to
/// [`SPIKE_MS_MAX`] more (a queue, a retransmit).
pub const JITTER_FRACTION: f64 = 0.05;
/// See [`JITTER_FRACTION`].
pub const SPIKE_ONE_IN: u32 = 100;
/// See [`JITTER_FRACTION`].
pub const SPIKE_MS_MAX: f64 = 50.0;

/// The index of the metro with `code`; panics on an unknown code (the
/// codes are this file's).
pub fn metro(code: &str) -> usize {
    METROS
        .iter()
        .position(|m| m.code == code)
        .unwrap_or_else(|| panic!("no metro `{code}` in the WAN model"))
}

/// The continents, in table order.
pub fn continents() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for m in METROS {
        if !v.contains(&m.continent) {
            v.push(m.continent);
        }
    }
    v
}

/// The round-trip model.
#[derive(Debug, Default)]
pub struct Wan;

impl Wan {
    /// The model of this file's table.
    pub fn new() -> Wan {
        Wan
    }

    /// The measured round trip between metros `a` and `b`, ms.
    pub fn base_ms(&self, a: usize, b: usize) -> f64 {
        if a == b {
            INTRA_METRO_MS
        } else {
            f64::from(RTT_MS[a][b])
        }
    }

    fn jitter(rng: &mut StdRng, base: f64) -> f64 {
        let mut ms = base * (1.0 + rng.random_range(0.0..JITTER_FRACTION));
        if rng.random_ratio(1, SPIKE_ONE_IN) {
            ms += rng.random_range(0.0..SPIKE_MS_MAX);
        }
        ms
    }

    /// One round trip between metros `a` and `b`, jittered, ms.
    pub fn sample_ms(&self, rng: &mut StdRng, a: usize, b: usize) -> f64 {
        Self::jitter(rng, self.base_ms(a, b))
    }

    /// A client in metro `client` to a POP in metro `pop`, ms: the last
    /// mile, plus the WAN round trip when the POP is in another metro.
    pub fn access_ms(&self, rng: &mut StdRng, client: usize, pop: usize) -> f64 {
        let wan = if client == pop {
            0.0
        } else {
            self.base_ms(client, pop)
        };
        Self::jitter(rng, ACCESS_MS + wan)
    }
}

/// The next metro on a drive from `at`: the nearest one on the same
/// continent not yet `seen` (the drive turns back when none is left).
pub fn next_on_road(at: usize, seen: &[usize]) -> usize {
    let wan = Wan::new();
    let same = |m: usize| METROS[m].continent == METROS[at].continent && m != at;
    let fresh = (0..METROS.len())
        .filter(|&m| same(m) && !seen.contains(&m))
        .min_by(|&a, &b| wan.base_ms(at, a).total_cmp(&wan.base_ms(at, b)));
    fresh
        .or_else(|| {
            (0..METROS.len())
                .filter(|&m| same(m))
                .min_by(|&a, &b| wan.base_ms(at, a).total_cmp(&wan.base_ms(at, b)))
        })
        .unwrap_or(at)
}

/// A metro on another continent than `at`'s (a flight's destination).
pub fn far_metro(rng: &mut StdRng, at: usize) -> usize {
    let others: Vec<usize> = (0..METROS.len())
        .filter(|&m| METROS[m].continent != METROS[at].continent)
        .collect();
    others[rng.random_range(0..others.len())]
}

/// The model, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    /// Where the round-trip times come from.
    pub source: &'static str,
    /// The metros.
    pub metros: Vec<Metro>,
    /// The first this many metros' round trips are measured; the others'
    /// are estimated.
    pub measured_metros: usize,
    /// The store's metro (one FoundationDB region).
    pub store: &'static str,
    /// The directory's metro.
    pub directory: &'static str,
    /// Jitter: fraction of the base, and the spikes.
    pub jitter_fraction: f64,
    /// One round trip in this many gets a spike.
    pub spike_one_in: u32,
    /// Largest spike, ms.
    pub spike_ms_max: f64,
}

/// The model as the report states it.
pub fn describe() -> Description {
    Description {
        source: SOURCE,
        metros: METROS.to_vec(),
        measured_metros: MEASURED_METROS,
        store: "iad",
        directory: "iad",
        jitter_fraction: JITTER_FRACTION,
        spike_one_in: SPIKE_ONE_IN,
        spike_ms_max: SPIKE_MS_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is square, symmetric, zero only on the diagonal, and
    /// spans at least 15 metros on 5 continents.
    #[test]
    fn rtt_table_is_symmetric_and_spans_five_continents() {
        assert!(METROS.len() >= 15);
        assert!(continents().len() >= 5, "{:?}", continents());
        assert_eq!(RTT_MS.len(), METROS.len());
        for (a, row) in RTT_MS.iter().enumerate() {
            assert_eq!(row.len(), METROS.len());
            for (b, &ms) in row.iter().enumerate() {
                assert_eq!(ms, RTT_MS[b][a], "{a} {b}");
                assert_eq!(ms == 0, a == b, "{a} {b}");
            }
        }
    }
}
