"""The README's Python example runs as written (paths to the data folder aside) and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO, SHARED_DATA


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(shared_data, tmp_path):
    code = readme_python_block().replace("../shared/data", str(SHARED_DATA))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("Hello, I'm a language model,")
    assert re.search(r"trainable params: [\d,]+ \|\| all params", done.stdout)
    assert (tmp_path / "my-gpt2" / "modeling_gpt2scratch.py").is_file()
