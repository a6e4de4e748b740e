"""The CLI says when Numba compiles (a first run) and stays silent when nothing compiles."""

from __future__ import annotations

import io

from numba import njit

from npmobilenet import cli
from npmobilenet.compile_notice import FIRST_RUN_SECONDS, announce_compilation


def test_a_real_compilation_is_announced_counted_and_summed_up():
    @njit
    def add_one(x):
        return x + 1

    buf = io.StringIO()
    with announce_compilation(stream=buf) as progress:
        assert add_one(1) == 2
    lines = buf.getvalue().splitlines()
    assert lines[0] == (f"npmobilenet: compiling kernels, first run only, about "
                        f"{FIRST_RUN_SECONDS} s (cached for later runs)")  # fmt: skip
    assert progress.compiled == 1 and progress.seconds > 0
    assert lines[-1].startswith("npmobilenet: compiled 1 kernels in ")

    quiet = io.StringIO()
    with announce_compilation(stream=quiet) as progress:
        assert add_one(2) == 3  # compiled already: nothing to say
    assert quiet.getvalue() == "" and progress.compiled == 0


def test_a_kernel_compiled_inside_another_counts_once():
    @njit
    def inner(x):
        return x * 2

    @njit
    def outer(x):
        return inner(x) + 1

    buf = io.StringIO()
    with announce_compilation(stream=buf) as progress:
        assert outer(3) == 7
    assert progress.compiled == 1, buf.getvalue()


def test_cli_command_that_compiles_nothing_prints_no_notice(capsys):
    assert cli.main(["exercise", "list"]) == 0
    assert "compiling" not in capsys.readouterr().err
