# Alternating blocks of operations on two mounts (see pairedbench.sh).
import os, sys, time, statistics
# paired.py MNT_NEW MNT_PREV ROUNDS BLOCK: per-op time in alternating blocks
a, b = sys.argv[1], sys.argv[2]; rounds = int(sys.argv[3]); blk = int(sys.argv[4])
data = b"x" * 4096
for m in (a, b):
    os.makedirs(f"{m}/c", exist_ok=True)
    for i in range(blk):
        p = f"{m}/c/f{i}"
        if not os.path.exists(p):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644); os.write(fd, data); os.close(fd)
def openread(m):
    for i in range(blk):
        fd = os.open(f"{m}/c/f{i}", os.O_RDONLY); os.read(fd, 4096); os.close(fd)
def stat(m):
    for i in range(blk): os.stat(f"{m}/c/f{i}")
def create(m):
    for i in range(blk):
        fd = os.open(f"{m}/c/n{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.close(fd)
    for i in range(blk): os.unlink(f"{m}/c/n{i}")
OPS = os.environ.get("OPS", "open+read,stat,create+unlink").split(",")
for name, fn in [x for x in (("open+read", openread), ("stat", stat), ("create+unlink", create)) if x[0] in OPS]:
    ratios = []; ta = tb = 0.0
    for r in range(rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        t = {}
        for m in order:
            s = time.perf_counter(); fn(m); t[m] = time.perf_counter() - s
        ratios.append(t[a] / t[b]); ta += t[a]; tb += t[b]
    q = statistics.quantiles(ratios, n=4)
    print(f"{name:14s} new/prev median {statistics.median(ratios):.3f} (IQR {q[0]:.3f}-{q[2]:.3f})  "
          f"us/op new {ta*1e6/(rounds*blk):.1f} prev {tb*1e6/(rounds*blk):.1f}")
for m in (a, b):
    for i in range(blk): os.unlink(f"{m}/c/f{i}")
    os.rmdir(f"{m}/c")
