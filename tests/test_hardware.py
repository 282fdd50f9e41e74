"""Devices ganforge refuses with a message rather than half-running on."""

from click.testing import CliRunner

from ganforge.cli import main


def test_apple_mps_is_refused_in_one_line():
    for command in (["bench", "--model", "cdcgan", "--resolution", "16", "--device", "mps"],
                    ["train", "--plan", "--resolution", "16", "--device", "mps"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1, result.output
        assert "--device mps: Apple GPUs (MPS) are not supported" in result.output and "use --device cpu" in result.output
        assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
