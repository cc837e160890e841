"""The benchmark suite's vocabulary, defined once: scenario names, MLflow tags, metrics, artifacts.

docs/mlflow-layout.md is the contract between the suite (which writes runs) and comparisons and
reports (which read them); these constants are that contract in code. Every module that writes
or reads a tag, a metric, an artifact or a scenario name imports it from here, so a rename is
one edit and a typo is an AttributeError instead of a silently empty column
(tests/test_bench_structure.py checks that each name here is the one the doc promises).
"""

# -- LoadGen scenarios, in MLPerf's order (the order of tables and plots) ------------------------
SINGLE_STREAM = "SingleStream"
MULTI_STREAM = "MultiStream"
SERVER = "Server"
OFFLINE = "Offline"
SCENARIOS = (SINGLE_STREAM, MULTI_STREAM, SERVER, OFFLINE)
#: the `aif.scenario` of the child run that holds a backend's accuracy (not a LoadGen scenario)
ACCURACY = "Accuracy"
#: the LoadGen scenarios a generative model (text-generation) runs under, with token latencies
TOKEN_SCENARIOS = (SINGLE_STREAM, SERVER, OFFLINE)

# -- tasks (tag aif.task) -----------------------------------------------------------------------
CLASSIFICATION = "classification"
REGRESSION = "regression"
NO_TASK = "none"
TEXT_GENERATION = "text-generation"  # causal LMs
TEXT_CLASSIFICATION = "text-classification"  # encoders with a classification head
FEATURE_EXTRACTION = "feature-extraction"  # encoders returning embeddings
TEXT_TASKS = (TEXT_GENERATION, TEXT_CLASSIFICATION, FEATURE_EXTRACTION)

# -- run kinds (tag aif.kind) -----------------------------------------------------------------
KIND_BENCHMARK = "benchmark"  # the parent run of one `aif bench run`
KIND_CHILD = "benchmark.child"  # one (backend, scenario) of it
KIND_COMPARISON = "comparison"  # a run of its own that holds `aif report`'s pages


class Tags:
    """MLflow run tags (docs/mlflow-layout.md, "Runs")."""

    KIND = "aif.kind"
    MODEL = "aif.model"
    DATASET = "aif.dataset"
    TASK = "aif.task"
    HARDWARE = "aif.hardware"
    ENVIRONMENT = "aif.environment"
    COMMAND = "aif.command"
    BACKEND = "aif.backend"
    PRECISION = "aif.precision"
    SCENARIO = "aif.scenario"
    RESULT_VALID = "aif.loadgen.result_valid"
    EARLY_STOPPING = "aif.loadgen.early_stopping"
    BATCH_SIZE = "aif.batch_size"
    SLURM_JOB_ID = "aif.slurm.job_id"
    SLURM_ARRAY_JOB_ID = "aif.slurm.array_job_id"
    SLURM_ARRAY_TASK_ID = "aif.slurm.array_task_id"
    SLURM_NODE = "aif.slurm.node"
    # token scenarios (text-generation): LoadGen's verdict on its TTFT and TPOT bounds (Server)
    CONSTRAINTS_MET = "aif.loadgen.constraints_met"
    TTFT_CONSTRAINT = "aif.loadgen.ttft_constraint"
    TPOT_CONSTRAINT = "aif.loadgen.tpot_constraint"
    SLO_PRESET = "aif.slo_preset"
    ERROR = "aif.error"
    # which output was scored, which a query fetched, whose predictions the backend was checked against
    OUTPUT = "aif.output"
    OUTPUTS_FETCHED = "aif.outputs_fetched"
    CROSSCHECK = "aif.crosscheck"
    # on a comparison run
    COMPARED_RUNS = "aif.compared_runs"
    COMPARED_MODELS = "aif.models"
    # MLflow's own: how a nested run names its parent
    PARENT_RUN_ID = "mlflow.parentRunId"


class Metrics:
    """Metric names (docs/mlflow-layout.md, "Metrics"); latencies in ms, per child run."""

    LATENCY_P50 = "latency_p50_ms"
    LATENCY_P90 = "latency_p90_ms"
    LATENCY_P95 = "latency_p95_ms"
    LATENCY_P99 = "latency_p99_ms"
    LATENCY_MEAN = "latency_mean_ms"
    LATENCY_MAX = "latency_max_ms"
    THROUGHPUT = "throughput_samples_per_s"
    SERVER_TARGET_QPS = "server_target_qps"
    SERVER_MAX_VALID_QPS = "server_max_valid_qps"
    LOADGEN_QUERY_COUNT = "loadgen_query_count"
    PEAK_HOST_MEM = "peak_host_mem_mb"
    PEAK_GPU_MEM = "peak_gpu_mem_mb"
    ENERGY_PER_INFERENCE = "energy_j_per_inference"
    INFERENCES_PER_J = "inferences_per_j"
    # accuracy, on each backend's Accuracy child (and the reference backend's on the parent)
    ACCURACY = "accuracy"
    F1_MACRO = "f1_macro"
    PRECISION_MACRO = "precision_macro"
    RECALL_MACRO = "recall_macro"
    MAE = "mae"
    RMSE = "rmse"
    R2 = "r2"
    AGREEMENT_TOP1 = "agreement_top1"
    AGREEMENT_MAX_ABS_DIFF = "agreement_max_abs_diff"
    ROBUSTNESS_MAX_DROP = "robustness_max_accuracy_drop"
    # the cross-check of each backend against the model's own framework, on every child of that backend
    CROSSCHECK_AGREEMENT = "crosscheck_agreement"
    CROSSCHECK_SAMPLES = "crosscheck_samples"
    CROSSCHECK_MAX_ABS_DIFF = "crosscheck_max_abs_diff"
    CROSSCHECK_SCORE = "crosscheck_score"
    CROSSCHECK_REFERENCE_SCORE = "crosscheck_reference_score"

    # token latencies (text-generation), in ms; LoadGen's own figures, except ITL (the SUT's clock)
    TTFT_P50 = "ttft_p50_ms"
    TTFT_P90 = "ttft_p90_ms"
    TTFT_P99 = "ttft_p99_ms"
    TTFT_MEAN = "ttft_mean_ms"
    TPOT_P50 = "tpot_p50_ms"
    TPOT_P90 = "tpot_p90_ms"
    TPOT_P99 = "tpot_p99_ms"
    TPOT_MEAN = "tpot_mean_ms"
    ITL_P50 = "itl_p50_ms"
    ITL_P90 = "itl_p90_ms"
    ITL_P99 = "itl_p99_ms"
    TTFT_BOUND = "ttft_bound_ms"
    TPOT_BOUND = "tpot_bound_ms"
    OUTPUT_TOKENS_PER_S = "output_tokens_per_s"
    GOODPUT = "goodput_requests_per_s"
    INPUT_TOKENS_MEAN = "input_tokens_mean"
    INPUT_TOKENS_P50 = "input_tokens_p50"
    INPUT_TOKENS_MAX = "input_tokens_max"
    OUTPUT_TOKENS_MEAN = "output_tokens_mean"
    OUTPUT_TOKENS_P50 = "output_tokens_p50"
    OUTPUT_TOKENS_MAX = "output_tokens_max"
    ENERGY_PER_OUTPUT_TOKEN = "energy_j_per_output_token"
    KV_CACHE_PER_TOKEN = "kv_cache_bytes_per_token"
    KV_CACHE_PEAK = "kv_cache_peak_mb"
    # accuracy of text models
    PERPLEXITY = "perplexity"
    EXACT_MATCH = "exact_match"
    ROUGE_1 = "rouge_1"
    ROUGE_2 = "rouge_2"
    ROUGE_L = "rouge_l"
    AGREEMENT_TOKENS = "agreement_tokens_equal"
    AGREEMENT_COSINE = "agreement_min_cosine"

    CLASSIFICATION = (ACCURACY, F1_MACRO, PRECISION_MACRO, RECALL_MACRO)
    REGRESSION = (R2, MAE, RMSE)
    GENERATION = (EXACT_MATCH, ROUGE_1, ROUGE_2, ROUGE_L, PERPLEXITY)
    TOKEN_LATENCIES = (TTFT_P50, TTFT_P90, TTFT_P99, TTFT_MEAN, TPOT_P50, TPOT_P90, TPOT_P99, TPOT_MEAN)
    #: lower is better among the quality metrics
    LOWER_IS_BETTER = (MAE, RMSE, PERPLEXITY)

    @staticmethod
    def latency(statistic):
        """`latency_<statistic>_ms` for p50, p90, p95, p99, mean or max."""
        return f"latency_{statistic}_ms"

    @staticmethod
    def token_latency(kind, statistic):
        """`ttft_<statistic>_ms` / `tpot_..._ms` / `itl_..._ms` for p50, p90, p99 or mean."""
        return f"{kind}_{statistic}_ms"

    @staticmethod
    def lm_eval(task, metric):
        """`lm_eval.<task>.<metric>` (lm-eval's `exact_match,strict` -> `exact_match.strict`)."""
        name, _, filter_name = metric.partition(",")
        suffix = "" if filter_name in ("", "none") else f".{filter_name}"
        return f"lm_eval.{task}.{name}{suffix}"

    @staticmethod
    def ci_low(metric):
        return f"{metric}_ci_low"

    @staticmethod
    def ci_high(metric):
        return f"{metric}_ci_high"


#: the percentiles LoadGen's detail log reports and the suite logs, as `latency_<p>_ms`
LATENCY_PERCENTILES = ("p50", "p90", "p95", "p99")
#: the percentiles of TTFT and TPOT the suite logs, as `ttft_<p>_ms` / `tpot_<p>_ms`
TOKEN_PERCENTILES = ("p50", "p90", "p99")
#: the prefix of every lm-evaluation-harness metric (Metrics.lm_eval)
LM_EVAL_PREFIX = "lm_eval."


class Artifacts:
    """Artifact paths (docs/mlflow-layout.md, "Artifacts"), relative to their run."""

    RESULTS = "results.json"  # parent
    CONFIG = "config.yaml"  # beside results.json in the local directory
    LATENCIES = "latencies.npy"  # scenario child
    LATENCY_HISTOGRAM = "latency_histogram.png"  # scenario child
    LOADGEN_DIR = "loadgen"  # scenario child: LoadGen's own logs
    LOADGEN_SUMMARY = "mlperf_log_summary.txt"
    LOADGEN_DETAIL = "mlperf_log_detail.txt"
    PREDICTIONS = "predictions.npz"  # accuracy child
    TOKEN_LATENCIES = "token_latencies.npz"  # token scenario child: per-query TTFT, TPOT, tokens
    GENERATIONS = "generations.jsonl"  # accuracy child of a text-generation backend
    LM_EVAL = "lm_eval.json"  # accuracy child: lm-evaluation-harness results as it returned them
    ROBUSTNESS = "robustness.json"  # accuracy child, optional
    REPORTS_DIR = "reports"  # `aif report` pages


class Params:
    """Params the readers look up by name (all params are the flattened config, `section.key`)."""

    BATCH_SIZE = "scenario.batch_size"
    SERVER_TARGET_QPS = "scenario.server_target_qps"
    MAX_NEW_TOKENS = "generation.max_new_tokens"
