"""The README's Quickstart stays true: two commands, the main job and the tests, run by CI."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_has_exactly_the_two_commands():
    install_run, install_test = quickstart_commands()
    assert install_run.startswith("pip install .") and install_run.endswith("lopt-trace record --task mnist")
    assert install_test.startswith("pip install") and "[test]" in install_test and "pytest" in install_test


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"test_cmd=\$\((.*)\)\n", script).group(1)
    out = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == quickstart_commands()[1]
