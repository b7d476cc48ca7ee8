"""Debian's own files under a build's tree, kept and put back.  Runs ON the
host, with its python3 (standard library only): harness/xen/provision.py
copies this file there and calls it.

A build's tree (a `xenhil build` tarball, a `make dist` tree) is unpacked
over the host's /, replacing Debian's xl, libxenlight, QEMU and more.  Going
back to the Debian build must bring those back: its hypervisor alone under
the source build's tools and device model is neither build.  So, before a
tree is unpacked:

    python3 debian_files.py keep TREE_OR_TARBALL ROOT STATE

copies each file (or symlink) the tree will replace into STATE/root, once:
the first copy is Debian's, later trees never overwrite it; and it lists in
STATE/added each file the tree adds where Debian had none.  Then

    python3 debian_files.py restore ROOT STATE

puts every kept file back (unlinking what is there first, so a running
daemon keeps its open library) and removes every added file.  The caller
runs ldconfig.  Folders a tree created stay (empty).  A host whose Debian
packages were upgraded after a keep gets the kept (older) files back:
provisioning is for lab hosts that xenhil owns.
"""
from __future__ import annotations

import os
import shutil
import sys
import tarfile


def _relative(name: str) -> str | None:
    """A tree member's path relative to /, or None for the root itself and
    for a path that climbs out of it."""
    rel = os.path.normpath(name.lstrip("/"))
    if rel in (".", "") or rel.startswith("..") or "/../" in f"/{rel}/":
        return None
    return rel


def members(source: str) -> list[str]:
    """The files and symlinks of a tree (a folder or a tarball), relative to /."""
    found = []
    if os.path.isdir(source):
        for folder, dirs, files in os.walk(source):
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                found.append(os.path.relpath(os.path.join(folder, name), source))
    else:
        with tarfile.open(source) as tar:
            found = [m.name for m in tar if not m.isdir()]
    return [rel for rel in map(_relative, found) if rel is not None]


def _copy(source: str, target: str) -> None:
    """``source`` to ``target`` as it is: a symlink as a symlink."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        os.unlink(target)
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    else:
        shutil.copy2(source, target)


def _read_added(state: str) -> list[str]:
    path = os.path.join(state, "added")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def keep(source: str, root: str, state: str) -> tuple[int, int]:
    """(files kept now, files the tree adds)."""
    kept_root = os.path.join(state, "root")
    added = set(_read_added(state))
    kept = 0
    for rel in members(source):
        on_host = os.path.join(root, rel)
        copy = os.path.join(kept_root, rel)
        if rel in added or os.path.lexists(copy):
            continue                        # already known: the first record is Debian's
        if os.path.lexists(on_host):
            if os.path.isdir(on_host) and not os.path.islink(on_host):
                continue                    # a folder where the tree has a file: tar refuses it
            _copy(on_host, copy)
            kept += 1
        else:
            added.add(rel)
    os.makedirs(state, exist_ok=True)
    with open(os.path.join(state, "added.new"), "w", encoding="utf-8") as f:
        f.writelines(f"{rel}\n" for rel in sorted(added))
    os.replace(os.path.join(state, "added.new"), os.path.join(state, "added"))
    return kept, len(added)


def restore(root: str, state: str) -> tuple[int, int]:
    """(files put back, added files removed)."""
    kept_root = os.path.join(state, "root")
    restored = 0
    for folder, dirs, files in os.walk(kept_root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            copy = os.path.join(folder, name)
            _copy(copy, os.path.join(root, os.path.relpath(copy, kept_root)))
            restored += 1
    removed = 0
    for rel in _read_added(state):
        on_host = os.path.join(root, rel)
        if os.path.lexists(on_host) and not (os.path.isdir(on_host) and not os.path.islink(on_host)):
            os.unlink(on_host)
            removed += 1
    if os.path.exists(os.path.join(state, "added")):
        os.unlink(os.path.join(state, "added"))
    return restored, removed


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "keep":
        kept, added = keep(argv[1], argv[2], argv[3])
        print(f"kept {kept} Debian file(s); the tree adds {added}")
        return 0
    if len(argv) == 3 and argv[0] == "restore":
        restored, removed = restore(argv[1], argv[2])
        print(f"put back {restored} Debian file(s); removed {removed} added by builds")
        return 0
    print("usage: debian_files.py keep TREE_OR_TARBALL ROOT STATE | restore ROOT STATE",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
