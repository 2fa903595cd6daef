#!/usr/bin/env bash
# Build benchmark: one large image (bench/build/make-large-image.sh, ≥ 300 MB uncompressed)
# built (a) by `hyperbuild` and (b) by the reference pipeline of standard tools that makes the same
# kind of bundle: `umoci unpack` + size estimate + `mkfs.ext4 -d` + cpio initramfs + sha256 +
# `tar cf`. Warm cache: one untimed run of each first, then N timed runs of each, alternating.
# Wall time and peak RSS come from /usr/bin/time (%e %M); for the pipeline, times are summed
# over its steps and the peak RSS is the largest of its steps.
#
# Usage: bench/build/run.sh [--runs N] [--write-doc]
#   --write-doc   also replace the "## Build: hyperbuild vs umoci + mkfs.ext4" section of
#                 docs/BENCHMARKS.md with the results
# Environment: HYPERBUILD (default: target/release/hyperbuild, or $CARGO_TARGET_DIR/release/),
#   KERNEL (default: the cached build of kernel-fragments/), INIT (default: the static init built
#   by scripts/setup), WORK (scratch directory, default: a temp dir under /var/tmp; the same
#   filesystem for both contenders).
# Needs: umoci, mkfs.ext4 (e2fsprogs ≥ 1.43), cpio, tar, /usr/bin/time (package time), root.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
runs=3
write_doc=0
while (($#)); do
  case $1 in
    --runs) runs=${2:?--runs N}; shift 2 ;;
    --write-doc) write_doc=1; shift ;;
    *) echo "usage: $0 [--runs N] [--write-doc]" >&2; exit 2 ;;
  esac
done

die() { echo "bench/build: $*" >&2; exit 1; }
for tool in umoci mkfs.ext4 cpio tar sha256sum; do
  command -v "$tool" >/dev/null || die "$tool missing"
done
[[ -x /usr/bin/time ]] || die "/usr/bin/time missing (apt-get install time)"

target=${CARGO_TARGET_DIR:-$repo/target}
hyperbuild=${HYPERBUILD:-$target/release/hyperbuild}
[[ -x $hyperbuild ]] || die "no hyperbuild at $hyperbuild (cargo build --release -p builder, or set HYPERBUILD)"
kernel=${KERNEL:-$(bash "$repo/kernel-fragments/build-kernel.sh" | tail -n1)}
[[ -f $kernel ]] || die "no kernel at $kernel (set KERNEL)"
init=${INIT:-$target/x86_64-unknown-linux-gnu/guest/hyperpod-init}
[[ -f $init ]] || die "no static init at $init (scripts/setup, or set INIT)"

image=$(bash "$repo/bench/build/make-large-image.sh")
ref=${image#oci:}           # DIR:TAG
layout=${ref%:*}

work=${WORK:-$(mktemp -d /var/tmp/hyperpod-bench-build.XXXXXX)}
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
log="$work/log"
: >"$log"

# time_step NAME CMD...: runs CMD under /usr/bin/time, appends "NAME SECONDS KIB" to $log.
time_step() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/t" "$@"
  echo "$name $(cat "$work/t")" >>"$log"
}

run_hyperbuild() {
  rm -f "$work/hb.pod"
  time_step hyperbuild "$hyperbuild" "$image" -o "$work/hb.pod" --kernel "$kernel" --init "$init" -q >/dev/null
}

# The reference pipeline. Size rule as ours: file data blocks + one inode per entry (+256 spare)
# + 16 MiB free, plus metadata slack for mkfs's bitmaps, group descriptors and extent blocks.
run_pipeline() {
  local p="$work/pipe"
  rm -rf "$p"; mkdir -p "$p/initramfs/dev"
  time_step unpack umoci unpack --image "$ref" "$p/bundle" >/dev/null
  time_step size bash -c '
    blocks=$(du -s -B4096 "$1" | cut -f1)
    entries=$(find "$1" | wc -l)
    inodes=$((entries + 256))
    kib=$(( (blocks * 4 + inodes / 4 + 16384) * 103 / 100 + 4096 ))
    echo "$kib $inodes" >"$2"' _ "$p/bundle/rootfs" "$p/size"
  read -r kib inodes <"$p/size"
  time_step mkfs mkfs.ext4 -q -F -d "$p/bundle/rootfs" -b 4096 -N "$inodes" \
    -O ^has_journal,metadata_csum -E root_owner=0:0 "$p/rootfs.ext4" "${kib}k" >/dev/null
  cp "$init" "$p/initramfs/init"
  # The run spec (its content does not matter for the timing; ours is a few hundred bytes too).
  echo '{"entrypoint":["/usr/bin/python3"],"cmd":["-c","print(\"hello\")"],"working_dir":"/"}' >"$p/initramfs/spec.json"
  time_step cpio bash -c 'cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet >"$2"' _ "$p/initramfs" "$p/initramfs.cpio"
  cp "$kernel" "$p/kernel"
  time_step manifest bash -c 'cd "$1" && sha256sum kernel initramfs.cpio rootfs.ext4 >manifest.json' _ "$p"
  time_step tar tar cf "$p/app.tar" -C "$p" manifest.json kernel initramfs.cpio rootfs.ext4
  rm -rf "$p/bundle"
}

# Facts about the image (from the pipeline's unpack).
p="$work/facts"
umoci unpack --image "$ref" "$p" >/dev/null
img_bytes=$(du -s -b --apparent-size "$p/rootfs" | cut -f1)
img_files=$(find "$p/rootfs" -type f | wc -l)
img_entries=$(find "$p/rootfs" | wc -l)
rm -rf "$p"
layer_bytes=$(du -s -b "$layout/blobs" | cut -f1)

echo "image: $image: $img_bytes bytes uncompressed, $img_files files ($img_entries entries), layout $layer_bytes bytes" >&2
echo "warm-up (untimed)..." >&2
run_hyperbuild; run_pipeline
: >"$log"
loads=()
for ((i = 1; i <= runs; i++)); do
  loads+=("$(cut -d' ' -f1 /proc/loadavg)")
  echo "run $i/$runs (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  run_hyperbuild
  run_pipeline
done
loads+=("$(cut -d' ' -f1 /proc/loadavg)")
pod_bytes=$(stat -c %s "$work/hb.pod")
pipe_bytes=$(stat -c %s "$work/pipe/app.tar")

# Aggregate: per run, hyperbuild (s, KiB) and pipeline (sum of steps, max of steps).
table=$(awk -v runs="$runs" '
  $1 == "hyperbuild" { n++; hs[n] = $2; hm[n] = $3; next }
  { ps[n] += $2; if ($3 > pm[n]) pm[n] = $3; step[$1] += $2; if ($3 > stepm[$1]) stepm[$1] = $3 }
  END {
    printf "| run | hyperbuild s | hyperbuild peak RSS MiB | pipeline s | pipeline peak RSS MiB | speed-up |\n"
    printf "|---|---|---|---|---|---|\n"
    for (i = 1; i <= n; i++) {
      printf "| %d | %.2f | %.1f | %.2f | %.1f | %.1f× |\n", i, hs[i], hm[i] / 1024, ps[i], pm[i] / 1024, ps[i] / hs[i]
      th += hs[i]; tp += ps[i]; if (hm[i] > mh) mh = hm[i]; if (pm[i] > mp) mp = pm[i]
      if (i == 1 || hs[i] < bh) bh = hs[i]; if (i == 1 || ps[i] < bp) bp = ps[i]
    }
    printf "| mean | %.2f | %.1f (max) | %.2f | %.1f (max) | %.1f× |\n", th / n, mh / 1024, tp / n, mp / 1024, tp / th
    printf "| best | %.2f | | %.2f | | %.1f× |\n", bh, bp, bp / bh
    printf "\nPipeline steps (mean s / peak RSS MiB over %d runs):", n
    split("unpack size mkfs cpio manifest tar", order, " ")
    for (k = 1; k <= 6; k++) printf " %s %.2f / %.1f;", order[k], step[order[k]] / n, stepm[order[k]] / 1024
    printf "\n"
  }' "$log")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ram=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
hb_version=$("$hyperbuild" --version)
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$repo" diff --quiet HEAD -- builder pod 2>/dev/null || commit="$commit + uncommitted changes"
report=$(cat <<REPORT
## Build: hyperbuild vs umoci + mkfs.ext4

Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`bench/build/run.sh --runs $runs\` on $(nproc) CPUs ($cpu), $ram RAM,
$(uname -sr); load average (1 min) during the runs: ${loads[*]}.

Image: \`make-large-image.sh\` — Debian bookworm (mmdebstrap \`--variant=apt\` + python3, perl, gcc-12,
g++-12, make, git), one layer imported with umoci: **$img_bytes bytes** uncompressed, **$img_files files**
($img_entries entries), $layer_bytes bytes as an OCI layout. Warm cache (one untimed run of each first; the
layout is on local disk in the page cache).

- (a) \`$hb_version\` (tree $commit): \`hyperbuild oci:LAYOUT:large -o app.pod --kernel K --init I -q\` (release build)
  → $pod_bytes bytes.
- (b) \`umoci unpack\` + size estimate (\`du\`, \`find\`) + \`mkfs.ext4 -q -d rootfs -b 4096 -N INODES
  -O ^has_journal,metadata_csum -E root_owner=0:0 img SIZE\` + \`cpio -o -H newc\` (init + spec) +
  \`sha256sum\` of the sections + \`tar cf\` → $pipe_bytes bytes. Time = sum of the steps; peak RSS = largest step.

$table

Targets: ≥ 5× faster than (b), peak RSS ≤ 256 MiB.

<!-- end of bench/build/run.sh output; notes below are kept on rewrite -->
REPORT
)
echo
echo "$report"

if ((write_doc)); then
  doc="$repo/docs/BENCHMARKS.md"
  [[ -f $doc ]] || printf '# Benchmarks\n' >"$doc"
  # Replace our section (from its heading to the next "## " heading) or append it.
  REPORT="$report" python3 - "$doc" <<'PY'
import os, re, sys
path = sys.argv[1]
text = open(path).read()
section = os.environ["REPORT"].rstrip("\n") + "\n"
heading = r"^## Build: hyperbuild vs umoci \+ mkfs\.ext4\n"
# Our generated part ends at the marker line when there is one (hand-written notes follow it),
# else at the next "## " heading.
marked = re.compile(heading + r".*?^<!-- end of bench/build/run\.sh output[^\n]*\n", re.S | re.M)
whole = re.compile(heading + r".*?(?=^## |\Z)", re.S | re.M)
m = marked.search(text)
if m and not re.search(r"^## ", text[m.start() + 3 : m.end()], re.M):
    text = text[: m.start()] + section + text[m.end() :]
elif whole.search(text):
    text = whole.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
else:
    text = text.rstrip("\n") + "\n\n" + section
tmp = path + ".tmp"
open(tmp, "w").write(text)
os.replace(tmp, path)
PY
  echo "wrote $doc" >&2
fi
