"""benchmarks/serve_speed.py: the quantization config it picks for this CPU and its targets against the best peer."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_speed.py"
spec = importlib.util.spec_from_file_location("serve_speed_bench", SCRIPT)
serve_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_speed)


def level(c, tps, p99, requests=10):
    return {"concurrency": c, "texts_per_s": tps, "p99_ms": p99, "requests": requests}


def results(**systems):
    return {"systems": {name.replace("_", "-"): {"levels": lv} for name, lv in systems.items()}}


def test_quantization_config_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(serve_speed.platform, "machine", lambda: "x86_64")
    pick = serve_speed.quantization_config_for_cpu
    assert pick("flags : fpu avx avx2 avx512f avx512_vnni") == "avx512_vnni"
    assert pick("flags : fpu avx avx2 avx512f avx512bw") == "avx512"
    assert pick("flags : fpu avx avx2") == "avx2"
    monkeypatch.setattr(serve_speed.platform, "machine", lambda: "aarch64")
    assert pick("Features : fp asimd") == "arm64"


def test_targets_compare_against_the_fastest_peer_at_each_level():
    res = results(
        server_int8=[level(1, 100, 90), level(32, 300, 1000)],
        ort_int8=[level(1, 500, 10), level(32, 900, 50)],  # our own runtime: never a peer
        st_torch=[level(1, 60, 200), level(32, 70, 3000)],
        st_onnx_int8_http=[level(1, 80, 100), level(32, 150, 2000)],
        infinity_optimum=[level(1, 70, 80), level(32, 180, 1500)],
    )
    targets = serve_speed.peer_targets(res, [1, 32])
    tput = targets["server-int8_throughput_vs_best_peer_at_c32"]
    assert tput["best_peer"] == "infinity-optimum"
    assert tput["value"] == round(300 / 180, 3) and tput["met"] is True
    p99 = targets["server-int8_p99_vs_best_peer_at_c1"]
    assert p99["best_peer"] == "st-onnx-int8-http"  # the fastest at c=1, not the lowest p99
    assert p99["value"] == 0.9 and p99["met"] is True
    assert p99["lowest_peer_p99_ms"] == (80, "infinity-optimum")


def test_a_peer_that_served_nothing_at_a_level_is_not_the_best_and_a_missed_target_says_so():
    res = results(
        server_int8=[level(1, 50, 300), level(32, 200, 1000)],
        st_onnx_int8=[level(1, 0, float("nan"), requests=0), level(32, 190, 900)],
        infinity_torch=[level(1, 40, 200), level(32, 100, 2000)],
    )
    targets = serve_speed.peer_targets(res, [1, 32])
    assert targets["server-int8_p99_vs_best_peer_at_c1"]["best_peer"] == "infinity-torch"
    assert targets["server-int8_p99_vs_best_peer_at_c1"]["value"] == 1.5
    assert targets["server-int8_p99_vs_best_peer_at_c1"]["met"] is False
    assert targets["server-int8_throughput_vs_best_peer_at_c32"]["met"] is False  # 200 / 190 < 1.5


def test_without_peers_the_targets_are_not_met():
    res = results(server_int8=[level(1, 50, 300), level(32, 200, 1000)])
    targets = serve_speed.peer_targets(res, [1, 32])
    assert all(t["value"] is None and t["met"] is False for t in targets.values())
