"""Issue 26, item 5: diff, trajectories and check fit the terminal as inspect's table does (one mechanism,
`fitted_grid`): in a pseudo-terminal of 60, 80 and 100 columns no line is wider than the terminal, and
every cell with a digit that the piped (full-width) grid prints is printed whole, in order."""

from __future__ import annotations

import json
import re
import sys

import pytest
from helpers import REPO, run
from rich.cells import cell_len
from test_output_formats import in_terminal

SAMPLES = REPO / "sample_models"
RUN = sorted(str(path) for path in (SAMPLES / "run").glob("step-*"))
CI = SAMPLES / "ci"


def _baseline_with_changes(folder) -> str:
    """The sample CI baseline with one std doubled, one mode changed and one layer removed: a check then
    prints a table of changes beside the table of observed weights."""
    document = json.loads((CI / "fancli.lock.json").read_text())
    document["layers"]["conv1.weight"]["std"] *= 2
    document["layers"]["fc1.weight"]["mode"] = "fan_out"
    del document["layers"]["fc3.bias"]
    path = folder / "changed.lock.json"
    path.write_text(json.dumps(document))
    return str(path)


COMMANDS = {
    "diff": lambda tmp: ["diff", str(SAMPLES / "tinynet_state_dict.pt"), str(SAMPLES / "tinynet_checkpoint.ckpt")],
    "trajectory": lambda tmp: ["inspect", *RUN, "--stats", "--all"],
    "check": lambda tmp: ["check", "--stats", "--config", str(CI / "fancli.yaml"), "--baseline",
                          _baseline_with_changes(tmp)],
}


def _numeric_cells(text: str) -> list[str]:
    """Every cell holding a digit in the body rows of a piped grid, in order (names left out: they wrap)."""
    cells = []
    for line in text.splitlines():
        if line.startswith("│"):
            cells += [cell.strip() for cell in line.strip("│").split("│")[1:] if re.search(r"\d", cell)]
    return cells


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
@pytest.mark.parametrize("width", (60, 80, 100))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_tables_fit_the_terminal_and_keep_every_number(command, width, tmp_path):
    args = COMMANDS[command](tmp_path)
    piped = run(*args).out
    cells = _numeric_cells(piped)
    assert len(cells) > 10  # the grid was there to compare with
    text = in_terminal(args, width)
    wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not wide, f"{len(wide)} lines wider than {width}: {wide[0]!r}"
    position = 0
    for cell in cells:
        found = re.compile(rf"(?<![\w.,×…+-]){re.escape(cell)}(?![\w×…]|[.,]\d)").search(text, position)
        assert found, f"{cell!r} cut or missing after {text[position:position + 200]!r}"
        position = found.end()

