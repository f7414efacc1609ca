"""Reads the allocation sizes out of Envoy's `/heap_dump` (tcmalloc's sampled heap profile, a
gzipped pprof protobuf), with no protobuf library: the footprint runs use it to show the one big
allocation behind most of meshguard's memory, V8's serialized copy of the compiled module.

Why that copy exists: proxy-wasm's V8 runtime keeps `shared_module_ = module_->share()` for the
plugin's life to clone the module into each worker's VM, and V8's Wasm C API implements
`share()` as `serialize()` (machine code and module bytes, in one malloc'd vector).

tcmalloc samples an allocation of n bytes with probability about 1 - exp(-n / 2 MiB), so an
allocation of a few MiB is seen in most dumps but not all; callers take the largest over several
starts."""

import gzip


def _varint(data, at):
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _fields(data):
    """(field number, wire type, value) of each field of a protobuf message."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {at}")
        yield number, wire, value


def allocation_sizes(dump):
    """The size of each sampled allocation in a `/heap_dump` body (its `bytes` label)."""
    data = gzip.decompress(dump) if dump[:2] == b"\x1f\x8b" else dump
    # Profile: sample = 2, string_table = 6; Sample: label = 3; Label: key = 1, num = 3.
    strings = [value.decode(errors="replace") for number, _, value in _fields(data) if number == 6]
    sizes = []
    for number, _, sample in _fields(data):
        if number != 2:
            continue
        for field, _, label in _fields(sample):
            if field != 3:
                continue
            parts = {key: value for key, _, value in _fields(label)}
            key = parts.get(1, 0)
            if key < len(strings) and strings[key] == "bytes" and 3 in parts:
                sizes.append(parts[3])
    return sizes
