"""How each component is built: the lab's choices, each with its reason.

- ``xen``: the hypervisor with Debian's own kconfig (debian/xen-kconfig,
  what the lab's packaged Xen runs), so a patched build differs from the
  packaged one by the patch only.
- ``tools``: libraries, xl and daemons, configured with Debian's paths
  (/usr, the multiarch libdir, /usr/lib/xen-4.17): installed over the
  packaged tools they replace file for file, Debian's wrappers (/usr/sbin/xl
  -> xen-utils-wrapper) find them, and libxl looks for QEMU where Debian's
  does (/usr/libexec/xen-qemu-system-i386).  No stubdom, docs, OCaml, Go,
  XSM policy, PV shim or qemu-traditional: the lab uses none of them.
- ``qemu``: qemu-system-i386 as Debian's qemu-system-xen (Xen only, no TCG
  or KVM, target i386-softmmu) minus SPICE, USB redirection, 9p and audio,
  which the lab's guests do not use; VNC stays because libxl asks for it
  unless a guest turns it off.  Built against Debian's libxen-dev (the same
  4.17 libraries the tools build).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

RECIPE_VERSION = 1      # bump when a recipe changes how it compiles (new object trees)
INSTALL_VERSION = 2     # bump when only what a component installs changes (new component keys)
XEN_LEAF = "xen-4.17"   # Debian's per-version folder under /usr/lib
MULTIARCH = "x86_64-linux-gnu"
QEMU_PATH = "usr/libexec/xen-qemu-system-i386"   # where Debian's libxl runs QEMU from


@dataclass(frozen=True)
class Recipe:
    name: str
    package: str                       # Debian source package it builds from
    debs: tuple[str, ...]              # Debian packages the build needs
    configure: tuple[tuple[str, ...], ...] = ()  # commands run once per work tree
    build: tuple[tuple[str, ...], ...] = ()      # commands run for every build
    options: dict = field(default_factory=dict)  # recorded in the manifest and the key

    def relevant(self, path: str) -> bool:
        """Does a change to ``path`` (relative to the source root) change this component?"""
        top = path.split("/", 1)[0]
        if self.name == "xen":
            return top not in ("tools", "docs", "stubdom")
        if self.name == "tools":
            if top == "xen":
                return path.startswith("xen/include/public/")
            return top not in ("docs", "stubdom", "debian")
        return True


COMMON_DEBS = ("build-essential", "bison", "flex", "python3", "lsb-release", "patch")

TOOLS_CONFIGURE = (
    "--disable-stubdom", "--disable-docs", "--disable-qemu-traditional", "--disable-rombios",
    "--disable-ocamltools", "--disable-golang", "--disable-xsmpolicy", "--disable-pvshim",
    "--prefix=/usr", "--includedir=/usr/include", f"--libdir=/usr/lib/{MULTIARCH}",
    f"--with-libexec-libdir-suffix=/{MULTIARCH}", "--sysconfdir=/etc", "--localstatedir=/var",
    f"--with-libexec-leaf-dir={XEN_LEAF}",
    f"--with-system-qemu=/{QEMU_PATH}",
    "--with-system-seabios=/usr/share/seabios/bios-256k.bin",
)

QEMU_CONFIGURE = (
    "--prefix=/usr", "--sysconfdir=/etc", "--libexecdir=/usr/lib/qemu", "--localstatedir=/var",
    "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
    "--disable-install-blobs", "--disable-docs", "--disable-tools", "--without-default-features",
    "--enable-xen", "--enable-xen-pci-passthrough", "--target-list=i386-softmmu",
    "--disable-tcg", "--disable-kvm", "--audio-drv-list=", "--enable-vnc",
    # QEMU 7.2 requires libfdt for i386-softmmu (its microvm machine).
    "--enable-fdt=system",
)


def _installed(deb: str) -> str:
    """The installed version of a Debian package ("" when absent): part of a
    component's options, so an upgrade of what it links against changes its key."""
    run = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", deb], capture_output=True, text=True)
    return run.stdout.strip() if run.returncode == 0 else ""


def recipes(jobs: int) -> dict[str, Recipe]:
    j = f"-j{jobs}"
    return {
        "xen": Recipe(
            "xen", "xen", COMMON_DEBS,
            configure=(("cp", "debian/xen-kconfig", "xen/.config"),
                       ("make", "-C", "xen", "olddefconfig")),
            build=(("make", "-C", "xen", j, "build"),),
            options={"kconfig": "debian/xen-kconfig + olddefconfig", "make": "make -C xen build"}),
        "tools": Recipe(
            "tools", "xen",
            COMMON_DEBS + ("autoconf", "autotools-dev", "python3-dev", "python3-setuptools", "acpica-tools", "uuid-dev",
                           "libyajl-dev", "libncurses-dev", "zlib1g-dev", "libzstd-dev",
                           "liblzma-dev", "libaio-dev", "libglib2.0-dev", "pkg-config",
                           "gcc-multilib", "seabios"),
            # Debian's patches delete the generated configure scripts and
            # config.sub/guess (its rules copy them from autotools-dev).
            configure=(("cp", "/usr/share/misc/config.sub", "/usr/share/misc/config.guess", "."),
                       ("./autogen.sh",), ("./configure", *TOOLS_CONFIGURE)),
            build=(("make", j, "build-tools"),),
            options={"configure": list(TOOLS_CONFIGURE), "make": "make build-tools"}),
        "qemu": Recipe(
            "qemu", "qemu",
            COMMON_DEBS + ("meson", "ninja-build", "pkg-config", "libglib2.0-dev",
                           "libpixman-1-dev", "zlib1g-dev", "libxen-dev", "libfdt-dev"),
            configure=(("mkdir", "-p", "b"),
                       ("sh", "-c", "cd b && ../configure " + " ".join(
                           f"'{a}'" for a in QEMU_CONFIGURE))),
            build=(("ninja", "-C", "b", j, "qemu-system-i386"),),
            options={"configure": list(QEMU_CONFIGURE), "make": "ninja qemu-system-i386",
                     "xen_libraries": f"libxen-dev {_installed('libxen-dev')}"}),
    }


COMPONENTS = ("xen", "tools", "qemu")


def all_debs() -> list[str]:
    """Every Debian package a build may need (scripts/setup installs them)."""
    return sorted({deb for recipe in recipes(1).values() for deb in recipe.debs}
                  | {"dpkg-dev", "git", "patch"})
