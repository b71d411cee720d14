"""bench/side_by_side.py's load syntax, its summary of repeated loads, and its router specs."""
import msgspec

from bench.services import router_config
from bench.side_by_side import Load, median_lines, parse_load
from common.config import ServerConfig


def test_a_load_with_repeats_and_prompts():
    assert parse_load("128x64@16/96*3", min_prompts=8, repeats=1) == Load(128, 64, 16, 96, 3)
    assert parse_load("128x64@1", min_prompts=8, repeats=2) == Load(128, 64, 1, 8, 2)


def run(server: str, repeat: int, tok_s: float, ttft: float, repeats: int = 3, error: bool = False) -> dict:
    load = {"input_len": 128, "output_len": 64, "concurrency": 16, "prompts": 96, "repeats": repeats}
    result = {"error": "exited"} if error else {
        "output_throughput": tok_s, "median_ttft_ms": ttft, "median_tpot_ms": 5.0, "median_itl_ms": 4.0}
    return {"server": server, "load": load, "repeat": repeat, "result": result}


def test_repeated_loads_give_the_median_of_their_runs_with_the_range():
    rows = [run("ours-2fe", 1, 300, 40), run("ours-2fe", 2, 320, 90), run("ours-2fe", 3, 310, 50),
            run("vllm-serve-1api", 1, 290, 30), run("vllm-serve-1api", 2, 0, 0, error=True)]
    assert median_lines(rows) == [
        "| ours-2fe | 128/64 | 16 | 3 | 310 (300–320) | 50.00 (40.00–90.00) | 5.00 (5.00–5.00) | 4.00 (4.00–4.00) |",
        "| vllm-serve-1api | 128/64 | 16 | 1 | 290 (290–290) | 30.00 (30.00–30.00) | 5.00 (5.00–5.00) | "
        "4.00 (4.00–4.00) |",
    ]


def test_single_runs_have_no_median_line():
    assert median_lines([run("ours-2fe", 1, 300, 40, repeats=1)]) == []


def test_a_router_spec_becomes_server_yml_router_keys():
    assert router_config("prefix") == {"policy": "prefix"}
    assert router_config("approximate") == {"placement": "approximate"}
    assert router_config("vllm_dp") == {"policy": "vllm_dp"}
    assert router_config("prefix/requests") == {"policy": "prefix", "load_score": "requests"}
    for spec in ("prefix", "approximate/requests", "load/tokens", "round_robin", "vllm_dp"):
        msgspec.convert({"router": router_config(spec)}, ServerConfig)  # keys server.yml accepts
