"""The README shows what the code has: every setting, and the standalone example as it is."""

from __future__ import annotations

from pathlib import Path

from pulse_celery.config import AppConfig
from pulse_celery.pulse.settings import describe

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_configuration_table_lists_every_setting():
    table = README[README.index("## Configuration") :]
    missing = [info.name for info in describe(AppConfig) if f"| `pulse_{info.name}` |" not in table]
    assert missing == []


def test_the_standalone_example_in_the_readme_is_the_one_the_integration_test_runs():
    example = (ROOT / "examples" / "standalone" / "watch.py").read_text()
    watch = example[example.index("def watch(") : example.index("\n\n\ndef main(")]
    main = example[example.index("def main(") : example.index("\n\n\nif __name__")]
    assert watch in README and main in README


def test_the_fake_connection_example_of_testing_your_app_runs(monkeypatch):
    section = README[README.index("## Testing your app") :]
    start = section.index("```python\n") + len("```python\n")
    code = section[start : section.index("```", start)]
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "standalone"))
    exec(compile(code, "README.md", "exec"), {})
