"""Subcommands loaded when they run (`slideflow/cli/lazy.py`) and the reader-thread option's
one name (`--num-threads` / `num_threads=`, old spellings accepted with one warning)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from typer.testing import CliRunner

from slideflow.cli import app
from slideflow.cli.lazy import LAZY, load_command
from slideflow.errors import InvalidArgumentError
from slideflow.validate import renamed

from conftest import CMU


@pytest.mark.parametrize("name", sorted(LAZY))
def test_lazy_help_line_is_the_commands_own(name):
    cmd = load_command(name)
    assert cmd.name == name
    assert " ".join(cmd.help.split("\n\n")[0].split()) == LAZY[name][1]


def test_help_lists_every_command_without_importing_the_lazy_ones():
    code = ("import sys; from slideflow.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "mods = sorted({f'slideflow.cli.{m}' for m, _ in __import__('slideflow.cli.lazy', "
            "fromlist=['LAZY']).LAZY.values()} & set(sys.modules))\n"
            "print('LOADED', mods)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout
    listed = [ln.split()[0] for ln in out.stdout.split("Commands:")[1].splitlines()
              if ln.startswith("  ")]
    assert listed == ["info", "preview", "features", "extract-tiles", *LAZY]


def test_a_lazy_command_runs_and_shows_its_usage_errors():
    res = CliRunner().invoke(app, ["extractors", "--json"])
    assert res.exit_code == 0 and '"name"' in res.output
    res = CliRunner().invoke(app, ["mil", "train", "--no-such-option"])
    assert res.exit_code == 2 and "No such option" in res.output


def test_renamed_option_warns_once_and_refuses_two_values():
    with pytest.warns(DeprecationWarning, match="num_workers is the old name of num_threads"):
        assert renamed(None, 4, "num_threads", "num_workers") == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed(3, None, "num_threads", "num_workers") == 3
    with pytest.raises(InvalidArgumentError, match="give num_threads only"):
        renamed(3, 4, "num_threads", "num_workers")


def _main(capsys, *args: str) -> tuple[int, str]:
    from slideflow.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, flag", [(["--num-threads", "0"], "--num-threads"),
                                        (["--workers", "0"], "--workers")])
def test_thread_option_checked_before_the_model_under_the_name_given(args, flag, monkeypatch,
                                                                     capsys, tmp_path):
    import slideflow.model

    monkeypatch.setattr(slideflow.model, "build_feature_extractor",
                        lambda *a, **k: pytest.fail("model built"))
    code, err = _main(capsys, "features", str(CMU), "-o", str(tmp_path / "o"), *args)
    assert code == 2 and err.startswith(f"error: {flag} must be an integer >= 1"), err


class _Stop(Exception):
    pass


def test_old_thread_option_still_runs_with_one_warning(monkeypatch, capsys, tmp_path, caplog):
    import slideflow.model

    def build(*a, **k):
        raise _Stop  # the options were parsed: stop before a model is built

    monkeypatch.setattr(slideflow.model, "build_feature_extractor", build)
    code, err = _main(capsys, "features", str(CMU), "-o", str(tmp_path / "o"), "--workers", "2",
                      "--num-threads", "3")
    assert code == 2 and "give --num-threads only" in err
    with caplog.at_level("WARNING", logger="slideflow"), pytest.raises(_Stop):
        _main(capsys, "features", str(CMU), "-o", str(tmp_path / "o"), "--workers", "2")
    assert [r.getMessage() for r in caplog.records if "--workers" in r.getMessage()] == [
        "--workers is the old name of --num-threads (same meaning); use --num-threads"]
