"""The example config is generated from the traits' help (`aif config generate`), never edited by hand."""

from pathlib import Path

from click.testing import CliRunner

from aifactory.hub.cli import main
from aifactory.hub.platform.config import AIFPlatform, load_config_file
from aifactory.hub.platform.example import example_config

EXAMPLE = Path(__file__).resolve().parents[1] / "hub" / "config" / "aif_config.example.py"


def test_committed_example_is_what_aif_config_generate_writes(tmp_path):
    result = CliRunner().invoke(main, ["config", "generate", "--output", str(tmp_path / "aif_config.py")])
    assert result.exit_code == 0, result.output
    generated = (tmp_path / "aif_config.py").read_text()
    assert generated == example_config()
    assert EXAMPLE.read_text() == generated, (
        "hub/config/aif_config.example.py is out of date: run "
        "`aif config generate -o hub/config/aif_config.example.py`")


def test_example_documents_every_platform_setting_and_loads_as_a_config():
    text = example_config()
    for name, trait in AIFPlatform.class_own_traits(config=True).items():
        assert f"# c.AIFPlatform.{name} = " in text
        assert " ".join(trait.help.split()[:6]) in " ".join(text.replace("#  ", "").split())
    assert "c.AIFSlurmSpawner.profiles = [{'name': 'gpu-1'," in text
    assert load_config_file(EXAMPLE) == {}  # everything commented out: the defaults
