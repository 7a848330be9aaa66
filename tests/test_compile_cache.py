"""The persistent compilation cache: where it lives, how it is turned off, and that a second
process loads what the first compiled instead of compiling it again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lopt_trace import compile_cache
from lopt_trace.compile_cache import ENV, cache_dir

_SCRIPT = """
import sys, jax, jax.numpy as jnp
from lopt_trace import compile_cache
compile_cache.MIN_COMPILE_SECONDS = 0.0
print(compile_cache.enable())
@jax.jit
def f(x):
    return jax.lax.fori_loop(0, 10, lambda i, c: jnp.tanh(c @ c.T) @ c, x)
print(float(f(jnp.eye(8) * 0.5).sum()))
"""


def test_cache_folder_from_the_environment(tmp_path):
    assert cache_dir({ENV: str(tmp_path / "c")}) == tmp_path / "c"
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "lopt-trace" / "jax"
    for off in ("off", "0", "false", "no", ""):
        assert cache_dir({ENV: off}) is None
    assert cache_dir({"HOME": "/nowhere"}) is not None  # the default: ~/.cache/lopt-trace/jax


def test_unwritable_cache_folder_is_a_note_not_an_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert compile_cache.enable(blocker / "cache") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compilation cache off" in err and ENV in err


def test_second_process_loads_instead_of_compiling(tmp_path):
    folder = tmp_path / "cache"
    env = {**os.environ, ENV: str(folder)}

    def run():
        out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        return out.stdout.split()

    first = run()
    assert first[0] == str(folder)
    entries = sorted(p.name for p in folder.iterdir())
    assert any(name.startswith("jit_f-") for name in entries)
    second = run()
    assert second == first                                   # same result, from the cached executable
    assert sorted(p.name for p in folder.iterdir()) == entries  # nothing new was compiled and stored
