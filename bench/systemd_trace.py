# What a boot asked the virtio-fs server for (systemdbench.sh): opcodes of
# ocivm fsd's trace next to the C virtiofsd's debug log, with the errors each
# got, and per opcode the paths asked most (ocivm's trace) and the xattr
# names (the C virtiofsd's log: ocivm's trace does not record them).
#   systemd_trace.py TRACE.jsonl [VIRTIOFSD_DEBUG.log]
import collections, errno, json, re, sys

def ename(e):
    e = abs(int(e))
    return errno.errorcode.get(e, str(e)) if e else "ok"

ops = collections.Counter()
errs = collections.defaultdict(collections.Counter)
paths = collections.defaultdict(collections.Counter)
with open(sys.argv[1], errors="replace") as f:
    for line in f:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        op = r.get("op", "?")
        ops[op] += 1
        err = r.get("error", 0)
        if err:
            errs[op][ename(err)] += 1
        paths[op][(r.get("path") or "?", ename(err))] += 1

vops = collections.Counter()
verrs = collections.defaultdict(collections.Counter)
xnames = collections.Counter()
if len(sys.argv) > 2:
    op_of = {}
    start = re.compile(r"unique: (\d+), opcode: (\w+) \(\d+\)")
    done = re.compile(r" {3}unique: (\d+), error: (-?\d+)")
    getx = re.compile(r"lo_getxattr\(ino=\d+, name=(\S+) size")
    try:
        with open(sys.argv[2], errors="replace") as f:
            for line in f:
                m = start.search(line)
                if m:
                    op_of[m.group(1)] = m.group(2)
                    vops[m.group(2)] += 1
                    continue
                m = done.search(line)
                if m:
                    verrs[op_of.get(m.group(1), "?")][ename(m.group(2))] += 1
                    continue
                m = getx.search(line)
                if m:
                    xnames[m.group(1)] += 1
    except OSError:
        pass

def fmt_errs(c):
    return ", ".join(f"{k} {n}" for k, n in c.most_common(3)) or "-"

total, vtotal = sum(ops.values()), sum(vops.values())
print(f"{'opcode':<14}{'ocivm':>9}{'share':>8}  {'ocivm errors':<28}{'virtiofsd':>10}  virtiofsd errors")
for op in sorted(set(ops) | set(vops), key=lambda o: (-ops[o], -vops[o])):
    share = f"{100.0 * ops[op] / total:.1f}%" if total else "-"
    print(f"{op:<14}{ops[op]:>9}{share:>8}  {fmt_errs(errs[op]):<28}{vops[op]:>10}  {fmt_errs(verrs[op])}")
print(f"{'total':<14}{total:>9}{'':>8}  {'':<28}{vtotal:>10}")

print("\nper opcode (ocivm's trace), the paths asked most, with the reply:")
for op, n in ops.most_common(10):
    top = ", ".join(f"{p} [{e}] {c}" for (p, e), c in paths[op].most_common(6))
    print(f"  {op} ({n}): {top}")
if xnames:
    print("\nGETXATTR names (the C virtiofsd's log):",
          ", ".join(f"{k} {n}" for k, n in xnames.most_common(8)))
