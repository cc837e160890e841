"""The summary table of docs/PERFORMANCE.md, generated from `make perf`'s JSON (issue 9).

Every perf/ script prints JSON of its own shape; one short extractor per measurement turns it
into rows (figure, reference figure, ratio, target). run_all.py adds machine, date and command,
and `update_doc` replaces what lies between the markers in docs/PERFORMANCE.md.
"""

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
COLUMNS = ("measurement", "figure", "reference (same run)", "ratio", "target", "machine", "date", "command")


def row(figure, value, reference="-", ratio="-", target="-"):
    return {"figure": figure, "value": value, "reference": reference, "ratio": ratio, "target": target}


def num(value, digits=2, unit=""):
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def met(ok, goal):
    return f"{goal}: {'met' if ok else '**NOT met**'}"


# --- one extractor per measurement: its script's JSON -> rows ----------------------------------

def _steps(loop):
    rounds = loop.get("rounds") or [loop]
    return f"{rounds[0]['steps']:,}" if "steps" in rounds[0] else "?"


def platform(r):
    loop, stock = r.get("naive_loop", {}), r.get("stock", {})
    targets = r.get("targets", {"points_per_s": 5000, "ratio_vs_stock_per_call": 250})
    return [
        row("platform cold start to all-healthy (hub, proxy, MLflow)", num(r["cold_start_s"], 1, "s")),
        row("platform warm start (same state directory)", num(r["warm_start_s"], 1, "s")),
        row("hub restart (sessions and proxy kept)", num(r["hub_restart_s"], 1, "s")),
        row("login to JupyterLab, 1 user, local spawner", num(r["login_to_lab_s"], 1, "s")),
        row(f"MLflow logging, naive `mlflow.log_metric` x {_steps(loop)} in a session, end to end"
            + (f" (median of {loop['median_of']} fresh kernels)" if loop.get("median_of") else ""),
            num(loop.get("points_per_s"), 0, "points/s"), num(stock.get("per_call_points_per_s"), 1, "points/s stock per call"),
            num(r.get("logging_ratio_vs_stock_per_call"), 1) + "x",
            met(r.get("meets_targets"), f">= {targets['points_per_s']:,} points/s and >= {targets['ratio_vs_stock_per_call']}x")),
    ]


def login_scale(r):
    crowds = r["crowds"]
    single = (crowds.get("1") or {}).get("p50_s")
    rows = []
    for n, c in sorted(crowds.items(), key=lambda kv: int(kv[0])):
        who = "1 user" if n == "1" else f"{n} users at once"
        figure = (f"p50 {num(c['p50_s'], 1)} s, p95 {num(c['p95_s'], 1)} s, max {num(c['max_s'], 1)} s; "
                  f"failed {c['failed']}/{c.get('rounds', c['users']) if n == '1' else c['users']}; "
                  f"hub CPU {num(c['hub_cpu_s'], 1)} s")
        reference, ratio = "-", "-"
        if n != "1" and single and c["p95_s"]:
            reference, ratio = f"1 user p50 {num(single, 1)} s", f"p95 {num(c['p95_s'] / single, 1)}x"
        rows.append(row(f"login to JupyterLab, {who} ({r['spawner']} spawner)", figure, reference, ratio,
                        met(c["failed"] == 0, "no failures")))
    return rows


def spawner(r):
    rows = []
    bound = 60 / r["poll_interval_s"] if "poll_interval_s" in r else None
    for level, ours in (r.get("squeue_calls_per_min", {}).get("ours") or {}).items():
        stock = r["squeue_calls_per_min"]["stock"][level]
        rows.append(row(f"squeue calls per minute, {level} running session{'' if level == '1' else 's'}", num(ours, 1), f"stock batchspawner {num(stock, 1)}",
                        num(ours / stock if stock else None, 2),
                        met(ours <= bound, f"<= {bound:g}/min at any session count") if bound else "-"))
    login = r.get("login_to_lab", {})
    for case, ours in (login.get("ours") or {}).items():
        stock = login["stock"][case]
        rows.append(row(f"Slurm login to JupyterLab vs stock, {case.replace('_', ' ')} (n={ours['n']})",
                        f"p50 {num(ours['p50_s'], 1)} s, p95 {num(ours['p95_s'], 1)} s",
                        f"stock p50 {num(stock['p50_s'], 1)} s, p95 {num(stock['p95_s'], 1)} s",
                        f"p50 {num(ours['p50_s'] / stock['p50_s'], 2)}"))
    for case, (ours, stock) in _pairs(r.get("spawn_to_ready_featherweight")):
        rows.append(row(f"spawn-to-ready, featherweight server ({case})", num(ours, 2, "s"), f"stock {num(stock, 2)} s",
                        num(ours / stock, 2)))
    return rows


def _pairs(featherweight):
    if not featherweight:
        return []
    return [(stat, (featherweight["ours"][stat], featherweight["stock"][stat])) for stat in ("p50_s", "p95_s")]


def bench_overhead(r):
    return [row("benchmark harness overhead, null model, SingleStream p50",
                f"suite {num(r['suite_p50_us'])} µs/query (overhead {r['overhead_p50_us']:+.2f} µs)",
                f"LoadGen alone {num(r['loadgen_alone_p50_us'])} µs", num(r["ratio_p50_suite_vs_loadgen_alone"], 3),
                met(r["meets_target"], f"overhead <= {r['target_us']:g} µs/query"))]


def bench_outputs(r):
    calls = r["per_call"]
    fetched = r["fetched"]
    return [row(f"fetch the scored output only vs every output, ONNX Runtime CPU, SingleStream p50; unused output "
                f"{r['unused_output']}", f"scored {num(r['scored_p50_us'], 0)} µs ({', '.join(fetched['scored'])})",
                f"all {num(r['all_p50_us'], 0)} µs ({', '.join(fetched['all'])})", num(r["ratio_all_vs_scored"], 3)),
            row("ONNX Runtime backend's own cost per query (output selection included), logits-only model",
                f"{calls['suite_minus_bare_median_us']:+.2f} µs/call", f"bare `session.run` {num(calls['bare_session_run_best_us'])} µs",
                target=met(calls["suite_minus_bare_median_us"] <= 2.0, "<= 2 µs/query"))]


def bench_fidelity(r):
    return [row(f"benchmark fidelity, `{name}` SingleStream p50", num(m["suite_p50_us"], 0, "µs"),
                f"torch.utils.benchmark {num(m['torch_utils_benchmark_median_us'], 0)} µs", num(m["ratio"], 3),
                met(m["within_3_percent"], "1 ± 0.03"))
            for name, m in r["models"].items()]


def bench_quick_profile(r):
    return [row("quick profile (accuracy + 4 LoadGen scenarios), digits MLP, ONNX Runtime CPU",
                f"cold {num(r['cold_wall_s'], 1)} s, warm {num(r['warm_wall_s'], 1)} s", f"budget {r['budget_s']:g} s",
                num(r["ratio_cold_to_budget"], 2), met(r["meets_budget"], f"cold <= {r['budget_s']:g} s"))]


def _llm_decode_row(llm):
    return row(f"LLM decode batch 1, {llm['model']} ({llm['device']})",
               f"{num(llm['decode_tokens_per_s_batch1'], 1)} tokens/s",
               f"roofline {num(llm['roofline_tokens_per_s'], 0)} tokens/s (copy {num(llm['copy_bandwidth_gbs'], 0)} GB/s "
               f"/ {num(llm['weight_gb'], 2)} GB per token)", num(llm["fraction_of_roofline"], 3))


def bench_gpu(r):
    if r.get("skipped"):
        rows = [row("GPU: Offline throughput vs bf16 matmul peak; CUDA graphs", "no GPU on this machine",
                    target="not measured")]
        return rows + ([_llm_decode_row(r["llm_decode"])] if r.get("llm_decode") else [])
    offline, single = r["offline"], r["single_stream_digits_mlp_bf16"]
    return [
        row(f"GPU Offline throughput, {offline['model']} ({', '.join(r['gpu'])})", num(offline["achieved_tflops"], 0, "TFLOP/s"),
            f"torch bf16 matmul peak {num(r['matmul_bf16_peak_tflops'], 0)} TFLOP/s", num(offline["fraction_of_matmul_peak"], 3),
            met(offline["fraction_of_matmul_peak"] >= offline["target"], f">= {offline['target']:g} of peak")),
        row("GPU SingleStream p50, digits MLP bf16, CUDA graphs", num(single["p50_us_cuda_graphs"], 1, "µs"),
            f"eager {num(single['p50_us_eager'], 1)} µs", num(single["p50_us_cuda_graphs"] / single["p50_us_eager"], 2)),
        *([_llm_decode_row(r["llm_decode"])] if r.get("llm_decode") else []),
    ]


def genai_overhead(r):
    return [
        row(f"LLM harness: TPOT p50, reference LM SingleStream, {r['tokens_per_query']} tokens/query (streamer -> LoadGen)",
            f"suite {num(r['suite_tpot_ms'], 3)} ms (cost {r['harness_cost_per_token_us']:+.0f} µs/token)",
            f"generate() bare {num(r['bare_tpot_ms'], 3)} ms", num(r["tpot_ratio"], 3),
            met(abs(r["tpot_ratio"] - 1) <= 0.03 and r["harness_cost_fraction_of_tpot"] <= 0.02,
                "1 ± 0.03, cost <= 2 % of TPOT")),
        row("LLM harness: TTFT p50, same runs", f"suite {num(r['suite_ttft_ms'], 3)} ms",
            f"generate() bare {num(r['bare_ttft_ms'], 3)} ms", num(r["ttft_ratio"], 3),
            met(abs(r["ttft_ratio"] - 1) <= 0.03, "1 ± 0.03")),
    ]


def genai_quick_profile(r):
    return [row("quick profile of the reference LM (accuracy + SingleStream/Server/Offline), transformers CPU",
                f"cold {num(r['cold_wall_s'], 1)} s, warm {num(r['warm_wall_s'], 1)} s", f"budget {r['budget_s']:g} s",
                num(r["ratio_cold_to_budget"], 2), met(r["meets_budget"], f"cold <= {r['budget_s']:g} s"))]


def compare_runs(r):
    n = r["benchmarks"]
    cli_ratio = r["compare_cli_s"] / r["reference_mlflow_import_s"] if r.get("reference_mlflow_import_s") else None
    return [
        row(f"`aif compare`: leaderboard + Pareto front over {n} benchmarks ({r['mlflow_runs']} MLflow runs), in process",
            num(r["compare_in_process_s"], 2, "s"), f"one paged `search_runs` {num(r['reference_search_runs_s'], 2)} s",
            num(r["ratio_compare_vs_search_runs"], 2)),
        row(f"`aif compare -f csv` over {n} benchmarks, new process", num(r["compare_cli_s"], 1, "s"),
            f"process importing `MlflowClient` {num(r['reference_mlflow_import_s'], 1)} s", num(cli_ratio, 2),
            met(r["compare_cli_s"] < 10, "seconds (< 10 s)")),
    ]


def workshop_start(r):
    seats = r["seats"]
    return [row(f"workshop start, {seats} seats at once",
                f"ready {r['ready']}/{seats}; p50 {num(r['p50_s'], 1)} s, p95 {num(r['p95_s'], 1)} s, "
                f"max {num(r['max_s'], 1)} s; hub CPU {num(r.get('hub_cpu_s'), 1)} s",
                target=met(r["failed"] == 0 and r["ready"] == seats, "every seat ready"))]


def serve_overhead(r):
    rows = []
    for streams in (1, 16):
        c = r[f"c{streams}"]
        rows.append(row(f"served model: TTFT p50 through the hub vs straight to the engine, {streams} stream(s)",
                        f"hub {num(c['hub']['ttft_p50_ms'])} ms ({c['ttft_added_ms_hub']:+.2f} ms)",
                        f"direct {num(c['direct']['ttft_p50_ms'])} ms", num(c["ttft_ratio_hub_vs_direct"], 3),
                        met(c["ttft_ratio_hub_vs_direct"] <= 1.05, "<= 1.05")))
        rows.append(row(f"served model: TPOT p50 through the hub, {streams} stream(s)",
                        f"hub {num(c['hub']['tpot_p50_ms'], 3)} ms", f"direct {num(c['direct']['tpot_p50_ms'], 3)} ms",
                        num(c["tpot_ratio_hub_vs_direct"], 3), met(c["tpot_ratio_hub_vs_direct"] <= 1.05, "no added TPOT (<= 1.05)")))
    return rows


EXTRACTORS = {
    "platform": platform, "login_scale": login_scale, "spawner": spawner, "bench_overhead": bench_overhead,
    "bench_outputs": bench_outputs,
    "bench_fidelity": bench_fidelity, "bench_quick_profile": bench_quick_profile, "bench_gpu": bench_gpu,
    "compare_runs": compare_runs, "workshop_start": workshop_start, "genai_overhead": genai_overhead,
    "genai_quick_profile": genai_quick_profile, "serve_overhead": serve_overhead,
}


# --- the table ----------------------------------------------------------------------------------

def machine_text(machine, load):
    before, after = load or (None, None)
    return f"{machine['cpu_model']}, {machine['cores']} cores, load {num(before, 1)} → {num(after, 1)}"


def failure_text(entry):
    if entry.get("timed_out"):
        return f"FAILED (timed out after {entry['seconds']:.0f} s, exit code {entry['exit_code']})"
    if entry.get("skipped"):
        return f"FAILED (not run: {entry['skipped']})"
    return f"FAILED (exit code {entry['exit_code']})"


def rows_of(name, entry):
    """The rows of one measurement; a failed run or an unreadable JSON is one FAILED row."""
    if "result" in entry:
        try:
            return EXTRACTORS[name](entry["result"]), None
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            problem = f"FAILED (its JSON lacks what the table reads: {type(err).__name__} {err})"
            return [row(name, problem, target="**NOT met**")], problem
    return [row(name, failure_text(entry), target="**NOT met**")], failure_text(entry)


def table(report):
    """(markdown, failures): the summary table of a run_all report."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    failures = []
    for name, entry in report["measurements"].items():
        rows, problem = rows_of(name, entry)
        if problem:
            failures.append(f"{name}: {problem}")
        machine = machine_text(report["machine"], entry.get("load_avg"))
        for r in rows:
            cells = (r["figure"], r["value"], r["reference"], r["ratio"], r["target"], machine,
                     entry.get("date", report["date"]), f"`{entry['command']}`")
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines), failures


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_block(report):
    markdown, _ = table(report)
    m = report["machine"]
    total = report.get("total_seconds")
    head = (f"Generated by `{report['command']}` on {report['date']}: {m['cpu_model']}, {m['cores']} cores, "
            f"{m['memory_gib']} GiB, {m['gpu']}; load average {num(report['load_avg_start'], 1)} at the start, "
            f"{num(report.get('load_avg_end'), 1)} at the end"
            + (f"; {total / 60:.1f} min in all (target: 20 min, {'met' if total <= 1200 else '**NOT met**'})" if total else "")
            + "".join(f"; re-measured alone on {r['date']}: {', '.join(r['names'])}" for r in report.get("remeasured", []))
            + ". Every figure's JSON is in `perf/results/perf.json`; the machine column gives the 1-minute "
            "load average before → after each script (load above the core count means other work shared the "
            "machine and slowed the figures).")
    return f"{BEGIN}\n{head}\n\n{markdown}\n{END}"


def update_doc(path, report):
    """Replace the text between the markers; everything outside them stays as written."""
    text = path.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no '{BEGIN}' ... '{END}' markers; add them where the summary table goes")
    path.write_text(text[:start] + summary_block(report) + text[end + len(END):])
