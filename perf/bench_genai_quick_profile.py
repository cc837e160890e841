"""Quick profile of the reference LM: accuracy (exact match, ROUGE, perplexity) and the three token
scenarios (SingleStream, Server with its QPS search under llama3.1-8b's TTFT/TPOT bounds, Offline),
through `aifactory.benchmarks.run` with the quick profile's defaults, transformers backend, one
thread, MLflow off. Reports the wall time from config to results on disk against the 60 s budget
(cold: the first run in a fresh process, imports included), and how long building the reference
models took when they were not built yet. Prints JSON.

    .venv/bin/python perf/bench_genai_quick_profile.py [--repeat 2]
"""

import argparse
import json
import statistics
import tempfile
import time

BUDGET_S = 60.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--backend", default="transformers")
    args = parser.parse_args()
    start = time.perf_counter()
    from aifactory.benchmarks import run
    from aifactory.benchmarks.testing import reference_language

    import_s = time.perf_counter() - start
    begin = time.perf_counter()
    paths = reference_language()  # built once per cache; reused (under a second) after
    reference_s = time.perf_counter() - begin
    walls, children = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            begin = time.perf_counter()
            result = run(model=str(paths["lm"]), data=str(paths["prompts"]),
                         backends=[{"kind": args.backend, "threads": 1}],
                         scenarios=["SingleStream", "Server", "Offline"], profile="quick",
                         accuracy={"perplexity_text": str(paths["heldout"])},
                         scenario={"slo_preset": "llama3.1-8b"}, mlflow={"enabled": False},
                         results_dir=f"{tmp}/{i}", progress=False)
            walls.append(time.perf_counter() - begin)
            children = children or {c.scenario: {k: round(v, 4) for k, v in c.metrics.items() if k in (
                "exact_match", "perplexity", "ttft_p50_ms", "tpot_p50_ms", "output_tokens_per_s",
                "server_max_valid_qps")} for c in result.children}
    cold = walls[0] + import_s
    print(json.dumps({
        "metric": "genai_quick_profile_wall_s", "budget_s": BUDGET_S, "model": "reference LM", "backend": args.backend,
        "cold_wall_s": cold, "warm_wall_s": statistics.median(walls[1:]) if len(walls) > 1 else None,
        "wall_s_runs": walls, "import_s": import_s, "reference_models_s": reference_s,
        "ratio_cold_to_budget": cold / BUDGET_S, "meets_budget": cold <= BUDGET_S, "children": children,
    }, indent=2))


if __name__ == "__main__":
    main()
