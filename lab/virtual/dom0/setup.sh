#!/bin/sh
# Runs inside the dom0 tree (chroot, private mount namespace) after the
# overlay and keys are in place.  Makes it a Xen dom0 that boots fast.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

# Xen daemons: Debian's /etc/init.d/xen is the "xencommons" of upstream
# (xenstored, xenconsoled, the dom0 QEMU disk backend); it is enabled by its
# package (rc2.d/S01xen).  Make sure it stays so.
update-rc.d xen defaults >/dev/null
systemctl enable systemd-networkd.service ssh.service serial-getty@hvc0.service

# Boot speed: nothing periodic, nothing waiting for the network, no
# autostart/save of domains at boot/shutdown (tests own their guests).
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
            e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer \
            systemd-networkd-wait-online.service systemd-pstore.service \
            xendomains.service getty@tty1.service remote-fs.target \
            systemd-timesyncd.service logrotate.timer getty-static.service; do
    systemctl mask "$unit" >/dev/null 2>&1 || true
done
systemctl set-default multi-user.target >/dev/null

# Only our ed25519 host key (the inventory pins it).
find /etc/ssh -name 'ssh_host_*' ! -name 'ssh_host_ed25519_key*' -delete
chmod 600 /etc/ssh/ssh_host_ed25519_key /root/.ssh/id_ed25519
chmod 700 /root/.ssh
chmod 644 /root/.ssh/authorized_keys /etc/ssh/ssh_host_ed25519_key.pub

# Small initrd (MODULES=list, see /etc/initramfs-tools/conf.d/xenhil).
update-initramfs -u -k all >/dev/null

# Nothing of the package cache in the image.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /var/log/apt/*
