"""Static checks of CUDA build products: which SASS architectures a binary holds, and ptxas' per-kernel
register / spill report. No GPU and no CUDA binary utilities are needed.

    python csrc/cuda/cuda_inspect.py sass PATH.so          # the sm_XX of every cubin (and PTX) embedded
    python csrc/cuda/cuda_inspect.py ptxas LOG [LOG ...]   # table of registers / spills per kernel and arch

SASS: the ELF's ``.nv_fatbin`` section holds one or more fatbins, each a 16-byte header
(magic 0xBA55ED50, version, header size, payload size) followed by entries whose headers give the kind
(1 = PTX, 2 = ELF cubin), the header size, the payload size and, at byte 28, the architecture (e.g. 80).
Only the headers are read, so compressed payloads do not matter.

ptxas: the output of ``nvcc -Xptxas -v`` (or ``--resource-usage``), as collected at build time into
``_cuda.ptxas.log`` beside the module.
"""

from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX = 1
KIND_ELF = 2


@dataclass(frozen=True)
class FatbinEntry:
    kind: str  # "sass" or "ptx"
    arch: int  # e.g. 80 for sm_80 / compute_80
    size: int


def elf_section(data: bytes, name: str) -> bytes | None:
    """The bytes of ELF64 little-endian section ``name``, or None if the file has no such section."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("only 64-bit little-endian ELF is supported")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        sh_name, sh_type = struct.unpack_from("<II", data, off)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, off + 0x18)
        sections.append((sh_name, sh_type, sh_offset, sh_size))
    _, _, str_off, str_size = sections[shstrndx]
    strtab = data[str_off:str_off + str_size]
    for sh_name, sh_type, sh_offset, sh_size in sections:
        end = strtab.index(b"\0", sh_name)
        if strtab[sh_name:end].decode() == name:
            if sh_type == 8:  # SHT_NOBITS
                return b""
            return data[sh_offset:sh_offset + sh_size]
    return None


def needed_libraries(path: str | Path) -> list[str]:
    """The DT_NEEDED entries (shared libraries it links against) of an ELF64 shared object."""
    data = Path(path).read_bytes()
    dynamic = elf_section(data, ".dynamic") or b""
    dynstr = elf_section(data, ".dynstr") or b""
    needed = []
    for off in range(0, len(dynamic) - 15, 16):
        tag, val = struct.unpack_from("<qQ", dynamic, off)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            needed.append(dynstr[val:dynstr.index(b"\0", val)].decode())
    return needed


def fatbin_entries(blob: bytes) -> list[FatbinEntry]:
    """Parse every fatbin in ``blob`` (a .nv_fatbin section or a .fatbin file)."""
    entries: list[FatbinEntry] = []
    pos = 0
    while pos + 16 <= len(blob):
        magic, _version, header_size, payload = struct.unpack_from("<IHHQ", blob, pos)
        if magic != FATBIN_MAGIC:
            # fatbins are 8-byte aligned inside the section; skip padding
            pos += 8
            continue
        entry = pos + header_size
        end = entry + payload
        if end > len(blob):
            raise ValueError(f"fatbin at offset {pos} overruns its section ({end} > {len(blob)})")
        while entry + 32 <= end:
            kind, _ver, ehdr_size, esize = struct.unpack_from("<HHIQ", blob, entry)
            arch, = struct.unpack_from("<I", blob, entry + 28)
            if kind not in (KIND_PTX, KIND_ELF) or ehdr_size < 32:
                raise ValueError(f"unknown fatbin entry (kind {kind}, header {ehdr_size}) at offset {entry}")
            entries.append(FatbinEntry("sass" if kind == KIND_ELF else "ptx", arch, esize))
            entry += ehdr_size + esize
        pos = end
    return entries


def embedded_archs(path: str | Path) -> dict[str, set[int]]:
    """{"sass": {75, 80, ...}, "ptx": {90}} for the cubins / PTX embedded in a shared object."""
    data = Path(path).read_bytes()
    section = elf_section(data, ".nv_fatbin")
    if section is None:
        raise ValueError(f"{path} has no .nv_fatbin section (no device code)")
    result: dict[str, set[int]] = {"sass": set(), "ptx": set()}
    for e in fatbin_entries(section):
        result[e.kind].add(e.arch)
    return result


@dataclass
class KernelUsage:
    function: str  # mangled name
    arch: int
    registers: int | None = None
    stack: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    source: str = ""  # which log / object


_COMPILING = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)[a-z]?'")
_PROPS = re.compile(r"Function properties for (\S+)")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_OBJECT = re.compile(r"^## (.+)$")


def parse_ptxas(text: str, source: str = "") -> list[KernelUsage]:
    """Every function's usage from ptxas -v output. Device functions that were not inlined appear with
    the arch of the entry compiled at that point."""
    found: dict[tuple[str, int, str], KernelUsage] = {}
    current: KernelUsage | None = None
    arch = 0
    props_for: str | None = None
    for line in text.splitlines():
        m = _OBJECT.match(line)
        if m:
            source = m.group(1)
            continue
        m = _COMPILING.search(line)
        if m:
            arch = int(m.group(2))
            key = (m.group(1), arch, source)
            current = found.setdefault(key, KernelUsage(m.group(1), arch, source=source))
            continue
        m = _PROPS.search(line)
        if m:
            props_for = m.group(1)
            continue
        m = _SPILLS.search(line)
        if m and props_for is not None:
            key = (props_for, arch, source)
            usage = found.setdefault(key, KernelUsage(props_for, arch, source=source))
            usage.stack, usage.spill_stores, usage.spill_loads = (int(x) for x in m.groups())
            props_for = None
            continue
        m = _USED.search(line)
        if m and current is not None:
            current.registers = int(m.group(1))
            current = None
    return list(found.values())


def demangle_short(name: str) -> str:
    """A readable short form of a mangled kernel name: 'attention_mma_kernel<__half,64,64>'."""
    kernel = None
    for m in re.finditer(r"_kernelI", name):
        end = m.start() + len("_kernel")
        for length in range(len("_kernel") + 1, min(end, 120)):
            begin = end - length
            digits = str(length)
            if name[begin - len(digits):begin] == digits and (name[begin].isalpha() or name[begin] == "_"):
                kernel, args = name[begin:end], name[end + 1:]
                break
    if kernel is None:
        return name
    parts = []
    for tok in re.finditer(r"Li(\d+)E|Lb([01])E|(13__nv_bfloat16)|(6__half)|(?<![A-Za-z0-9_])f", args):
        if tok.group(1):
            parts.append(tok.group(1))
        elif tok.group(2):
            parts.append("true" if tok.group(2) == "1" else "false")
        elif tok.group(3):
            parts.append("bf16")
        elif tok.group(4):
            parts.append("f16")
        else:
            parts.append("f32")
    return f"{kernel}<{','.join(parts)}>"


def table(usages: list[KernelUsage]) -> str:
    rows = sorted(usages, key=lambda u: (demangle_short(u.function), u.arch))
    lines = [f"{'kernel':<48} {'arch':>5} {'regs':>5} {'stack':>6} {'spill st':>9} {'spill ld':>9}"]
    for u in rows:
        lines.append(
            f"{demangle_short(u.function):<48} sm_{u.arch:<2} {u.registers if u.registers is not None else '-':>5} "
            f"{u.stack if u.stack is not None else '-':>6} {u.spill_stores:>9} {u.spill_loads:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "sass":
        for path in argv[1:]:
            archs = embedded_archs(path)
            print(f"{path}: sass {sorted(archs['sass'])} ptx {sorted(archs['ptx'])}")
        return 0
    if len(argv) >= 2 and argv[0] == "ptxas":
        usages = []
        for path in argv[1:]:
            usages += parse_ptxas(Path(path).read_text(), source=Path(path).name)
        print(table(usages))
        spilled = [u for u in usages if u.spill_stores or u.spill_loads]
        print(f"{len(usages)} kernel/arch pairs, {len(spilled)} with spills, "
              f"max {max((u.registers or 0) for u in usages) if usages else 0} registers")
        return 1 if spilled else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
