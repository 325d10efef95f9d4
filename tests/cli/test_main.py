"""The command tree: global flags before or after the command (README shows `facewatch run --config FILE`)."""

from __future__ import annotations

import pytest
import yaml

from worker.cli.main import build_parser, main


@pytest.mark.parametrize("where", ["before", "after"])
def test_config_and_log_level_are_taken_before_or_after_the_command(tmp_path, capsys, where):
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump({"pipeline": {"lanes": 3}}))
    flags = ["--config", str(config), "--log-level", "ERROR"]
    argv = [*flags, "config", "show"] if where == "before" else ["config", "show", *flags]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["pipeline"]["lanes"] == 3


def test_a_flag_after_the_command_does_not_reset_one_given_before():
    args = build_parser().parse_args(["--config", "a.yaml", "--log-level", "DEBUG", "config", "show"])
    assert args.config == "a.yaml" and args.log_level == "DEBUG"
    args = build_parser().parse_args(["--config", "a.yaml", "config", "show", "--config", "b.yaml"])
    assert args.config == "b.yaml" and args.log_level == "WARNING"


def test_every_command_accepts_the_global_flags():
    parser = build_parser()
    for argv in (["run"], ["demo"], ["watchlist", "list"], ["eval", "detect", "--dataset", "d"], ["bench", "embed"]):
        args = parser.parse_args([*argv, "--config", "x.yaml"])
        assert args.config == "x.yaml", argv
