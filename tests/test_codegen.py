"""The compiled forward kernels keep their vectors in registers at every ISA level.

GCC keeps a vector wider than the target's registers on the stack, so every operation on
it goes through memory.  Until each ISA level had its own vector width, the AVX2 and
baseline kernels were the AVX-512 source (64-byte vectors) compiled for the narrower
ISA and ran 10-30x slower on CPUs without AVX-512 (LSTM B=16 T=100 H=256: 435 ms instead
of 15 ms), unnoticed while every benchmark machine had AVX-512.  No timing here: the
test reads the machine code of the hot functions (nm + objdump from binutils, which a
machine that builds fastrnn has) and counts the vector arithmetic that takes a stack
operand: about 56% of the AVX2 step's FMAs did before, 10% do now.
"""
import re
import shutil
import subprocess

import pytest

from fastrnn import _kernels

ARITH = re.compile(r"\s(v?fn?madd\w*|v?mulp[sd]|v?addp[sd])\s")
STACK = re.compile(r"\((%rsp|%rbp)[,)]")


def _functions():
    """{symbol: (start, end)} of the extension's code symbols, in address order."""
    so = _kernels.__file__
    out = subprocess.run(["nm", "-n", so], capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            syms.append((int(parts[0], 16), parts[2]))
    return so, {name: (a, syms[i + 1][0] if i + 1 < len(syms) else a)
                for i, (a, name) in enumerate(syms)}


@pytest.fixture(scope="module")
def code():
    if shutil.which("nm") is None or shutil.which("objdump") is None:
        pytest.skip("binutils (nm, objdump) not installed")
    return _functions()


@pytest.mark.parametrize("level", [0, 1, 2])
@pytest.mark.parametrize("dtype", ["f", "d"])
@pytest.mark.parametrize("fn", ["step", "proj"])
def test_hot_loops_do_not_spill(code, fn, dtype, level):
    so, funcs = code
    want = f"{fn}_{dtype}_l{level}"
    # the function itself, else a clone of it (.isra, .constprop); never its .cold
    # part (GCC's rarely taken branches, laid out apart)
    names = sorted((n for n in funcs if (n == want or n.startswith(want + "."))
                    and not n.endswith(".cold")), key=lambda n: n != want)
    if not names:
        pytest.skip(f"{want} is not in this build (no per-ISA clones off x86-64)")
    start, end = funcs[names[0]]
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                          f"--stop-address={end:#x}", so], capture_output=True, text=True,
                         check=True).stdout
    arith = [line for line in asm.splitlines() if ARITH.search(line)]
    spilled = [line for line in arith if STACK.search(line)]
    assert len(arith) > 100, (want, len(arith))       # the function was found and read
    assert len(spilled) <= 0.25 * len(arith), (want, len(spilled), len(arith))
