#!/usr/bin/env python3
"""Writes small container images for the template import tests.

    mkimage.py FORMAT OUT [VARIANT]

FORMAT: docker (a `docker save` tarball), oci (an OCI layout folder),
oci-tar (the same layout as a tarball), oci-gz (folder, gzip layers).
The image is a busybox-static root filesystem in two layers: the second
deletes a file of the first (a whiteout) and empties a folder (an opaque
mark). VARIANT makes it hostile: bad-digest, dotdot, symlink-escape,
missing-blob, blob-symlink, truncated, hardlink-outside, bad-diff-id;
A variant naming "fresh" (fresh, fresh2, bad-digest-fresh) adds a file naming
it, so its second layer is one no other variant has.
Everything is built here from /usr/bin/busybox; nothing is downloaded.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

BUSYBOX = "/usr/bin/busybox"


def add(tar, name, kind="file", data=b"", mode=0o644, uid=0, gid=0, link=""):
    info = tarfile.TarInfo(name)
    info.uid, info.gid, info.mode, info.mtime = uid, gid, mode, 1700000000
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif kind == "sym":
        info.type, info.linkname = tarfile.SYMTYPE, link
        tar.addfile(info)
    elif kind == "hard":
        info.type, info.linkname = tarfile.LNKTYPE, link
        tar.addfile(info)
    elif kind == "chr":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def tar_bytes(fill):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        fill(tar)
    return buf.getvalue()


def layer_one(variant):
    def fill(tar):
        with open(BUSYBOX, "rb") as f:
            bb = f.read()
        for d in ["bin", "etc", "root", "home", "tmp", "dev", "opt", "opt/old", "usr",
                  "usr/bin", "proc", "sys"]:
            add(tar, d + "/", "dir", mode=0o1777 if d == "tmp" else 0o755)
        add(tar, "home/user/", "dir", mode=0o750, uid=1000, gid=1000)
        add(tar, "bin/busybox", data=bb, mode=0o755)
        for tool in ["sh", "cat", "ls", "echo", "id", "sleep", "env", "touch", "pwd",
                     "setsid", "test", "[", "readlink", "mkdir", "rm", "whoami", "grep",
                     "stat", "timeout", "kill"]:
            add(tar, "bin/" + tool, "sym", link="busybox")
        # The SDK runs commands with /bin/bash -l -c; busybox's sh takes both.
        add(tar, "bin/bash", data=b'#!/bin/sh\nexec /bin/sh "$@"\n', mode=0o755)
        add(tar, "usr/bin/env", "sym", link="/bin/busybox")
        add(tar, "bin/bb-hard", "hard", link="bin/busybox")
        add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"
            b"user:x:1000:1000::/home/user:/bin/sh\n")
        add(tar, "etc/group", data=b"root:x:0:\nuser:x:1000:\n")
        add(tar, "etc/remove-me", data=b"old\n")
        add(tar, "opt/old/a", data=b"a\n")
        add(tar, "home/user/owned", data=b"mine\n", uid=1000, gid=1000)
        add(tar, "dev/null", "chr", mode=0o666)
        if variant == "dotdot":
            add(tar, "../escape", data=b"x")
        if variant == "symlink-escape":
            add(tar, "evil", "sym", link=os.environ.get("OUTSIDE", "/tmp"))
            add(tar, "evil/planted", data=b"x")
        if variant == "hardlink-outside":
            add(tar, "etc/shadow-link", "hard", link="etc/shadow")
    return tar_bytes(fill)


def layer_two(variant):
    def fill(tar):
        add(tar, "etc/.wh.remove-me")
        add(tar, "opt/old/", "dir", mode=0o755)
        add(tar, "opt/old/.wh..wh..opq")
        add(tar, "opt/old/b", data=b"b\n")
        add(tar, "etc/motd", data=b"hello from layer two\n")
        if "fresh" in variant:
            add(tar, "etc/fresh", data=b"a layer no other variant has: %s\n"
                % variant.encode())
    return tar_bytes(fill)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def config_of(diff_ids, variant):
    if variant == "bad-diff-id":
        diff_ids = [diff_ids[0], "sha256:" + "0" * 64]
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"User": "1000", "WorkingDir": "/home/user",
                   "Env": ["PATH=/bin:/usr/bin", "HELLO=world"],
                   "Entrypoint": ["/bin/sh", "-c"],
                   "Cmd": ["echo started > /tmp/started"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()


def layers_for(variant):
    raw = [layer_one(variant), layer_two(variant)]
    if variant == "truncated":
        raw[1] = raw[1][:700]
    return raw


def write_docker(out, variant):
    raw = layers_for(variant)
    diff_ids = ["sha256:" + sha(b) for b in raw]
    if variant.startswith("bad-digest"):
        raw[1] = raw[1].replace(b"hello from layer two", b"HELLO FROM LAYER TWO")
    cfg = config_of(diff_ids, variant)
    members = {sha(cfg) + ".json": cfg}
    paths = []
    for i, b in enumerate(raw):
        p = "l%d/layer.tar" % i
        if variant == "missing-blob" and i == 1:
            p = "nowhere/layer.tar"
        else:
            members[p] = b
        paths.append(p)
    manifest = [{"Config": sha(cfg) + ".json", "RepoTags": ["hutch-test:latest"],
                 "Layers": paths}]
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in members.items():
            add(tar, name, data=data)


def write_oci(out, variant, compress, as_tar):
    raw = layers_for(variant)
    diff_ids = ["sha256:" + sha(b) for b in raw]
    blobs = [gzip.compress(b, mtime=0) if compress else b for b in raw]
    mt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
    descs = [{"mediaType": mt, "digest": "sha256:" + sha(b), "size": len(b)} for b in blobs]
    if variant.startswith("bad-digest"):
        blobs[1] = blobs[1][:-1] + bytes([blobs[1][-1] ^ 1])
    cfg = config_of(diff_ids, variant)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + sha(cfg), "size": len(cfg)},
        "layers": descs}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + sha(manifest), "size": len(manifest),
        "platform": {"os": "linux", "architecture": "amd64"},
        "annotations": {"org.opencontainers.image.ref.name": "hutch-test:oci"}}]}).encode()
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for b in [cfg, manifest]:
        files["blobs/sha256/" + sha(b)] = b
    for i, b in enumerate(blobs):
        if variant == "missing-blob" and i == 1:
            continue
        files["blobs/sha256/" + descs[i]["digest"][7:]] = b
    links = {}
    if variant == "blob-symlink":
        name = "blobs/sha256/" + descs[1]["digest"][7:]
        del files[name]
        links[name] = "/etc/passwd"
    if as_tar:
        with tarfile.open(out, "w") as tar:
            for name, data in files.items():
                add(tar, name, data=data)
            for name, target in links.items():
                add(tar, name, "sym", link=target)
        return
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    for name, target in links.items():
        os.symlink(target, os.path.join(out, name))


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    fmt, out = sys.argv[1], sys.argv[2]
    variant = sys.argv[3] if len(sys.argv) == 4 else ""
    if fmt == "docker":
        write_docker(out, variant)
    elif fmt in ("oci", "oci-gz", "oci-tar"):
        write_oci(out, variant, fmt == "oci-gz", fmt == "oci-tar")
    else:
        sys.exit("unknown format " + fmt)


if __name__ == "__main__":
    main()
