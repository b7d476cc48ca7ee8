"""``xenhil build``: Debian's Xen 4.17 / QEMU 7.2 sources plus a patch series
into a build that ``--xen-build`` takes; ``--list`` and ``--prune`` the cache.

    xenhil build --xen-series PATCHES/ -o build.tar.gz
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from xenhil.harness.build import cache as bcache
from xenhil.harness.build import engine, sources
from xenhil.harness.build.recipes import COMPONENTS
from xenhil.harness.build.series import BadSeries, parse_series
from xenhil.harness.errors import ConfigError
from xenhil.harness.options import argparse_number


def default_cache() -> Path:
    from xenhil.harness.lab.virtual.builder import cache_dir
    return cache_dir()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "build", help="build Xen/QEMU from Debian's sources plus a patch series",
        description="Fetch Debian 12's xen and qemu source packages, apply a patch series "
                    "(a folder with a quilt `series` file, an mbox, a .patch, or git:REPO:A..B), "
                    "build what the series touches, and print the dist tree for --xen-build. "
                    "The same inputs answer from the cache. Exit 2 on bad input (a patch that "
                    "does not apply, a missing build dependency), 1 when a compile fails.")
    parser.add_argument("--xen-series", default=None, metavar="SERIES",
                        help="patches for Xen (hypervisor and tools)")
    parser.add_argument("--qemu-series", default=None, metavar="SERIES", help="patches for QEMU")
    parser.add_argument("--components", default="auto",
                        help=f"auto (what the series touches; the hypervisor always), all, or a "
                             f"comma list of {', '.join(COMPONENTS)}; components not built stay "
                             f"the host's Debian packages")
    parser.add_argument("--xen-version", default=None,
                        help="Debian version of the xen source (default: newest that downloads)")
    parser.add_argument("--qemu-version", default=None, help="Debian version of the qemu source")
    parser.add_argument("-o", "--output", default=None, metavar="PATH",
                        help="also write the build here: a tarball (.tar, .tar.gz, .tar.xz) or "
                             "a symlink to the dist tree")
    parser.add_argument("-j", "--jobs", type=argparse_number("--jobs"), default=os.cpu_count() or 2)
    parser.add_argument("--cache", default=None, type=Path,
                        help="cache folder (default: $XENHIL_CACHE or /var/cache/xenhil)")
    parser.add_argument("--max-size", type=argparse_number("--max-size"), default=None, metavar="GB",
                        help="cache size limit, pruned least recently used first after a build "
                             f"and by --prune (default $XENHIL_BUILD_CACHE_GB, else "
                             f"{bcache.DEFAULT_LIMIT_GB:g})")
    parser.add_argument("--list", action="store_true", help="list the cached builds and exit")
    parser.add_argument("--prune", action="store_true",
                        help="prune the cache to --max-size (--max-size 0 empties it) and exit")
    parser.add_argument("--fetch-sources", action="store_true",
                        help="only fetch and unpack the source packages (scripts/setup does this)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=cmd_build)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def cmd_list(cache: Path, as_json: bool) -> int:
    found = bcache.entries(cache)
    if as_json:
        print(json.dumps([{"kind": e.kind, "name": e.name, "path": str(e.path), "size": e.size,
                           "last_used": e.last_used} for e in found], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"xenhil build cache ({bcache.cache_root(cache)})")
    for col in ("kind", "key", "what", "size", "last used"):
        table.add_column(col, no_wrap=col in ("key", "size"), justify="right" if col == "size" else "left")
    for e in sorted(found, key=lambda e: (e.kind, -e.last_used)):
        what = ""
        if e.kind == "builds" and e.manifest:
            m = e.manifest
            patches = sum(len(v) for v in m.get("patches", {}).values())
            what = f"{'+'.join(m['components'])}, {patches} patch(es)"
        table.add_row(e.kind, e.name, what, _gb(e.size), bcache.age(e.last_used))
    Console().print(table)
    print(f"total {_gb(sum(e.size for e in found))}")
    return 0


def _checked(args: argparse.Namespace) -> tuple[Path, float]:
    """The cache folder and its limit in GB, every input checked before
    anything is fetched, built or pruned: an output path that cannot be
    written fails now, not after an hour of compiling."""
    from xenhil.harness.options import check_output_folder, number, shown
    cache = args.cache or default_cache()
    check_output_folder("--cache", cache)
    if args.max_size is not None:
        limit = args.max_size
    else:
        env = os.environ.get("XENHIL_BUILD_CACHE_GB")
        try:
            limit = number("--max-size", env) if env is not None else bcache.DEFAULT_LIMIT_GB
        except ConfigError as exc:
            raise ConfigError(f"$XENHIL_BUILD_CACHE_GB {shown(env)}: {exc.args[0].split(': ', 1)[1]}",
                              help="set it to the build cache's size limit in GB, e.g. 25, "
                                   "or unset it") from None
    engine.named_components(args.components)
    if args.output:
        out = Path(args.output)
        if not out.parent.is_dir():
            raise ConfigError(f"-o {shown(out)}: {shown(out.parent)} is not a folder",
                              help="give a path in an existing folder")
        check_output_folder("--output", out.parent)
        if out.is_dir() and not out.is_symlink():
            raise ConfigError(f"-o {shown(out)}: is a folder",
                              help="give a tarball path (.tar, .tar.gz, .tar.xz) or a symlink "
                                   "path that does not exist yet")
        if not engine.is_tarball_name(out.name) and out.exists() and not out.is_symlink():
            raise ConfigError(f"-o {shown(out)}: exists and is not a symlink",
                              help="remove it or pick another path")
    return cache, limit


def _series(option: str, spec: str | None) -> list:
    """The patches of ``spec``, a problem named with the option that gave it."""
    if not spec:
        return []
    try:
        return parse_series(spec)
    except BadSeries as exc:
        raise BadSeries(f"{option} {exc.args[0]}", help=exc.help) from None


def cmd_build(args: argparse.Namespace) -> int:
    cache, max_size = _checked(args)
    limit = int(max_size * 1e9)
    if args.list:
        return cmd_list(cache, args.json)
    if args.prune:
        removed = bcache.prune(cache, limit, remove_all=max_size == 0)
        for e in removed:
            print(f"removed {e.kind}/{e.name} ({_gb(e.size)})")
        print(f"cache now {_gb(sum(e.size for e in bcache.entries(cache)))} (limit {_gb(limit)})")
        return 0
    if args.fetch_sources:
        for package, version in (("xen", args.xen_version), ("qemu", args.qemu_version)):
            src = sources.fetch(cache, package, version, progress=print)
            print(f"{package} {src.version}: {src.folder}")
            for name, sha in src.files.items():
                print(f"  {sha}  {name}")
        return 0
    request = engine.Request(
        xen_series=_series("--xen-series", args.xen_series),
        qemu_series=_series("--qemu-series", args.qemu_series),
        components=args.components, xen_version=args.xen_version,
        qemu_version=args.qemu_version, jobs=args.jobs)
    show = None if args.json else (lambda m: print(m, file=sys.stderr))
    builder = engine.Builder(cache, engine.Reporter(show=show))
    result = builder.build(request)
    bcache.prune(cache, limit, keep={result.path})
    output = None
    if args.output:
        out = Path(args.output)
        if engine.is_tarball_name(out.name):
            output = engine.write_tarball(result.dist, out)
        else:
            if out.is_symlink() or not out.exists():
                out.unlink(missing_ok=True)
                out.symlink_to(result.dist)
                output = out
            else:   # made since _checked looked
                raise ConfigError(f"-o {out}: exists and is not a symlink", help="remove it or pick another path")
    if args.json:
        print(json.dumps({"key": result.key, "dist": str(result.dist), "cached": result.cached,
                          "output": str(output) if output else None, "times": result.times,
                          "built": result.components_built}, indent=2))
        return 0
    _summary(result, output)
    return 0


def _summary(result: engine.Result, output: Path | None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console()
    m = result.manifest
    if result.cached:
        console.print(f"build {result.key}: from the cache in {result.times['cache answer']:.1f} s")
    else:
        table = Table(title=f"build {result.key}: time per stage")
        table.add_column("stage")
        table.add_column("seconds", justify="right")
        for stage, secs in result.times.items():
            table.add_row(stage, f"{secs:.1f}")
        table.add_row("total", f"{sum(result.times.values()):.1f}")
        console.print(table)
    console.print(f"components built: {', '.join(m['components'])}; "
                  f"left to the host's Debian packages: {', '.join(m['packaged']) or 'none'}")
    console.print(f"dist tree (--xen-build): {result.dist}")
    console.print(f"manifest: {result.path / 'manifest.json'}")
    if output:
        console.print(f"written: {output}")
