"""bench/bench_cpu_cost.py's report: the per-Gbit table and the download/upload bounds it derives
from it (what the exit's download cost would have to be, and what the other parties allow)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_cpu_cost  # noqa: E402


def row(rate: float, exit: float, wg: float, iperf_c: float, iperf_s: float, soft: float) -> dict:
    return {"Mbit/s": rate, "exit": exit, "client wg": wg, "client iperf3": iperf_c,
            "server iperf3": iperf_s, "softirq": soft}  # fmt: skip


def test_the_report_derives_the_bounds_from_the_medians(capsys):
    results = {
        ("tetherctl", "upload"): [row(500, 1.8, 1.4, 0.0, 0.1, 0.3), row(480, 2.0, 9, 9, 9, 9),
                                  row(520, 1.7, 1.3, 0.1, 0.1, 0.4)],
        ("tetherctl", "download"): [row(350, 2.3, 1.7, 0.5, 0.0, 0.2)] * 3,
    }  # fmt: skip
    bench_cpu_cost.report(argparse.Namespace(runs=3, seconds=8), results)
    out = capsys.readouterr().out
    # medians, party by party: upload exit 1.8, the rest 1.4 + 0.1 + 0.1 + 0.4 = 2.0, total
    # 3.8; download exit 2.3, the rest 1.7 + 0.5 + 0.0 + 0.2 = 2.4, total 4.7
    assert "3.80" in out and "4.70" in out
    assert "rate 0.70, cost 0.81" in out  # 350 / 500; 3.8 / 4.7
    assert "would have to be 1.60 (now 2.30, its upload 1.80)" in out  # 3.8 / 0.95 - 2.4
    assert "costs 2.40 on a download and 2.00 on an upload" in out
    assert "would reach 0.90, one that cost nothing 0.83" in out  # 3.8 / 4.2; 2.0 / 2.4
