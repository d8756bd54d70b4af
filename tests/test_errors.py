from __future__ import annotations

from m2pt_deploy.errors import M2ptError, first_line


def test_first_line_skips_blank_lines_and_falls_back_to_the_type() -> None:
    assert first_line(RuntimeError("\n  bad node 3  \ndetails")) == "bad node 3"
    assert first_line(ValueError("")) == "ValueError"


def test_error_names_its_file() -> None:
    assert str(M2ptError("no such file", "a/b.pth")) == "a/b.pth: no such file"
    assert str(M2ptError("bad flag")) == "bad flag"
