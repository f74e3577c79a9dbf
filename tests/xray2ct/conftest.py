"""What the xray2ct command-line tests share."""

import pytest

from workbench.cli import main


@pytest.fixture
def cli_refuses(capsys):
    """``cli_refuses(out, *argv, match=...)``: ``workbench ARGV`` exits 2 with one line naming ``match``, no ``out``."""

    def check(out, *argv, match):
        capsys.readouterr()
        assert main(["--quiet", *map(str, argv)]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()

    return check
