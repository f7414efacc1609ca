"""The names a .wasm module imports and exports, read from its sections (no dependency), so a
benchmark can list them in Envoy's `capability_restriction_config`."""
import sys

def leb(b, i):
    r = s = 0
    while True:
        x = b[i]; i += 1; r |= (x & 0x7f) << s; s += 7
        if x < 0x80: return r, i
def sections(b):
    i = 8
    while i < len(b):
        sid = b[i]; size, i = leb(b, i + 1); yield sid, b[i:i+size]; i += size
def name(b, i):
    n, i = leb(b, i); return b[i:i+n].decode(), i + n
def imports(path):
    b = open(path, 'rb').read(); out = []
    for sid, body in sections(b):
        if sid == 2:
            n, i = leb(body, 0)
            for _ in range(n):
                m, i = name(body, i); f, i = name(body, i); kind = body[i]; i += 1
                if kind == 0: _, i = leb(body, i)
                elif kind == 1: i += 1; fl = body[i]; i += 1; _, i = leb(body, i); i = leb(body, i)[1] if fl & 1 else i
                elif kind == 2: fl = body[i]; i += 1; _, i = leb(body, i); i = leb(body, i)[1] if fl & 1 else i
                elif kind == 3: i += 2
                out.append((m, f))
    return out
def exports(path):
    b = open(path, 'rb').read(); out = []
    for sid, body in sections(b):
        if sid == 7:
            n, i = leb(body, 0)
            for _ in range(n):
                f, i = name(body, i); kind = body[i]; i += 1; _, i = leb(body, i); out.append(f)
    return out
if __name__ == "__main__":
    print(imports(sys.argv[1])); print(exports(sys.argv[1]))
