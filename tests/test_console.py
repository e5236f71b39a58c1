"""What commands print while they work: one table layout and one progress bar, on standard error."""
import importlib

import pytest

from happysad import console


def test_columns_are_padded_to_their_widest_cell_and_lines_end_clean():
    text = console.table([("name", "n", ""), ("mobilenet+expression", "0.412", "<- chosen"), ("v2", "1", "")],
                         indent="  ")
    assert text.splitlines() == ["  name                  n",
                                 "  mobilenet+expression  0.412  <- chosen",
                                 "  v2                    1"]


def test_a_bar_shows_only_from_its_threshold_and_only_on_standard_error(capsys):
    with console.progress(3, "image", shown_from=4) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
    with console.progress(3, "image", shown_from=3) as bar:
        bar.update(3)
    captured = capsys.readouterr()
    assert "3/3" in captured.err and "image" in captured.err and captured.out == ""


@pytest.mark.parametrize("command, argv", [
    ("train", ["--arch", "auot"]), ("predict", []), ("clean", ["data", "--min-size", "big"]),
    ("review", ["data", "--top", "0"]), ("evaluate", ["--store-threshold", "2"]), ("runs", ["--bogus"]),
])
def test_an_option_error_is_one_line_without_the_usage(command, argv, capsys):
    module = importlib.import_module(f"happysad.{command}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage:" not in err
    assert err.count("\n") == 1 and err.startswith(f"python -m happysad.{command}: error: ")
    assert err.endswith("(--help lists the options)\n")
