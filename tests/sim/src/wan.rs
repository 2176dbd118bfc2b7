//! The WAN model: 37 metros on six continents and the measured round-trip
//! times between them, with jitter drawn from the seed.
//!
//! Source: Microsoft Learn, "Azure network round-trip latency statistics"
//! (learn.microsoft.com/azure/networking/azure-network-latency): the
//! monthly median round trip between Azure regions from Azure's own probes,
//! dataset of 30 July 2026 covering the 30 days before. The page's CSV is
//! kept unchanged in `tests/sim/data/azure_p50_2026-07-30_raw.csv`;
//! `tests/sim/data/metros.csv` maps each of the 37 metros modelled here (on
//! 6 continents) to its region, with the city's coordinates, and
//! `tests/sim/data/make_wan_table.py` writes the table below from the two.
//! Every pair is measured, both ways; the table keeps their mean. These are
//! data-centre to data-centre times over Microsoft's network, a little
//! better than the public internet between the same cities; where a metro
//! has no Azure region the nearest stands in (Dallas: San Antonio;
//! Stockholm: Gävle; Mumbai: Pune).

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
        code: "fra",
        name: "Frankfurt",
        lat: 50.11,
        lon: 8.682,
        continent: "europe",
    },
    Metro {
        code: "lon",
        name: "London",
        lat: 51.507,
        lon: -0.128,
        continent: "europe",
    },
    Metro {
        code: "par",
        name: "Paris",
        lat: 48.857,
        lon: 2.352,
        continent: "europe",
    },
    Metro {
        code: "ams",
        name: "Amsterdam",
        lat: 52.37,
        lon: 4.895,
        continent: "europe",
    },
    Metro {
        code: "dub",
        name: "Dublin",
        lat: 53.35,
        lon: -6.26,
        continent: "europe",
    },
    Metro {
        code: "gvx",
        name: "Gävle (Stockholm proxy)",
        lat: 60.675,
        lon: 17.141,
        continent: "europe",
    },
    Metro {
        code: "zrh",
        name: "Zurich",
        lat: 47.377,
        lon: 8.541,
        continent: "europe",
    },
    Metro {
        code: "mil",
        name: "Milan",
        lat: 45.464,
        lon: 9.19,
        continent: "europe",
    },
    Metro {
        code: "mad",
        name: "Madrid",
        lat: 40.417,
        lon: -3.704,
        continent: "europe",
    },
    Metro {
        code: "waw",
        name: "Warsaw",
        lat: 52.23,
        lon: 21.012,
        continent: "europe",
    },
    Metro {
        code: "iad",
        name: "Washington DC / N. Virginia",
        lat: 39.044,
        lon: -77.487,
        continent: "north-america",
    },
    Metro {
        code: "ord",
        name: "Chicago",
        lat: 41.878,
        lon: -87.63,
        continent: "north-america",
    },
    Metro {
        code: "sat",
        name: "San Antonio (Dallas substitute)",
        lat: 29.424,
        lon: -98.494,
        continent: "north-america",
    },
    Metro {
        code: "dsm",
        name: "Des Moines",
        lat: 41.587,
        lon: -93.625,
        continent: "north-america",
    },
    Metro {
        code: "sjc",
        name: "San Jose / SF Bay Area",
        lat: 37.338,
        lon: -121.886,
        continent: "north-america",
    },
    Metro {
        code: "mwh",
        name: "Quincy WA (Seattle proxy)",
        lat: 47.234,
        lon: -119.852,
        continent: "north-america",
    },
    Metro {
        code: "phx",
        name: "Phoenix",
        lat: 33.448,
        lon: -112.074,
        continent: "north-america",
    },
    Metro {
        code: "yyz",
        name: "Toronto",
        lat: 43.653,
        lon: -79.383,
        continent: "north-america",
    },
    Metro {
        code: "qro",
        name: "Querétaro",
        lat: 20.588,
        lon: -100.39,
        continent: "north-america",
    },
    Metro {
        code: "gru",
        name: "São Paulo",
        lat: -23.551,
        lon: -46.633,
        continent: "south-america",
    },
    Metro {
        code: "tyo",
        name: "Tokyo",
        lat: 35.69,
        lon: 139.692,
        continent: "asia",
    },
    Metro {
        code: "osa",
        name: "Osaka",
        lat: 34.694,
        lon: 135.502,
        continent: "asia",
    },
    Metro {
        code: "sel",
        name: "Seoul",
        lat: 37.567,
        lon: 126.978,
        continent: "asia",
    },
    Metro {
        code: "hkg",
        name: "Hong Kong",
        lat: 22.32,
        lon: 114.169,
        continent: "asia",
    },
    Metro {
        code: "sin",
        name: "Singapore",
        lat: 1.352,
        lon: 103.82,
        continent: "asia",
    },
    Metro {
        code: "pnq",
        name: "Pune (Mumbai proxy)",
        lat: 18.52,
        lon: 73.857,
        continent: "asia",
    },
    Metro {
        code: "maa",
        name: "Chennai",
        lat: 13.083,
        lon: 80.271,
        continent: "asia",
    },
    Metro {
        code: "cgk",
        name: "Jakarta",
        lat: -6.208,
        lon: 106.846,
        continent: "asia",
    },
    Metro {
        code: "kul",
        name: "Kuala Lumpur",
        lat: 3.139,
        lon: 101.687,
        continent: "asia",
    },
    Metro {
        code: "dxb",
        name: "Dubai",
        lat: 25.205,
        lon: 55.271,
        continent: "asia-(middle-east)",
    },
    Metro {
        code: "doh",
        name: "Doha",
        lat: 25.286,
        lon: 51.531,
        continent: "asia-(middle-east)",
    },
    Metro {
        code: "tlv",
        name: "Tel Aviv (Israel)",
        lat: 32.085,
        lon: 34.782,
        continent: "asia-(middle-east)",
    },
    Metro {
        code: "jnb",
        name: "Johannesburg",
        lat: -26.204,
        lon: 28.047,
        continent: "africa",
    },
    Metro {
        code: "cpt",
        name: "Cape Town",
        lat: -33.925,
        lon: 18.424,
        continent: "africa",
    },
    Metro {
        code: "syd",
        name: "Sydney",
        lat: -33.869,
        lon: 151.209,
        continent: "oceania",
    },
    Metro {
        code: "mel",
        name: "Melbourne",
        lat: -37.814,
        lon: 144.963,
        continent: "oceania",
    },
    Metro {
        code: "akl",
        name: "Auckland",
        lat: -36.848,
        lon: 174.763,
        continent: "oceania",
    },
];

/// Round trips between the metros, ms, in the order of [`METROS`].
pub const RTT_MS: &[&[u16]] = &[
    &[
        0, 17, 12, 11, 27, 28, 10, 14, 27, 23, 94, 110, 123, 119, 152, 155, 142, 97, 140, 197, 236,
        236, 240, 193, 166, 140, 152, 170, 162, 109, 88, 56, 166, 149, 267, 255, 274,
    ], // fra: Germany West Central
    &[
        17, 0, 11, 11, 13, 31, 23, 28, 25, 29, 78, 97, 113, 109, 140, 139, 132, 81, 126, 181, 230,
        232, 240, 200, 167, 141, 151, 181, 172, 116, 88, 60, 164, 147, 261, 261, 266,
    ], // lon: UK South
    &[
        12, 11, 0, 13, 20, 37, 17, 22, 20, 31, 88, 105, 113, 116, 146, 149, 131, 89, 128, 191, 230,
        231, 237, 194, 162, 135, 148, 164, 166, 114, 83, 54, 159, 142, 256, 255, 262,
    ], // par: France Central
    &[
        11, 11, 13, 0, 17, 27, 17, 23, 28, 23, 84, 101, 118, 109, 146, 143, 138, 90, 132, 185, 234,
        236, 242, 202, 169, 140, 153, 172, 168, 111, 90, 63, 166, 149, 265, 263, 265,
    ], // ams: West Europe
    &[
        27, 13, 20, 17, 0, 34, 31, 37, 33, 35, 72, 90, 104, 101, 133, 130, 126, 77, 118, 172, 226,
        233, 239, 214, 176, 147, 161, 190, 181, 125, 98, 78, 172, 155, 263, 264, 253,
    ], // dub: North Europe
    &[
        28, 31, 37, 27, 34, 0, 32, 38, 51, 26, 100, 120, 136, 128, 161, 159, 158, 108, 147, 201,
        253, 255, 260, 220, 191, 161, 171, 203, 196, 122, 111, 78, 187, 171, 286, 280, 285,
    ], // gvx: Sweden Central
    &[
        10, 23, 17, 17, 31, 32, 0, 9, 28, 27, 98, 114, 130, 124, 156, 156, 148, 98, 142, 198, 235,
        228, 228, 183, 161, 118, 136, 164, 156, 92, 82, 52, 168, 151, 258, 246, 267,
    ], // zrh: Switzerland North
    &[
        14, 28, 22, 23, 37, 38, 9, 0, 34, 27, 98, 113, 134, 124, 160, 160, 151, 101, 147, 201, 238,
        238, 234, 186, 166, 133, 140, 178, 170, 107, 85, 49, 174, 157, 261, 250, 273,
    ], // mil: Italy North
    &[
        27, 25, 20, 28, 33, 51, 28, 34, 0, 47, 81, 96, 104, 105, 134, 142, 125, 91, 120, 183, 225,
        227, 237, 186, 165, 134, 141, 179, 170, 97, 86, 56, 143, 126, 254, 254, 253,
    ], // mad: Spain Central
    &[
        23, 29, 31, 23, 35, 26, 27, 27, 47, 0, 101, 116, 135, 125, 161, 160, 155, 108, 148, 203,
        250, 252, 255, 205, 184, 150, 159, 198, 189, 118, 105, 58, 186, 168, 278, 275, 285,
    ], // waw: Poland Central
    &[
        94, 78, 88, 84, 72, 100, 98, 98, 81, 101, 0, 20, 36, 29, 68, 72, 58, 18, 53, 118, 162, 168,
        185, 203, 224, 200, 218, 237, 229, 175, 154, 122, 220, 203, 202, 213, 186,
    ], // iad: East US
    &[
        110, 97, 105, 101, 90, 120, 114, 113, 96, 116, 20, 0, 38, 14, 52, 51, 55, 19, 58, 138, 148,
        154, 170, 188, 210, 217, 240, 222, 214, 190, 168, 138, 234, 217, 187, 198, 174,
    ], // ord: North Central US
    &[
        123, 113, 113, 118, 104, 136, 130, 134, 104, 135, 36, 38, 0, 26, 35, 54, 23, 53, 22, 139,
        129, 135, 154, 173, 201, 233, 232, 214, 206, 214, 183, 154, 244, 228, 162, 174, 151,
    ], // sat: South Central US
    &[
        119, 109, 116, 109, 101, 128, 124, 124, 105, 125, 29, 14, 26, 0, 39, 39, 44, 29, 45, 149,
        136, 142, 158, 176, 198, 222, 228, 210, 202, 191, 178, 146, 244, 228, 176, 186, 163,
    ], // dsm: Central US
    &[
        152, 140, 146, 146, 133, 161, 156, 160, 134, 161, 68, 52, 35, 39, 0, 24, 19, 69, 52, 169,
        108, 114, 131, 148, 170, 218, 201, 182, 174, 235, 214, 183, 273, 256, 140, 150, 139,
    ], // sjc: West US
    &[
        155, 139, 149, 143, 130, 159, 156, 160, 142, 160, 72, 51, 54, 39, 24, 0, 40, 64, 72, 177,
        101, 107, 124, 141, 162, 211, 194, 175, 167, 241, 215, 181, 280, 263, 161, 172, 137,
    ], // mwh: West US 2
    &[
        142, 132, 131, 138, 126, 158, 148, 151, 125, 155, 58, 55, 23, 44, 19, 40, 0, 70, 39, 157,
        112, 118, 136, 156, 183, 231, 215, 197, 188, 238, 201, 171, 264, 246, 146, 158, 134,
    ], // phx: West US 3
    &[
        97, 81, 89, 90, 77, 108, 98, 101, 91, 108, 18, 19, 53, 29, 69, 64, 70, 0, 71, 129, 160,
        167, 182, 201, 222, 201, 220, 234, 226, 175, 154, 124, 230, 214, 202, 213, 186,
    ], // yyz: Canada Central
    &[
        140, 126, 128, 132, 118, 147, 142, 147, 120, 148, 53, 58, 22, 45, 52, 72, 39, 71, 0, 156,
        145, 151, 166, 189, 218, 252, 249, 230, 223, 210, 199, 169, 260, 242, 178, 190, 166,
    ], // qro: Mexico Central
    &[
        197, 181, 191, 185, 172, 201, 198, 201, 183, 203, 118, 138, 139, 149, 169, 177, 157, 129,
        156, 0, 262, 268, 284, 307, 331, 304, 320, 344, 336, 276, 253, 224, 321, 304, 295, 307,
        284,
    ], // gru: Brazil South
    &[
        236, 230, 230, 234, 226, 253, 235, 238, 225, 250, 162, 148, 129, 136, 108, 101, 112, 160,
        145, 262, 0, 12, 30, 49, 72, 122, 106, 85, 77, 152, 162, 246, 249, 266, 104, 114, 128,
    ], // tyo: Japan East
    &[
        236, 232, 231, 236, 233, 255, 228, 238, 227, 252, 168, 154, 135, 142, 114, 107, 118, 167,
        151, 268, 12, 0, 19, 48, 72, 123, 106, 85, 77, 150, 159, 247, 246, 263, 110, 120, 134,
    ], // osa: Japan West
    &[
        240, 240, 237, 242, 239, 260, 228, 234, 237, 255, 185, 170, 154, 158, 131, 124, 136, 182,
        166, 284, 30, 19, 0, 39, 68, 120, 100, 80, 69, 147, 157, 242, 244, 261, 127, 138, 150,
    ], // sel: Korea Central
    &[
        193, 200, 194, 202, 214, 220, 183, 186, 186, 205, 203, 188, 173, 176, 148, 141, 156, 201,
        189, 307, 49, 48, 39, 0, 36, 88, 69, 47, 35, 113, 123, 209, 211, 227, 122, 121, 143,
    ], // hkg: East Asia
    &[
        166, 167, 162, 169, 176, 191, 161, 166, 165, 184, 224, 210, 201, 198, 170, 162, 183, 222,
        218, 331, 72, 72, 68, 36, 0, 53, 37, 17, 9, 83, 92, 179, 177, 195, 95, 88, 119,
    ], // sin: Southeast Asia
    &[
        140, 141, 135, 140, 147, 161, 118, 133, 134, 150, 200, 217, 233, 222, 218, 211, 231, 201,
        252, 304, 122, 123, 120, 88, 53, 0, 20, 68, 59, 32, 43, 151, 131, 147, 145, 138, 171,
    ], // pnq: Central India
    &[
        152, 151, 148, 153, 161, 171, 136, 140, 141, 159, 218, 240, 232, 228, 201, 194, 215, 220,
        249, 320, 106, 106, 100, 69, 37, 20, 0, 50, 41, 50, 60, 161, 149, 165, 128, 121, 152,
    ], // maa: South India
    &[
        170, 181, 164, 172, 190, 203, 164, 178, 179, 198, 237, 222, 214, 210, 182, 175, 197, 234,
        230, 344, 85, 85, 80, 47, 17, 68, 50, 0, 21, 96, 106, 192, 193, 210, 108, 100, 132,
    ], // cgk: Indonesia Central
    &[
        162, 172, 166, 168, 181, 196, 156, 170, 170, 189, 229, 214, 206, 202, 174, 167, 188, 226,
        223, 336, 77, 77, 69, 35, 9, 59, 41, 21, 0, 87, 97, 183, 185, 201, 100, 92, 124,
    ], // kul: Malaysia West
    &[
        109, 116, 114, 111, 125, 122, 92, 107, 97, 118, 175, 190, 214, 191, 235, 241, 238, 175,
        210, 276, 152, 150, 147, 113, 83, 32, 50, 96, 87, 0, 15, 120, 103, 119, 173, 166, 197,
    ], // dxb: UAE North
    &[
        88, 88, 83, 90, 98, 111, 82, 85, 86, 105, 154, 168, 183, 178, 214, 215, 201, 154, 199, 253,
        162, 159, 157, 123, 92, 43, 60, 106, 97, 15, 0, 109, 113, 129, 181, 175, 206,
    ], // doh: Qatar Central
    &[
        56, 60, 54, 63, 78, 78, 52, 49, 56, 58, 122, 138, 154, 146, 183, 181, 171, 124, 169, 224,
        246, 247, 242, 209, 179, 151, 161, 192, 183, 120, 109, 0, 196, 179, 269, 263, 294,
    ], // tlv: Israel Central
    &[
        166, 164, 159, 166, 172, 187, 168, 174, 143, 186, 220, 234, 244, 244, 273, 280, 264, 230,
        260, 321, 249, 246, 244, 211, 177, 131, 149, 193, 185, 103, 113, 196, 0, 21, 328, 321, 294,
    ], // jnb: South Africa North
    &[
        149, 147, 142, 149, 155, 171, 151, 157, 126, 168, 203, 217, 228, 228, 256, 263, 246, 214,
        242, 304, 266, 263, 261, 227, 195, 147, 165, 210, 201, 119, 129, 179, 21, 0, 328, 320, 310,
    ], // cpt: South Africa West
    &[
        267, 261, 256, 265, 263, 286, 258, 261, 254, 278, 202, 187, 162, 176, 140, 161, 146, 202,
        178, 295, 104, 110, 127, 122, 95, 145, 128, 108, 100, 173, 181, 269, 328, 328, 0, 15, 28,
    ], // syd: Australia East
    &[
        255, 261, 255, 263, 264, 280, 246, 250, 254, 275, 213, 198, 174, 186, 150, 172, 158, 213,
        190, 307, 114, 120, 138, 121, 88, 138, 121, 100, 92, 166, 175, 263, 321, 320, 15, 0, 40,
    ], // mel: Australia Southeast
    &[
        274, 266, 262, 265, 253, 285, 267, 273, 253, 285, 186, 174, 151, 163, 139, 137, 134, 186,
        166, 284, 128, 134, 150, 143, 119, 171, 152, 132, 124, 197, 206, 294, 294, 310, 28, 40, 0,
    ], // akl: New Zealand North
];

/// Where [`RTT_MS`] comes from.
pub const SOURCE: &str = "Microsoft Learn, Azure network round-trip latency statistics (learn.microsoft.com/azure/networking/azure-network-latency): monthly P50 round trips between Azure regions, dataset of 30 July 2026 (30 days); the mean of both directions; metros mapped to regions in tests/sim/data/metros.csv";

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
