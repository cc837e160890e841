"""`make perf`'s summary table (perf/perf_table.py) from a sample report: no components run.

perf/ is a folder of scripts, importable here through pytest's `pythonpath` (pyproject.toml).
"""

import perf_table
import pytest
from run_all import last_json, merged

MACHINE = {"cpu_model": "AMD EPYC", "cores": 2, "memory_gib": 24, "gpu": "no GPU"}


def entry(name, result=None, **extra):
    base = {"command": f".venv/bin/python perf/{name}.py", "date": "2026-11-21 03:00", "exit_code": 0,
            "seconds": 12.0, "load_avg": [0.5, 1.5]}
    if result is not None:
        base["result"] = result
    return {**base, **extra}


def sample_report():
    return {
        "date": "2026-11-21 03:00", "command": "make perf", "machine": MACHINE, "load_avg_start": 0.5,
        "load_avg_end": 2.0, "total_seconds": 900.0,
        "measurements": {
            "login_scale": entry("login_scale", {
                "spawner": "slurm",
                "crowds": {"1": {"users": 1, "rounds": 3, "failed": 0, "p50_s": 4.0, "p95_s": 4.4, "max_s": 4.4,
                                 "hub_cpu_s": 0.3},
                           "30": {"users": 30, "failed": 2, "p50_s": 40.0, "p95_s": 60.0, "max_s": 61.0,
                                  "hub_cpu_s": 12.5}}}),
            "bench_overhead": entry("bench_overhead", {
                "suite_p50_us": 2.4, "loadgen_alone_p50_us": 2.0, "overhead_p50_us": 0.4, "target_us": 2.0,
                "ratio_p50_suite_vs_loadgen_alone": 1.2, "meets_target": True}),
            "bench_outputs": entry("bench_outputs", {
                "unused_output": "hidden [N, 16384] float32 (64 KiB per sample)",
                "fetched": {"scored": ["logits"], "all": ["logits", "hidden"]}, "scored_p50_us": 100.0,
                "all_p50_us": 110.0, "ratio_all_vs_scored": 1.1,
                "per_call": {"suite_minus_bare_median_us": 0.25, "bare_session_run_best_us": 6.5}}),
            "workshop_start": entry("workshop_start", {"seats": 30, "ready": 30, "failed": 0, "p50_s": 50.0,
                                                       "p95_s": 70.0, "max_s": 72.0, "hub_cpu_s": 9.0}),
            "bench_gpu": entry("bench_gpu", {"metric": "gpu_benchmarks", "skipped": True, "reason": "no CUDA"}),
            "spawner": entry("spawner_compare", exit_code=1, error="Traceback ..."),
            "compare_runs": entry("compare_runs", timed_out=True, exit_code=-9, seconds=240.0),
            "bench_fidelity": entry("bench_fidelity", {"models": {"mlp_512": {"suite_p50_us": 350}}}),
            "serve_overhead": entry("serve_overhead", {
                f"c{n}": {"direct": {"ttft_p50_ms": 12.0, "tpot_p50_ms": 6.0}, "hub": {"ttft_p50_ms": 12.0 + n / 2,
                                                                                     "tpot_p50_ms": 6.0},
                          "ttft_added_ms_hub": n / 2, "ttft_ratio_hub_vs_direct": (12.0 + n / 2) / 12.0,
                          "tpot_ratio_hub_vs_direct": 1.0} for n in (1, 16)}),
        },
    }


def rows_by_measurement(markdown):
    return [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_each_figure_is_a_row_with_machine_date_and_command():
    markdown, _ = perf_table.table(sample_report())
    rows = rows_by_measurement(markdown)
    crowd = next(r for r in rows if "30 users at once (slurm spawner)" in r)
    assert "p50 40.0 s, p95 60.0 s, max 61.0 s; failed 2/30; hub CPU 12.5 s" in crowd
    assert "1 user p50 4.0 s" in crowd and "p95 15.0x" in crowd and "no failures: **NOT met**" in crowd
    assert "AMD EPYC, 2 cores, load 0.5 → 1.5" in crowd and "2026-11-21 03:00" in crowd
    assert "`.venv/bin/python perf/login_scale.py`" in crowd
    overhead = next(r for r in rows if "harness overhead" in r)
    assert "overhead +0.40 µs" in overhead and "overhead <= 2 µs/query: met" in overhead
    fetch = next(r for r in rows if "fetch the scored output only" in r)
    assert "scored 100 µs (logits)" in fetch and "all 110 µs (logits, hidden)" in fetch and "| 1.100 |" in fetch
    own_cost = next(r for r in rows if "backend's own cost per query" in r)
    assert "+0.25 µs/call" in own_cost and "<= 2 µs/query: met" in own_cost
    workshop = next(r for r in rows if "workshop start, 30 seats" in r)
    assert "ready 30/30; p50 50.0 s, p95 70.0 s, max 72.0 s; hub CPU 9.0 s" in workshop
    assert "every seat ready: met" in workshop


def test_the_served_model_rows_say_what_the_hub_adds_and_judge_the_5_percent_target():
    markdown, _ = perf_table.table(sample_report())
    one, sixteen = (next(r for r in rows_by_measurement(markdown) if f"TTFT p50 through the hub vs straight to the "
                         f"engine, {n} stream" in r) for n in (1, 16))
    assert "hub 12.50 ms (+0.50 ms)" in one and "direct 12.00 ms" in one and "<= 1.05: met" in one
    assert "hub 20.00 ms (+8.00 ms)" in sixteen and "<= 1.05: **NOT met**" in sixteen


def test_failures_show_as_failed_and_no_gpu_is_not_a_failure():
    markdown, failures = perf_table.table(sample_report())
    assert "FAILED (exit code 1)" in markdown
    assert "FAILED (timed out after 240 s, exit code -9)" in markdown
    assert "no GPU on this machine" in markdown
    assert sorted(f.split(":")[0] for f in failures) == ["bench_fidelity", "compare_runs", "spawner"]
    # a JSON whose shape the extractor does not know is named, not silently dropped
    assert "its JSON lacks what the table reads: KeyError" in markdown


def test_update_doc_replaces_only_between_markers(tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text(f"# Performance\n\nintro\n\n{perf_table.BEGIN}\nold table\n{perf_table.END}\n\n## Hand-written\nkept\n")
    perf_table.update_doc(doc, sample_report())
    text = doc.read_text()
    assert text.startswith("# Performance\n\nintro\n\n" + perf_table.BEGIN)
    assert text.endswith(perf_table.END + "\n\n## Hand-written\nkept\n")
    assert "old table" not in text and "15.0 min in all (target: 20 min, met)" in text
    perf_table.update_doc(doc, sample_report())  # idempotent: the markers stay, one table
    assert doc.read_text() == text


def test_update_doc_without_markers_says_what_is_missing(tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("# Performance\n")
    with pytest.raises(ValueError, match="no '<!-- perf:begin -->'"):
        perf_table.update_doc(doc, sample_report())
    assert doc.read_text() == "# Performance\n"


def test_a_scripts_json_is_its_last_top_level_object_not_a_nested_one():
    stdout = 'progress {not json}\n{"old": 1}\n{"result": {"nested": {"deep": 1}}, "rows": [{"a": 2}]}\nbye\n'
    assert last_json(stdout) == {"result": {"nested": {"deep": 1}}, "rows": [{"a": 2}]}


def test_a_merged_rerun_replaces_its_rows_and_the_header_says_so():
    full = sample_report()
    rerun = {"date": "2026-11-21 05:00", "measurements": {"bench_overhead": entry("bench_overhead", {
        "suite_p50_us": 1.1, "loadgen_alone_p50_us": 1.0, "overhead_p50_us": 0.1, "target_us": 2.0,
        "ratio_p50_suite_vs_loadgen_alone": 1.1, "meets_target": True}, date="2026-11-21 05:00")}}
    report = merged(full, rerun)
    block = perf_table.summary_block(report)
    overhead = next(r for r in rows_by_measurement(block) if "harness overhead" in r)
    assert "overhead +0.10 µs" in overhead and "2026-11-21 05:00" in overhead
    assert "workshop start, 30 seats" in block, "the rows not re-measured stay"
    assert "re-measured alone on 2026-11-21 05:00: bench_overhead" in block
    assert full["measurements"]["bench_overhead"]["result"]["overhead_p50_us"] == 0.4, "the full run is not changed"
    again = merged(report, dict(rerun, date="2026-11-21 06:00"))
    assert again["remeasured"] == [{"names": ["bench_overhead"], "date": "2026-11-21 06:00"}], "only the latest is named"
