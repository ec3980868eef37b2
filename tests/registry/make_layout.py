#!/usr/bin/env python3
"""Builds the OCI image layouts the registry tests push (stdlib + zstd CLI).

  make_layout.py image OUT TAG --arch ARCH [--compress gzip|zstd|none]
                 --layer PATH=TEXT[,PATH=TEXT...] [--layer ...] [--random PATH=BYTES]
  make_layout.py index OUT TAG LAYOUT...    one multi-platform index of the
                                            single-image layouts given
"""
import argparse, gzip, hashlib, io, json, os, shutil, subprocess, sys, tarfile

def put_blob(out, data):
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)

def layer_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for path, data in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d and d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755
                    t.addfile(ti)
            ti = tarfile.TarInfo(path); ti.size = len(data); ti.mode = 0o644
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()

def compress(data, how):
    if how == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"
    if how == "zstd":
        r = subprocess.run(["zstd", "-q", "-c", "-3"], input=data, stdout=subprocess.PIPE, check=True)
        return r.stdout, "application/vnd.oci.image.layer.v1.tar+zstd"
    return data, "application/vnd.oci.image.layer.v1.tar"

def write_index(out, manifests):
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": manifests}, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')

def image(a):
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    layers, diff_ids = [], []
    specs = []
    for spec in a.layer:
        specs.append([(p.split("=", 1)[0], p.split("=", 1)[1].encode()) for p in spec.split(",")])
    for spec in a.random or []:
        path, size = spec.split("=")
        specs.append([(path, os.urandom(int(size)))])
    for files in specs:
        tar = layer_tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        data, mt = compress(tar, a.compress)
        d, n = put_blob(a.out, data)
        layers.append({"mediaType": mt, "digest": d, "size": n})
    cfg = {"architecture": a.arch, "os": "linux",
           "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cd, cn = put_blob(a.out, json.dumps(cfg).encode())
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
           "layers": layers}
    md, mn = put_blob(a.out, json.dumps(man).encode())
    write_index(a.out, [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                         "platform": {"os": "linux", "architecture": a.arch},
                         "annotations": {"org.opencontainers.image.ref.name": a.tag}}])

def index(a):
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(os.path.join(a.out, "blobs", "sha256"))
    entries = []
    for src in a.layouts:
        for b in os.listdir(os.path.join(src, "blobs", "sha256")):
            shutil.copy(os.path.join(src, "blobs", "sha256", b), os.path.join(a.out, "blobs", "sha256", b))
        with open(os.path.join(src, "index.json")) as f:
            e = json.load(f)["manifests"][0]
        e.pop("annotations", None)
        entries.append(e)
    idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
    d, n = put_blob(a.out, json.dumps(idx).encode())
    write_index(a.out, [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": n,
                         "annotations": {"org.opencontainers.image.ref.name": a.tag}}])

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
i = sub.add_parser("image"); i.add_argument("out"); i.add_argument("tag"); i.add_argument("--arch", default="amd64")
i.add_argument("--compress", default="gzip"); i.add_argument("--layer", action="append", default=[])
i.add_argument("--random", action="append")
x = sub.add_parser("index"); x.add_argument("out"); x.add_argument("tag"); x.add_argument("layouts", nargs="+")
a = p.parse_args()
image(a) if a.cmd == "image" else index(a)
