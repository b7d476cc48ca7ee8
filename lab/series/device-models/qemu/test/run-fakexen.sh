#!/bin/sh
# Run a built xen-qemu-system-i386 under fakexen (no Xen needed) with
# libxl-like command lines of the split qserial+qnet+qall and of the
# unsplit single model, and print what each model registers with Xen.
#   run-fakexen.sh DIST_TREE [OUT_DIR]
set -u
DIST=$1
OUT=${2:-/tmp/fakexen-out}
QEMU=$DIST/install/usr/libexec/xen-qemu-system-i386
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
cc -O1 -Wall -shared -fPIC -o "$OUT/fakexen.so" "$HERE/fakexen.c" || exit 1
truncate -s 16M "$OUT/disk.img"
# Stand-in option ROMs (the host may lack Debian's firmware packages):
# 64 KiB with the 0x55aa signature, enough for QEMU to load them.
mkdir -p "$OUT/roms"
for rom in vgabios-cirrus.bin vgabios-stdvga.bin efi-e1000.rom; do
    python3 -c 'import sys; sys.stdout.buffer.write(b"\x55\xaa\x80" + bytes(65533))' > "$OUT/roms/$rom"
done

COMMON="-L $OUT/roms -xen-domid 5 -nodefaults -no-user-config -display none -machine xenfv,suppress-vmdesc=on -m 128 -smp 2,maxcpus=2"
UI="-device cirrus-vga,vgamem_mb=8 -usb -device usb-tablet"
IDE="-drive file=$OUT/disk.img,if=ide,index=0,media=disk,format=raw,cache=writeback"
SERIAL="-serial null"
NIC="-device e1000,id=nic1,mac=00:16:3e:00:00:01,addr=0x4"

run() {   # name server-id args...
    name=$1 id=$2; shift 2
    echo "\$ xen-qemu-system-i386 $*" > "$OUT/$name.log"
    LD_PRELOAD=$OUT/fakexen.so FAKEXEN_SERVER_ID=$id timeout -s TERM 4 \
        "$QEMU" $COMMON "$@" -trace 'enable=xen_dm_*' >> "$OUT/$name.log" 2>&1
    echo "== $name: $(grep -c 'fakexen: map ' "$OUT/$name.log") ranges registered"
}

run single 0 $UI $IDE $SERIAL $NIC
run qserial 1 -accel xen,dm-id=0,dm-classes=serial $SERIAL
run qnet 2 -accel xen,dm-id=1,dm-classes= $NIC
run qall 3 -accel xen,dm-id=2,dm-classes=ui:audio:ide $UI $IDE

# BARs: program them through the qtest protocol (no guest), as hvmloader
# would, and see which model registers them.  qnet: e1000 00:04.0 BAR0,
# BAR1 and its ROM BAR (kept in qnet's own memory: readl shows the ROM's
# 55 aa signature); qide: piix3-ide 00:01.1 BAR4 (bus master DMA ports).
bars() {   # name server-id qtest-commands args...
    name=$1 id=$2 cmds=$3; shift 3
    echo "\$ xen-qemu-system-i386 $* -qtest stdio  <<< $cmds" > "$OUT/$name.log"
    printf "$cmds" | (cat; sleep 1.5) | LD_PRELOAD=$OUT/fakexen.so FAKEXEN_SERVER_ID=$id \
        timeout -s TERM 3 "$QEMU" $COMMON "$@" -qtest stdio >> "$OUT/$name.log" 2>&1
    echo "== $name: $(grep -c 'fakexen: map ' "$OUT/$name.log") ranges registered"
}
bars qnet-bars 2 'outl 0xcf8 0x80002010\noutl 0xcfc 0xf1000000\noutl 0xcf8 0x80002014\noutl 0xcfc 0xc000\noutl 0xcf8 0x80002030\noutl 0xcfc 0xf2000001\noutl 0xcf8 0x80002004\noutw 0xcfc 0x0003\nreadl 0xf2000000\n' \
    -accel xen,dm-id=1,dm-classes= $NIC
bars qide-bars 3 'outl 0xcf8 0x80000920\noutl 0xcfc 0xc100\noutl 0xcf8 0x80000904\noutw 0xcfc 0x0001\n' \
    -accel xen,dm-id=0,dm-classes=ide $IDE
