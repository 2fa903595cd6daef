#!/bin/busybox sh
# /init of the nested machine (tests/src/nested.rs): Debian's kernel under QEMU TCG with
# `-cpu max`; loads the KVM modules, then runs what /nested/run holds with the KVM engine and
# writes the report lines to the second serial port (ttyS1), apart from the console (ttyS0).
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
# The initramfs is rootfs, where pivot_root fails, so passt cannot sandbox itself ("Failed to
# sandbox process"): first move everything onto a tmpfs and switch root into it.
if [ ! -e /.on-tmpfs ]; then
  mkdir -p /newroot
  mount -t tmpfs -o size=90% root /newroot
  for f in /*; do
    case "$f" in /newroot | /proc | /sys | /dev) ;; *) cp -a "$f" /newroot/ ;; esac
  done
  mkdir -p /newroot/proc /newroot/sys /newroot/dev
  touch /newroot/.on-tmpfs
  exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
# Pseudo-terminals for the -t cases (tests/nested/ptyrun.c).
mkdir -p /dev/pts
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
# Loopback: passt maps the pods' gateway to it (the network cases' server listens there).
ip link set lo up
stty -F /dev/ttyS1 raw -echo 2>/dev/null
REPORT=/dev/ttyS1
export REPORT
say() { echo "$*" >> "$REPORT"; }
for m in $(cat /nested/modules.load); do
  params=""
  [ "$m" = dummy ] && params="numdummies=1"
  # MODULE.PARAM=VALUE words of the command line (modprobe's rule; insmod does not read them).
  prefix="$(echo "$m" | tr - _)."
  for w in $(cat /proc/cmdline); do
    case "$w" in "$prefix"*=*) params="$params ${w#"$prefix"}" ;; esac
  done
  insmod "/nested/modules/$m.ko" $params || say "NESTED-ERROR insmod $m $params failed"
done
# A routable interface for passt (it will not start without one): dummy0 with a default
# route. The pods' gateway is still mapped to this machine's loopback.
ip link set dummy0 up && ip addr add 192.0.2.1/24 dev dummy0 &&
  ip route add default via 192.0.2.254 dev dummy0 || say "NESTED-ERROR dummy0 not set up"
if [ -c /dev/kvm ]; then
  say "NESTED-KVM ok $(uname -r) $(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null) $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"
else
  say "NESTED-ERROR no /dev/kvm after loading the modules"
fi
export HOME=/tmp ENGINE=kvm HL=/bin/hyperlaunch PTYRUN=/bin/ptyrun PODS=/pods CASES=/cases WORK=/tmp/work
. /nested/run
say "NESTED-DONE"
sync
poweroff -f
