#!/bin/busybox sh
# /init of the nested machine (tests/src/nested.rs): Debian's kernel under QEMU TCG with
# `-cpu max`; loads the KVM modules, then runs what /nested/run holds with the KVM engine and
# writes the report lines to the second serial port (ttyS1), apart from the console (ttyS0).
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
stty -F /dev/ttyS1 raw -echo 2>/dev/null
REPORT=/dev/ttyS1
export REPORT
say() { echo "$*" >> "$REPORT"; }
for m in $(cat /nested/modules.load); do
  insmod "/nested/modules/$m.ko" || say "NESTED-ERROR insmod $m failed"
done
if [ -c /dev/kvm ]; then
  say "NESTED-KVM ok $(uname -r) $(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null) $(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"
else
  say "NESTED-ERROR no /dev/kvm after loading the modules"
fi
export HOME=/tmp ENGINE=kvm HL=/bin/hyperlaunch PODS=/pods CASES=/cases WORK=/tmp/work
. /nested/run
say "NESTED-DONE"
sync
poweroff -f
