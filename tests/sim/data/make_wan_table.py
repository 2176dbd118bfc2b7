#!/usr/bin/env python3
"""Writes the metro table of tests/sim/src/wan.rs (prints Rust to stdout).

Source: Microsoft Learn, "Azure network round-trip latency statistics"
(learn.microsoft.com/azure/networking/azure-network-latency; the page's
CSV of monthly P50 round-trip times between Azure regions, dataset of
30 July 2026 covering the 30 days before), copied unchanged into
azure_p50_2026-07-30_raw.csv. metros.csv maps each metro we model to its
Azure region and gives the city's coordinates (Microsoft publishes no
data-centre sites). Every pair is measured, both ways; the table keeps the
mean of the two directions, rounded to the millisecond.
"""
import csv
import os

here = os.path.dirname(os.path.abspath(__file__))
raw = list(csv.reader(open(os.path.join(here, "azure_p50_2026-07-30_raw.csv"))))
cols = raw[0][1:]
ms = {row[0]: {c: (int(v) if v else None) for c, v in zip(cols, row[1:])} for row in raw[1:]}
metros = list(csv.DictReader(open(os.path.join(here, "metros.csv"))))


def rtt(a, b):
    ra, rb = a["azure_region"], b["azure_region"]
    x, y = ms[ra][rb], ms[rb][ra]
    assert x is not None and y is not None, f"{ra} - {rb} not measured"
    return int((x + y) / 2 + 0.5)


print("pub const METROS: &[Metro] = &[")
for m in metros:
    cont = m["continent"].lower().replace(" ", "-")
    print(
        f'    Metro {{ code: "{m["code"].lower()}", name: "{m["metro"]}", '
        f'lat: {float(m["lat"])}, lon: {float(m["lon"])}, continent: "{cont}" }},'
    )
print("];\n")
print("/// Round trips between the metros, ms, in the order of [`METROS`].")
print("pub const RTT_MS: &[&[u16]] = &[")
for a in metros:
    row = [0 if a is b else rtt(a, b) for b in metros]
    print(f"    &[{', '.join(str(x) for x in row)}], // {a['code'].lower()}: {a['azure_region']}")
print("];")
