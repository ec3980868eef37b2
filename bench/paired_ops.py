# Alternating blocks of operations on two mounts (see pairedbench.sh).
import os, sys, time, statistics
# paired_ops.py MNT_A MNT_B ROUNDS BLOCK: per-op time in alternating blocks
a, b = sys.argv[1], sys.argv[2]; rounds = int(sys.argv[3]); blk = int(sys.argv[4])
data = b"x" * 4096
for m in (a, b):
    os.makedirs(f"{m}/c", exist_ok=True)
    for i in range(blk):
        p = f"{m}/c/f{i}"
        if not os.path.exists(p):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644); os.write(fd, data); os.close(fd)

def timed(fn):
    s = time.perf_counter(); fn(); return time.perf_counter() - s

def openread(m):
    def run():
        for i in range(blk):
            fd = os.open(f"{m}/c/f{i}", os.O_RDONLY); os.read(fd, 4096); os.close(fd)
    return {"open+read": timed(run)}

def stat(m):
    def run():
        for i in range(blk): os.stat(f"{m}/c/f{i}")
    return {"stat": timed(run)}

def create(m):
    def run():
        for i in range(blk):
            fd = os.open(f"{m}/c/n{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.close(fd)
        for i in range(blk): os.unlink(f"{m}/c/n{i}")
    return {"create+unlink": timed(run)}

# fsbench's sequence in miniature, each step timed on its own: create files
# of 4 KiB, stat them (a write leaves their attributes stale, so each stat
# asks the server in every cache mode), open and read them, unlink them.
def cycle(m):
    names = [f"{m}/c/w{i}" for i in range(blk)]
    def mk():
        for p in names:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.write(fd, data); os.close(fd)
    def st():
        for p in names: os.stat(p)
    def rd():
        for p in names:
            fd = os.open(p, os.O_RDONLY); os.read(fd, 4096); os.close(fd)
    def rm():
        for p in names: os.unlink(p)
    return {"cycle: create 4K": timed(mk), "cycle: stat": timed(st), "cycle: open+read": timed(rd),
            "cycle: unlink": timed(rm)}

OPS = os.environ.get("OPS", "open+read,stat,create+unlink").split(",")
ALL = (("open+read", openread), ("stat", stat), ("create+unlink", create), ("cycle", cycle))
for name, fn in [x for x in ALL if x[0] in OPS]:
    ratios, ta, tb = {}, {}, {}
    for r in range(rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        t = {m: fn(m) for m in order}
        for k in t[a]:
            ratios.setdefault(k, []).append(t[a][k] / t[b][k])
            ta[k] = ta.get(k, 0.0) + t[a][k]; tb[k] = tb.get(k, 0.0) + t[b][k]
    for k, rs in ratios.items():
        q = statistics.quantiles(rs, n=4)
        print(f"{k:18s} A/B median {statistics.median(rs):.3f} (IQR {q[0]:.3f}-{q[2]:.3f})  "
              f"us/op A {ta[k]*1e6/(rounds*blk):.1f} B {tb[k]*1e6/(rounds*blk):.1f}")
for m in (a, b):
    for i in range(blk): os.unlink(f"{m}/c/f{i}")
    os.rmdir(f"{m}/c")
