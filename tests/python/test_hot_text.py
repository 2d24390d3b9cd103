"""The release binaries place the code a broker runs ahead of the rest (link/hot-text.ld,
written by link/order.py, passed to the linker by build.rs), so that a started broker
maps a small part of its code. These tests check the layout in the x86-64 and ARM
binaries, that the running broker really leaves most of its code unmapped, and the
symbol patterns the layout is written in."""

import re
import subprocess
import sys

import pytest

from conftest import BIN, ROOT, Broker
from test_cross import TARGETS, cross_binary

sys.path.insert(0, str(ROOT / "link"))
from mangling import stable_pattern  # noqa: E402

# The script places about 1 MiB of x86-64 code. Far less means its patterns no longer
# match the build: symbols not in v0 mangling (RUSTFLAGS that replace
# .cargo/config.toml's), or a script left far behind by the code.
LEAST_HOT_BYTES = 512 * 1024


def section_sizes(binary):
    out = subprocess.run(["readelf", "-SW", str(binary)], capture_output=True, text=True,
                         check=True).stdout
    # "  [15] .text.hot  PROGBITS  00000000000d7bd0 0d6bd0 1006e0 00  AX ..."
    row = re.compile(r"^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s")
    return {m.group(1): int(m.group(2), 16) for m in map(row.match, out.splitlines()) if m}


def check_layout(binary):
    sizes = section_sizes(binary)
    assert ".text.hot" in sizes, f"{binary} was linked without link/hot-text.ld"
    assert sizes[".text.hot"] >= LEAST_HOT_BYTES, (
        f"{binary}: only {sizes['.text.hot']} bytes matched link/hot-text.ld's patterns")


def test_the_release_binary_places_the_code_it_runs_first():
    check_layout(BIN)


@pytest.mark.parametrize("board", sorted(TARGETS))
def test_the_arm_binaries_place_the_code_they_run_first(board):
    binary, _ = cross_binary(board)
    check_layout(binary)


def resident_code(pid, binary):
    """(resident, mapped) bytes of the binary's executable mapping."""
    resident = mapped = 0
    current = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
                current = fields if fields[-1] == binary and "x" in fields[1] else None
                if current:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    mapped += end - start
            elif current and fields[0] == "Rss:":
                resident += int(fields[1]) * 1024
    return resident, mapped


def test_a_started_broker_maps_under_half_of_its_code(tmp_path):
    # Before the layout, start-up touched 40 of the 52 64-KiB blocks of code.
    b = Broker(tmp_path)
    try:
        resident, mapped = resident_code(b.proc.pid, str(BIN))
        assert mapped > 0
        assert resident < mapped / 2, f"{resident} of {mapped} bytes of code are resident"
    finally:
        b.stop()


# Real names from two builds of one function: its crate hashes and back-references
# differ, and the pattern for both is the same.
ACCEPT_ONE = "_RNCNvMs_NtNtCs8OqMx9Mn63E_4tern6server8listenerNtB4_8Listener6accept0B8_"
ACCEPT_TWO = "_RNCNvMs_NtNtCskQ6vHJ6B5Gcx_4tern6server8listenerNtB5_8Listener6accept0B9_"


def test_patterns_hide_crate_hashes_and_back_references():
    pattern = "_RNCNvMs_NtNtCs*_4tern6server8listenerNtB*_8Listener6accept0B*_"
    assert stable_pattern(ACCEPT_ONE) == pattern
    assert stable_pattern(ACCEPT_TWO) == pattern


def test_patterns_keep_type_arguments_apart():
    grow = "_RNvMs3_NtCslNYArtu3iFV_5alloc7raw_vecINtB5_6RawVec{}E8grow_oneB{}_"
    listener = stable_pattern(grow.format("NtNtCskQ6vHJ6B5Gc_4tern6config8Listener", "Q"))
    byte = stable_pattern(grow.format("h", "7"))
    assert listener == ("_RNvMs3_NtCs*_5alloc7raw_vecINtB*_6RawVecNtNtCs*_4tern6config"
                        "8ListenerE8grow_oneB*_")
    assert byte == "_RNvMs3_NtCs*_5alloc7raw_vecINtB*_6RawVechE8grow_oneB*_"


def test_patterns_read_closures_consts_and_clones():
    # Closure disambiguators (s_0, 0), an array's length and a const argument (j20_)
    # are stable and kept.
    closure = ("_RINvNtCs245TsB6IYdC_6webpki3der6nesteduNCNCNvMNtB4_4certNtBI_4Cert"
               "10from_inputs_00EB4_")
    assert stable_pattern(closure) == (
        "_RINvNtCs*_6webpki3der6nesteduNCNCNvMNtB*_4certNtB*_4Cert10from_inputs_00EB*_")
    array = "_RINvCsgEmfK2I1SDS_4core4swapAhj20_EB2_"
    assert stable_pattern(array) == "_RINvCs*_4core4swapAhj20_EB*_"
    const = "_RINvCsgEmfK2I1SDS_4core5splitKj20_EB2_"
    assert stable_pattern(const) == "_RINvCs*_4core5splitKj20_EB*_"
    # An LLVM clone's number changes from build to build.
    assert stable_pattern(ACCEPT_ONE + ".llvm.1234") == stable_pattern(ACCEPT_ONE) + "*"


def test_a_name_the_walk_cannot_read_becomes_a_prefix():
    assert stable_pattern("_RNvCs1234_4tern!") == "_RNvCs*_4tern*"
