#!/usr/bin/env python3
"""Writes the RTT table of tests/sim/src/wan.rs (prints Rust to stdout).

Measured: IBM Cloud VPC, "Inter-region latency", average round trip in ms,
31 Aug 2024 - 29 Sep 2024 (github.com/ibm-cloud-docs/vpc,
_include-segments/network-latency.md): 10 metros on 5 continents. The two
directions of a pair differ by at most 3 ms; the table keeps their mean.

Estimated: the other metros have no published pair in that source. Their
round trips are a line fitted (least squares) to the measured pairs:
rtt = A + B * great-circle km, printed below; every estimated entry is
marked in the Rust comment of its row.
"""
import math

MEASURED = ["dal", "yyz", "iad", "fra", "lhr", "mad", "kix", "syd", "nrt", "gru"]
ROWS = """0 34 31 123 113 116 149 185 143 145
34 0 19 93 82 108 168 216 162 129
31 20 0 91 76 88 174 214 166 118
123 93 91 0 13 29 233 250 228 196
113 83 76 13 0 27 243 261 243 186
119 108 89 29 27 0 257 275 257 207
150 168 175 233 244 258 0 122 9 293
185 214 215 250 261 275 122 0 115 328
142 162 166 230 243 258 9 115 0 284
145 131 119 197 186 204 291 328 286 0"""

METROS = [
    ("dal", "Dallas", 32.78, -96.80, "north-america"),
    ("yyz", "Toronto", 43.65, -79.38, "north-america"),
    ("iad", "Washington DC (Ashburn)", 39.04, -77.49, "north-america"),
    ("fra", "Frankfurt", 50.11, 8.68, "europe"),
    ("lhr", "London", 51.51, -0.13, "europe"),
    ("mad", "Madrid", 40.42, -3.70, "europe"),
    ("kix", "Osaka", 34.69, 135.50, "asia"),
    ("syd", "Sydney", -33.87, 151.21, "oceania"),
    ("nrt", "Tokyo", 35.68, 139.69, "asia"),
    ("gru", "Sao Paulo", -23.55, -46.63, "south-america"),
    # Estimated (no pair in the source).
    ("cdg", "Paris", 48.86, 2.35, "europe"),
    ("ord", "Chicago", 41.88, -87.63, "north-america"),
    ("sjc", "San Jose", 37.34, -121.89, "north-america"),
    ("sin", "Singapore", 1.35, 103.82, "asia"),
    ("bom", "Mumbai", 19.08, 72.88, "asia"),
    ("jnb", "Johannesburg", -26.20, 28.05, "africa"),
]


def km(a, b):
    la1, lo1, la2, lo2 = map(math.radians, (a[2], a[3], b[2], b[3]))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2
    return 2 * 6371 * math.asin(math.sqrt(h))


m = [[int(x) for x in l.split()] for l in ROWS.splitlines()]
n0 = len(MEASURED)
xs, ys = [], []
for i in range(n0):
    for j in range(i + 1, n0):
        xs.append(km(METROS[i], METROS[j]))
        ys.append((m[i][j] + m[j][i]) / 2)
mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
B = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
A = my - B * mx
n = len(METROS)
t = [[0] * n for _ in range(n)]
for i in range(n):
    for j in range(n):
        if i == j:
            continue
        if i < n0 and j < n0:
            t[i][j] = round((m[i][j] + m[j][i]) / 2)
        else:
            t[i][j] = max(2, round(A + B * km(METROS[i], METROS[j])))
print(f"// fit: rtt = {A:.1f} ms + {B * 1000:.2f} ms per 1000 km over {len(xs)} measured pairs")
print("pub const METROS: &[Metro] = &[")
for c, name, lat, lon, cont in METROS:
    print(f'    Metro {{ code: "{c}", name: "{name}", lat: {lat}, lon: {lon}, continent: "{cont}" }},')
print("];\n")
print("/// Round trips between the metros, ms, in the order of [`METROS`]. Rows")
print(f"/// and columns from {n0} on (and their pairs) are estimated (see the module")
print("/// docs).")
print("pub const RTT_MS: &[&[u16]] = &[")
for i, r in enumerate(t):
    tag = "measured row" if i < n0 else "estimated row"
    print(f"    &[{', '.join(str(x) for x in r)}], // {METROS[i][0]}: {tag}")
print("];")
print(f"\n/// Metros whose every round trip is measured (the first ones).\npub const MEASURED_METROS: usize = {n0};")
