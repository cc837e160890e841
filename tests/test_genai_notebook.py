"""Notebook side of text models: `%%aif_bench` saves a Hugging Face model the cell defines, and the
panel lists model directories and runs the transformers backend."""

from pathlib import Path

from aifactory.extensions.panels import BenchmarkPanel, model_dirs_under


def test_aif_bench_saves_a_hugging_face_model_with_its_tokenizer(reference_lm, tmp_path, monkeypatch):
    from IPython.testing.globalipapp import get_ipython

    monkeypatch.chdir(tmp_path)
    shell = get_ipython()
    shell.run_line_magic("load_ext", "aifactory.extensions")
    cell = (f"from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({str(reference_lm['lm'])!r}, local_files_only=True)\n"
            f"lm = AutoModelForCausalLM.from_pretrained({str(reference_lm['lm'])!r}, local_files_only=True)\n")
    shell.run_cell_magic("aif_bench", f"--data {reference_lm['prompts']} --no-wait", cell)
    panel = shell.user_ns["aif_bench_panel"]
    try:
        saved = Path(panel.model.value)
        assert saved == tmp_path / "aif-models" / "lm" and (saved / "config.json").exists()
        assert (saved / "tokenizer.json").exists() and panel.backends.value == ("transformers",)
        assert "aif-error" not in panel.message.value
        config = panel.config()
        assert config.backends[0].kind == "transformers" and config.data.source == str(reference_lm["prompts"])
        assert model_dirs_under(tmp_path) == ["aif-models/lm"]
    finally:
        if panel.job is not None:
            panel.job.cancel()
            panel.job.wait(120)


def test_the_panel_runs_a_language_model_and_shows_token_figures(reference_lm, tmp_path):
    panel = BenchmarkPanel(model=str(reference_lm["lm"]), data=str(reference_lm["prompts"]), backends=("transformers",),
                           device="cpu", scenarios=("SingleStream",), home=tmp_path, tracking_uri="",
                           scenario={"min_duration_s": 0.2, "min_query_count": 8}, generation={"max_new_tokens": 8})
    panel.overrides["data"] = {"limit": 8}  # `data` itself is the panel's dataset field
    panel.run(wait=True, timeout=300)
    assert panel.job.state.status == "FINISHED", panel.message.value
    assert "ttft_p50_ms" in panel.table.value and "exact_match" in panel.table.value
