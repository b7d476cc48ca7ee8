#!/bin/sh
# Builds and runs the two checks of this series against a built Xen tools
# tree (the source root of a tree where `make build-tools` ran with the
# series applied, e.g. xenhil's build-cache work tree tools-*/src).
#   lab/series/device-models/xen/tests/run.sh TREE [N_RANDOM]
set -eu
TREE=$(cd "$1" && pwd); N=${2:-3000}
HERE=$(cd "$(dirname "$0")" && pwd); OUT=${TMPDIR:-/tmp}/dm-tests.$$
mkdir -p "$OUT"; T=$TREE/tools
LIBS="toollog ctrl call evtchn gnttab foreignmemory devicemodel guest store hypfs toolcore light util"
RPL=""; LDP=""
for l in $LIBS; do RPL="$RPL -Wl,-rpath-link,$T/libs/$l"; LDP="$LDP:$T/libs/$l"; done
export LD_LIBRARY_PATH="${LDP#:}"
gcc -Wall -I"$T/include" "$HERE/dm_parse_check.c" -L"$T/libs/util" -L"$T/libs/light" \
    -lxlutil -lxenlight $RPL -o "$OUT/dm_parse_check"
# dm_args_check includes libxl_dm.c: compile it like libxl (its generated headers, config.h)
(cd "$T/libs/light" && gcc -no-pie -std=gnu99 -O2 -fno-strict-aliasing -D__XEN_TOOLS__ \
    -D_LARGEFILE_SOURCE -D_LARGEFILE64_SOURCE -DCONFIG_PCI_SUPP_LEGACY_IRQ \
    -D__XEN_INTERFACE_VERSION__=__XEN_LATEST_INTERFACE_VERSION__ -pthread \
    -include "$TREE/tools/config.h" -I"$T/include" -I. "$HERE/dm_args_check.c" libxenlight.a \
    $(for l in $LIBS; do printf -- '-L%s ' "$T/libs/$l"; done) $RPL \
    -lxentoollog -lxenctrl -lxenguest -lxenstore -lxenevtchn -lxendevicemodel \
    -lxenforeignmemory -lxengnttab -lxencall -lxenhypfs -lxentoolcore -lyajl -luuid -lutil \
    -o "$OUT/dm_args_check")
"$OUT/dm_args_check" > "$OUT/dm_args_check.out"
diff -u "$HERE/dm_args_check.out" "$OUT/dm_args_check.out" && echo "dm_args_check: same as dm_args_check.out"
cd "$HERE/../../../../.." && .venv/bin/python lab/series/device-models/xen/tests/parser_diff.py \
    "$OUT/dm_parse_check" "$N"
