"""`xenhil build`: Debian's Xen 4.17 and QEMU 7.2 sources plus a patch
series in, a ``make dist``-style tree that ``--xen-build`` takes out.

1. Read the series (:mod:`harness.build.series`) and fetch the source
   packages (:mod:`harness.build.sources`).
2. Apply the series to a scratch copy of the files it touches, before any
   compile: a patch that does not apply stops here (exit 2) naming the patch,
   the file and the hunk.  What the series makes of those files is the
   *overrides*.
3. Each component (:mod:`harness.build.recipes`) whose files the series
   touches (or that was asked for) gets a key: recipe, source version and
   checksum, options, compiler, and the overrides that matter to it.  A
   component already in the cache is reused; otherwise its kept object tree
   is brought to pristine-plus-overrides (only files whose content changed
   get a new mtime, so make rebuilds only what depends on them), compiled
   under ``nice -n 19`` (the machine also runs the virtual lab), and
   installed into the cache.
4. The build is the union of its components' install trees under
   ``dist/install`` plus a manifest (sources, patches, compiler, options),
   also installed at ``var/lib/xenhil/build-manifest.json`` so a host
   carries what it runs.  Components the series does not touch are not
   built: the host keeps its Debian packages for them, and the manifest
   says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from xenhil.harness.build import cache as bcache
from xenhil.harness.build import recipes as R
from xenhil.harness.build import sources
from xenhil.harness.build.series import Patch
from xenhil.harness.errors import ConfigError, ProductError

MANIFEST_IN_TREE = "var/lib/xenhil/build-manifest.json"
MANIFEST_FORMAT = 1


class PatchDoesNotApply(ConfigError):
    help = "rebase the series onto Debian's source of the version named, or drop the patch"


class BuildDependencyMissing(ConfigError):
    help = "install the named packages (scripts/setup installs them all)"


class BuildFailed(ProductError):
    """A configure or compile step failed: with a patch series, the patch is
    the first suspect."""

    help = "read the failing lines above and the full log; fix the patch and build again"


@dataclass
class Reporter:
    """Stage progress (rich when on a terminal) and the time spent per stage."""

    show: Callable[[str], None] | None = None
    times: dict[str, float] = field(default_factory=dict)
    _live: object = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        task = None
        if self._live is not None:
            task = self._live.add_task(name, total=None)
        elif self.show:
            self.show(f"{name} ...")
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.monotonic() - t0
            if task is not None:
                self._live.update(task, total=1, completed=1)

    @contextmanager
    def live(self) -> Iterator[None]:
        if self.show is None:
            yield
            return
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        console = Console(stderr=True)
        if not console.is_terminal:
            yield
            return
        with Progress(SpinnerColumn(finished_text="[green]done"), TextColumn("{task.description}"),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            self._live = progress
            try:
                yield
            finally:
                self._live = None


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


def _key(obj) -> str:
    return _sha(json.dumps(obj, sort_keys=True))[:20]


# --- patches ---------------------------------------------------------------

def _paths_of(patch: Patch) -> set[str]:
    paths = set()
    for f in patch.patchset:
        for name in (f.source_file, f.target_file):
            if name and name != "/dev/null":
                paths.add("/".join(name.split("/")[patch.strip:]))
    return paths


_HUNK_FAILED = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
_PATCHING = re.compile(r"^(?:patching|checking) file '?([^'\n]+?)'?$", re.M)


def _failed_hunks(patch: Patch, output: str) -> list[str]:
    """'FILE: hunk #N (@@ header @@) failed at line L' for each failed hunk."""
    headers: dict[str, list[str]] = {}
    for f in patch.patchset:
        path = "/".join((f.target_file if f.target_file != "/dev/null" else f.source_file)
                        .split("/")[patch.strip:])
        headers[path] = [f"@@ -{h.source_start},{h.source_length} +{h.target_start},"
                         f"{h.target_length} @@{(' ' + h.section_header) if h.section_header else ''}"
                         for h in f]
    found, current = [], None
    for line in output.splitlines():
        m = _PATCHING.match(line)
        if m:
            current = m.group(1)
            continue
        m = _HUNK_FAILED.search(line)
        if m and current:
            n = int(m.group(1))
            hdr = headers.get(current, [])
            text = hdr[n - 1] if 0 < n <= len(hdr) else ""
            found.append(f"{current}: hunk #{n} {text} failed at line {m.group(2)}")
    return found


def apply_series(tree: Path, patches: list[Patch], what: str) -> dict[str, bytes | None]:
    """Apply ``patches`` in order to copies of the files they touch in
    ``tree`` (never to ``tree``); returns path -> new content (None: deleted)."""
    touched: set[str] = set()
    for p in patches:
        touched |= _paths_of(p)
    with tempfile.TemporaryDirectory(prefix="xenhil-series-") as tmp:
        scratch = Path(tmp)
        for rel in touched:
            src = tree / rel
            if src.is_file():
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, scratch / rel)
        for index, patch in enumerate(patches, 1):
            run = subprocess.run(
                ["patch", f"-p{patch.strip}", "--batch", "--forward", "--no-backup-if-mismatch",
                 "--reject-file=-", "-d", str(scratch)],
                input=patch.text, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
            if run.returncode != 0:
                hunks = _failed_hunks(patch, run.stdout)
                detail = "; ".join(hunks) if hunks else run.stdout.strip().splitlines()[-1:] or ["?"]
                if not hunks:
                    detail = " ".join(detail)
                raise PatchDoesNotApply(
                    f"patch {index}/{len(patches)} {patch.name!r} ({patch.subject}) does not apply "
                    f"to {what}: {detail}",
                    help=f"rebase it onto {what} (the series applies in order: patches before "
                         f"it applied), or fix the series file's order")
        result: dict[str, bytes | None] = {}
        for rel in sorted(touched):
            path = scratch / rel
            result[rel] = path.read_bytes() if path.is_file() else None
        return result


# --- running commands ------------------------------------------------------

_ERROR_LINE = re.compile(r"(\berror\b|\bError \d+|\*\*\*|undefined reference|No such file)", re.I)


def failing_lines(log: Path, limit: int = 30) -> str:
    """The lines of a log that say what failed, with a line of context before
    each; the tail when none matches."""
    lines = log.read_text(errors="replace").splitlines()
    picked: list[int] = []
    for i, line in enumerate(lines):
        if _ERROR_LINE.search(line):
            for j in (i - 1, i):
                if j >= 0 and j not in picked:
                    picked.append(j)
        if len(picked) >= limit:
            break
    if not picked:
        return "\n".join(lines[-15:])
    return "\n".join(lines[i] for i in picked)


CONFIGURE_HELP = ("a configure step failed: most often a missing -dev package or option the "
                  "failing lines name (scripts/setup installs the recipes' packages); read the log")


def run_logged(cmd: tuple[str, ...] | list[str], cwd: Path, log: Path, env: dict, what: str,
               help: str | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"\n$ (cd {cwd} && {' '.join(cmd)})\n")
        fh.flush()
        # nice: the virtual lab's QEMU shares these cores and must keep them.
        rc = subprocess.run(["nice", "-n", "19", *cmd], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env).returncode
    if rc != 0:
        raise BuildFailed(f"{what} failed (exit {rc}): {' '.join(cmd)}\n"
                          f"--- failing lines ---\n{failing_lines(log)}\n--- full log: {log}",
                          evidence={"build log": str(log)}, help=help)


def missing_packages(debs: tuple[str, ...]) -> list[str]:
    run = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *debs],
                         capture_output=True, text=True)
    installed = {line.split()[0] for line in run.stdout.splitlines()
                 if line.endswith(" installed")}
    return [d for d in debs if d not in installed]


def compiler_version() -> str:
    run = subprocess.run(["gcc", "--version"], capture_output=True, text=True)
    return run.stdout.splitlines()[0] if run.returncode == 0 else "gcc: not found"


# --- components ------------------------------------------------------------

@dataclass
class Request:
    xen_series: list[Patch] = field(default_factory=list)
    qemu_series: list[Patch] = field(default_factory=list)
    components: str = "auto"            # "auto", "all", or a comma list
    xen_version: str | None = None
    qemu_version: str | None = None
    jobs: int = 2


@dataclass
class Result:
    key: str
    path: Path                 # the build's folder in the cache
    dist: Path                 # what --xen-build takes
    cached: bool
    manifest: dict
    times: dict[str, float]
    components_built: list[str]


def named_components(text: str) -> list[str] | None:
    """``--components``: the comma list's components, None for auto and
    all; ConfigError naming what is unknown (checked before anything is
    fetched or built)."""
    if text in ("auto", "all"):
        return None
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in chosen if c not in R.COMPONENTS]
    if bad or not chosen:
        from xenhil.harness.options import shown
        raise ConfigError(f"--components {shown(text)}: unknown {shown(','.join(bad))}",
                          help=f"use auto, all, or a comma list of {', '.join(R.COMPONENTS)}")
    return chosen


def choose_components(request: Request, xen_over: dict, qemu_over: dict) -> list[str]:
    if request.components == "all":
        return list(R.COMPONENTS)
    chosen = named_components(request.components)
    if chosen is not None:
        if "xen" not in chosen:
            chosen.insert(0, "xen")  # a build always carries the hypervisor it boots
        return chosen
    rec = R.recipes(request.jobs)
    chosen = ["xen"]   # the hypervisor boots every build
    if any(rec["tools"].relevant(p) for p in xen_over):
        chosen.append("tools")
    if qemu_over:
        chosen.append("qemu")
    return chosen


def _env(src: sources.SourcePackage, banner_version: str) -> dict:
    changelog = subprocess.run(["dpkg-parsechangelog", "-l", str(src.tree / "debian/changelog"),
                                "-STimestamp"], capture_output=True, text=True).stdout.strip() or "0"
    date = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(int(changelog)))
    return {**os.environ, "LC_ALL": "C", "SOURCE_DATE_EPOCH": changelog,
            # What Debian's rules export, so the banner and build info read like its build;
            # the version names the xenhil build (seen on the console and in xl info).
            "DEB_VERSION": banner_version, "DEB_MAINTAINER": "xenhil <xenhil@localhost>",
            "XEN_BUILD_DATE": date, "XEN_BUILD_TIME": time.strftime("%T", time.gmtime(int(changelog))),
            "SMBIOS_REL_DATE": time.strftime("%m/%d/%Y", time.gmtime(int(changelog))),
            "WGET": "/bin/false", "GIT": "/bin/false", "MAKEFLAGS": ""}


def _sync_work_tree(work: Path, pristine: Path, overrides: dict[str, bytes | None]) -> int:
    """Bring the kept tree to pristine + overrides; returns files changed."""
    state = work / "xenhil-overrides.json"
    old = json.loads(state.read_text()) if state.is_file() else {}
    changed = 0
    for rel in sorted(set(old) | set(overrides)):
        want = overrides.get(rel) if rel in overrides else (
            (pristine / rel).read_bytes() if (pristine / rel).is_file() else None)
        dest = work / "src" / rel
        have = dest.read_bytes() if dest.is_file() else None
        if have == want:
            continue
        changed += 1
        if want is None:
            dest.unlink(missing_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            mode = (pristine / rel).stat().st_mode & 0o777 if (pristine / rel).exists() else 0o644
            dest.write_bytes(want)   # a new mtime: make rebuilds what depends on it
            os.chmod(dest, mode)
    state.write_text(json.dumps({k: (_sha(v) if v is not None else None)
                                 for k, v in overrides.items()}, indent=1, sort_keys=True))
    return changed


def elf_build_id(path: Path) -> str:
    """The GNU build id of an ELF file ("" without one): Xen reports its own
    in `xl info` (build_id), which is how provisioning knows what booted."""
    if not path.is_file():
        return ""
    run = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True)
    m = re.search(r"Build ID:\s*([0-9a-f]+)", run.stdout)
    return m.group(1) if m else ""


def _install(name: str, src: Path, out: Path, log: Path, env: dict, jobs: int) -> dict:
    """Install a built component into ``out``; returns facts for the manifest."""
    if name == "xen":
        # boot/xen.gz, not boot/xen-<version>.gz: provisioning unpacks the tree
        # over /, and /boot's xen-*.gz stay Debian's (provisioning finds the
        # Debian build through its package, harness.xen.provision).
        (out / "boot").mkdir(parents=True)
        shutil.copyfile(src / "xen/xen.gz", out / "boot/xen.gz")
        shutil.copyfile(src / "xen/.config", out / "boot/xen.config")
        return {"elf_build_id": elf_build_id(src / "xen/xen-syms")}
    elif name == "qemu":
        target = out / R.QEMU_PATH
        target.parent.mkdir(parents=True)
        shutil.copyfile(src / "b/qemu-system-i386", target)
        os.chmod(target, 0o755)
        return {"qemu_sha256": _sha(target.read_bytes())}
    elif name == "tools":
        raw = out.parent / f"{out.name}.raw"
        shutil.rmtree(raw, ignore_errors=True)
        run_logged(("make", f"-j{jobs}", "install-tools", f"DESTDIR={raw}"), src, log, env,
                   "tools: make install-tools")
        _debian_layout(raw, out)
        shutil.rmtree(raw, ignore_errors=True)
        xl = out / "usr/lib" / R.XEN_LEAF / "bin/xl"
        return {"xl_sha256": _sha(xl.read_bytes())}
    return {}


def _debian_layout(raw: Path, out: Path) -> None:
    """Keep what replaces Debian's packaged tools, where Debian has it: the
    programs in /usr/lib/xen-4.17/bin (Debian's /usr/sbin/xl is a wrapper
    that runs them from there), the libraries in the multiarch libdir,
    hvmloader and the Python bits under /usr/lib/xen-4.17.  Configuration,
    headers, docs and init scripts stay Debian's: same version, and a
    dist tree copied over / must not replace the wrappers' symlinks."""
    leaf = out / "usr/lib" / R.XEN_LEAF
    (leaf / "bin").mkdir(parents=True)
    for folder in ("usr/sbin", "usr/bin"):
        for path in sorted((raw / folder).glob("*")) if (raw / folder).is_dir() else ():
            if path.is_file() and not path.is_symlink():
                shutil.copy2(path, leaf / "bin" / path.name)
    for path in sorted((raw / "usr/lib" / R.XEN_LEAF).rglob("*")) if (raw / "usr/lib" / R.XEN_LEAF).is_dir() else ():
        rel = path.relative_to(raw / "usr/lib" / R.XEN_LEAF)
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".pyc"):
            (leaf / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, leaf / rel)
    libdir = raw / "usr/lib" / R.MULTIARCH
    for path in sorted(libdir.glob("lib*.so.*")) if libdir.is_dir() else ():
        if path.is_file() and not path.is_symlink():
            dest = out / "usr/lib" / R.MULTIARCH / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    if not (leaf / "bin/xl").is_file():
        raise BuildFailed(f"make install-tools put no xl under {raw}/usr/sbin", help=(
            "the tools' install layout changed: read the install log"))


def component_keys(name: str, recipe: R.Recipe, src: sources.SourcePackage,
                   relevant: dict[str, bytes | None], compiler: str) -> tuple[str, str]:
    """(kept object tree key, component key).  The tree is shared by every
    series on the same source and options; the component key adds the
    content of the files the series changes that matter to this component:
    a hypervisor-only patch leaves the tools' key alone."""
    work_key = _key({"recipe": name, "recipe_version": R.RECIPE_VERSION, "package": src.package,
                     "version": src.version, "dsc": src.dsc_sha256, "options": recipe.options,
                     "compiler": compiler})
    ckey = _key({"work": work_key, "install": R.INSTALL_VERSION,
                 "overrides": {k: (_sha(v) if v is not None else None)
                                                 for k, v in sorted(relevant.items())}})
    return work_key, ckey


@dataclass
class Plan:
    key: str                                   # the build's key (its cache entry)
    components: dict[str, str]                 # name -> component key
    sources: dict[str, sources.SourcePackage]  # package -> source
    overrides: dict[str, dict[str, bytes | None]]  # package -> path -> content
    compiler: str


@dataclass
class Builder:
    cache: Path
    reporter: Reporter = field(default_factory=Reporter)

    @property
    def root(self) -> Path:
        return bcache.cache_root(self.cache)

    def _component(self, name: str, recipe: R.Recipe, src: sources.SourcePackage,
                   overrides: dict[str, bytes | None], compiler: str, jobs: int,
                   build_log_dir: Path) -> tuple[Path, dict]:
        relevant = {k: v for k, v in overrides.items() if recipe.relevant(k)}
        work_key, ckey = component_keys(name, recipe, src, relevant, compiler)
        info = {"key": ckey, "work_key": work_key, "options": recipe.options,
                "source": src.to_json(), "overridden_files": sorted(relevant)}
        final = self.root / "components" / f"{name}-{ckey}"
        if final.is_dir():
            bcache.touch(final)
            return final, json.loads((final / "component.json").read_text())
        work = self.root / "work" / f"{name}-{work_key}"
        log = build_log_dir / f"{name}.log"
        env = _env(src, f"{src.version}+xenhil.{ckey[:10]}")
        missing = missing_packages(recipe.debs)
        if missing:
            raise BuildDependencyMissing(
                f"building {name} needs Debian packages that are not installed: {' '.join(missing)}",
                help=f"apt-get install {' '.join(missing)}   (or run scripts/setup)")
        with bcache.locked(self.root / "work" / f".{work.name}.lock"):
            if not (work / "src").is_dir():
                with self.reporter.stage(f"{name}: copy source"):
                    with bcache.staging(work) as tmp:
                        subprocess.run(["cp", "-a", f"{src.tree}/.", str(tmp / "src")], check=True)
            bcache.touch(work)
            with self.reporter.stage(f"{name}: apply overrides"):
                changed = _sync_work_tree(work, src.tree, relevant)
            if not (work / "configured").exists():
                with self.reporter.stage(f"{name}: configure"):
                    for cmd in recipe.configure:
                        run_logged(cmd, work / "src", log, env, f"{name}: configure",
                                   help=CONFIGURE_HELP)
                (work / "configured").write_text(json.dumps(recipe.options))
            with self.reporter.stage(f"{name}: compile"):
                for cmd in recipe.build:
                    run_logged(cmd, work / "src", log, env, f"{name}: compile")
            with self.reporter.stage(f"{name}: install"):
                with bcache.staging(final) as tmp:
                    info.update(_install(name, work / "src", tmp / "install", log, env, jobs))
                    info["banner_version"] = env["DEB_VERSION"]
                    (tmp / "component.json").write_text(json.dumps(info, indent=2))
            info["files_changed_since_last_build"] = changed
        return final, info

    def plan(self, request: Request) -> Plan:
        """Sources fetched, the series applied (PatchDoesNotApply here, before
        any compile) and every key computed."""
        rec = R.recipes(request.jobs)
        with self.reporter.stage("fetch sources"):
            srcs = {"xen": sources.fetch(self.cache, "xen", request.xen_version, progress=lambda m: None)}
            if request.qemu_series or request.components == "all" or \
                    "qemu" in request.components.split(","):
                srcs["qemu"] = sources.fetch(self.cache, "qemu", request.qemu_version,
                                             progress=lambda m: None)
        with self.reporter.stage("apply series"):
            over = {"xen": {}, "qemu": {}}
            for package, series in (("xen", request.xen_series), ("qemu", request.qemu_series)):
                if series:
                    src = srcs[package]
                    over[package] = apply_series(src.tree, series, f"Debian's {package} {src.version}")
        names = choose_components(request, over["xen"], over["qemu"])
        compiler = compiler_version()
        keys, described = {}, {}
        for name in names:
            src = srcs[rec[name].package]
            relevant = {k: v for k, v in over[rec[name].package].items() if rec[name].relevant(k)}
            _work, keys[name] = component_keys(name, rec[name], src, relevant, compiler)
            described[name] = {"package": src.package, "version": src.version, "key": keys[name]}
        build_key = _key({"format": MANIFEST_FORMAT, "recipe_version": R.RECIPE_VERSION,
                          "components": described})
        return Plan(build_key, keys, srcs, over, compiler)

    def build(self, request: Request) -> Result:
        t_start = time.monotonic()
        rec = R.recipes(request.jobs)
        with self.reporter.live():
            plan = self.plan(request)
            build_key, components = plan.key, list(plan.components)
            xen_src, qemu_src = plan.sources["xen"], plan.sources.get("qemu")
            final = self.root / "builds" / build_key
            if final.is_dir():
                bcache.touch(final)
                for comp in json.loads((final / "manifest.json").read_text())["components"].values():
                    path = self.root / "components" / f"{comp['name']}-{comp['key']}"
                    if path.is_dir():
                        bcache.touch(path)
                manifest = json.loads((final / "manifest.json").read_text())
                return Result(build_key, final, final / "dist", True, manifest,
                              {"cache answer": time.monotonic() - t_start}, [])
            logs = self.root / "logs" / build_key
            logs.mkdir(parents=True, exist_ok=True)
            built, comp_info = [], {}
            for name in components:
                package = rec[name].package
                path, info = self._component(name, rec[name], plan.sources[package],
                                             plan.overrides[package], plan.compiler, request.jobs, logs)
                info["name"] = name
                comp_info[name] = info
                if "files_changed_since_last_build" in info:
                    built.append(name)
            manifest = {
                "xenhil_build": build_key, "format": MANIFEST_FORMAT,
                "recipe_version": R.RECIPE_VERSION, "compiler": plan.compiler,
                "components": comp_info,
                "packaged": [c for c in R.COMPONENTS if c not in components],
                "sources": {s.package: s.to_json() for s in (xen_src, qemu_src) if s},
                "patches": {
                    "xen": [_patch_json(p) for p in request.xen_series],
                    "qemu": [_patch_json(p) for p in request.qemu_series]},
            }
            with self.reporter.stage("assemble dist tree"):
                with bcache.staging(final) as tmp:
                    install = tmp / "dist" / "install"
                    install.mkdir(parents=True)
                    for name in components:
                        comp = self.root / "components" / f"{name}-{comp_info[name]['key']}" / "install"
                        # Hard links: the build shares its components' bytes.
                        subprocess.run(["cp", "-al", f"{comp}/.", str(install)], check=True)
                    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
                    (install / MANIFEST_IN_TREE).parent.mkdir(parents=True, exist_ok=True)
                    (install / MANIFEST_IN_TREE).write_text(text)
                    (tmp / "manifest.json").write_text(text)
                    (tmp / "logs").symlink_to(logs)
            times = dict(self.reporter.times)
            (final / "timings.json").write_text(json.dumps(times, indent=2))
        return Result(build_key, final, final / "dist", False, manifest, times, built)


def _patch_json(p: Patch) -> dict:
    return {"name": p.name, "subject": p.subject, "sha256": p.sha256, "diff_sha256": p.diff_sha256,
            "files": list(p.files), "strip": p.strip, "from": p.source}


def write_tarball(dist: Path, out: Path) -> Path:
    """A tarball of ``dist/install`` (members relative to it), made beside
    ``out`` and renamed: never a half-written tarball at ``out``."""
    mode = "w:gz" if out.name.endswith((".tar.gz", ".tgz")) else (
        "w:xz" if out.name.endswith((".tar.xz", ".txz")) else "w")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, mode) as tar:
            root = dist / "install"
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
        tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def is_tarball_name(name: str) -> bool:
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz"))
