#!/usr/bin/env bash
# build-kernel.sh: build hyperpod's guest kernel (an ELF vmlinux with a PVH entry) from the config
# fragments next to this script, and cache it by a hash of those fragments.
#
# Usage: build-kernel.sh [--source DIR] [--fragments DIR] [--diagnostic] [--check-only] [--jobs N]
#   --source DIR     any kernel source tree (default: Debian's /usr/src/linux-source-6.12.tar.xz,
#                    unpacked once into the cache)
#   --fragments DIR  the fragments directory (default: the directory holding this script)
#   --diagnostic     the diagnostic variant: <fragments>/diagnostic/*.conf on top (KALLSYMS,
#                    printk time...) for bench/boot.sh --diagnostic; never the pods' kernel
#   --check-only     merge the fragments and run the strict check, build nothing, cache nothing
#   --jobs N         parallel make jobs (default: nproc)
# On success the last line of stdout is the absolute path of the cached vmlinux (--check-only:
# the path of a kept copy of the checked .config). Progress and errors go to stderr.
#
# The configuration: ARCH=x86_64 `make tinyconfig`, then every option line of
# <fragments>/common/*.conf and then <fragments>/x86_64/*.conf (each set in LC_ALL=C order; with
# --diagnostic then <fragments>/diagnostic/*.conf) replaces that option in .config, then
# `make olddefconfig`. Strict check: every option a fragment
# names must exist in the tree's Kconfig files and end up in the final .config exactly as asked
# ("# CONFIG_X is not set" is also met by X being absent because its dependencies are off);
# an option named twice, an option line without a "# why: ..." comment line right above it, or
# any other kind of line fails the build too.
#
# Patches: <fragments>/patches/*.patch (LC_ALL=C order, `patch -p1`), each with a header saying
# what it changes, why and what it saves, are applied to a hard-linked copy of the source tree,
# src/<name>+p<h> (h = 12 hex of sha256 of the patch files in that order), made once under a lock;
# the pristine tree is not modified (patch replaces the files it changes). A patch that does not
# apply (say, after a Debian update of linux-source-6.12) fails the build and names the patch.
#
# Cache key (the Rust builder recomputes it to find the kernel; keep the two in step):
#   Take every regular file under the fragments directory, recursively (symlinks and other
#   non-regular files are skipped, not followed), this script included, except those under its
#   top-level diagnostic/ directory (taken too with --diagnostic, so the diagnostic variant has
#   its own key and the default key ignores the overlay). Name each by its path
#   relative to that directory, '/'-separated, with no leading "./" (e.g. "common/base.conf",
#   "build-kernel.sh"). Sort the names bytewise (LC_ALL=C sort). Feed one SHA-256, for each file
#   in that order: the relative path's bytes, one NUL byte, the file's bytes, one NUL byte.
#   key16 = the first 16 lowercase hex digits of that digest.
#   version = the dpkg version of package linux-source-6.12 for the default source (for example
#   "6.12.117-1~deb12u1"), or `make -s kernelversion` of the --source tree.
# Cache layout, under ${HYPERPOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperpod}/kernel/:
#   <key16>-<version>/vmlinux     the kernel (only ever appears complete: built aside, renamed in)
#   <key16>-<version>/config      its final .config
#   by-fragments/<key16>          symlink -> ../<key16>-<version> (the newest build of those fragments
#                                 from Debian's source: hyperbuild's default kernel; --source builds
#                                 leave it alone)
#   src/<version>/                the unpacked Debian source (default source only)
#   src/<name>+p<h>/              that source (or a --source tree) with the patches applied
#   build/<version>/              out-of-tree build directory, kept so that a fragment change only
#                                 rebuilds what it touches (--source trees: build/tree-<h>-<version>,
#                                 h = 12 hex of sha256 of the tree's absolute path; --diagnostic:
#                                 the same name + "-diagnostic", first copied from the default
#                                 one so that it starts incremental); rm -rf any time
#   check/                        --check-only scratch directories and the last checked configs
# If <key16>-<version>/vmlinux exists the script prints its path and exits 0 at once. Builds
# take a lock (flock) on their build directory, so two concurrent runs build once.
set -euo pipefail

ARCH_DIR=x86_64
DEBIAN_TARBALL=/usr/src/linux-source-6.12.tar.xz
DEBIAN_PACKAGE=linux-source-6.12

die() {
	echo "build-kernel.sh: $*" >&2
	exit 1
}
say() { echo "build-kernel.sh: $*" >&2; }

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=""
fragments_dir="$script_dir"
check_only=0
diagnostic=0
jobs=$(nproc)

while [ $# -gt 0 ]; do
	case "$1" in
	--source)
		[ $# -ge 2 ] || die "--source needs a directory"
		source_dir=$2
		shift 2
		;;
	--fragments)
		[ $# -ge 2 ] || die "--fragments needs a directory"
		fragments_dir=$2
		shift 2
		;;
	--check-only)
		check_only=1
		shift
		;;
	--diagnostic)
		diagnostic=1
		shift
		;;
	--jobs)
		[ $# -ge 2 ] || die "--jobs needs a number"
		jobs=$2
		shift 2
		;;
	-h | --help)
		sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument: $1" ;;
	esac
done

[ -d "$fragments_dir" ] || die "fragments directory not found: $fragments_dir"
fragments_dir=$(cd "$fragments_dir" && pwd)
[ -d "$fragments_dir/common" ] || die "no common/ in fragments directory $fragments_dir"
[ -d "$fragments_dir/$ARCH_DIR" ] || die "no $ARCH_DIR/ in fragments directory $fragments_dir"
[ "$diagnostic" = 0 ] || [ -d "$fragments_dir/diagnostic" ] ||
	die "no diagnostic/ in fragments directory $fragments_dir"
case "$jobs" in '' | *[!0-9]*) die "--jobs: not a number: $jobs" ;; esac

cache_root=${HYPERPOD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyperpod}
kcache="$cache_root/kernel"
mkdir -p "$kcache"

# --- cache key -------------------------------------------------------------------------------
fragments_key() {
	(
		cd "$fragments_dir"
		if [ "$diagnostic" = 1 ]; then
			find . -type f -print0
		else
			find . -path ./diagnostic -prune -o -type f -print0
		fi | sed -z 's|^\./||' | LC_ALL=C sort -z |
			while IFS= read -r -d '' rel; do
				printf '%s\0' "$rel"
				cat -- "$rel"
				printf '\0'
			done
	) | sha256sum | cut -c1-16
}
key16=$(fragments_key)

# --- source and its version ------------------------------------------------------------------
default_source=1
if [ -n "$source_dir" ]; then
	default_source=0
	[ -f "$source_dir/Makefile" ] && [ -f "$source_dir/Kconfig" ] ||
		die "not a kernel source tree: $source_dir"
	source_dir=$(cd "$source_dir" && pwd)
	version=$(make -s -C "$source_dir" kernelversion 2>/dev/null) ||
		die "cannot read the kernel version of $source_dir"
else
	[ -f "$DEBIAN_TARBALL" ] || die "$DEBIAN_TARBALL not found (apt-get install $DEBIAN_PACKAGE, or pass --source DIR)"
	version=$(dpkg-query -W -f='${Version}' "$DEBIAN_PACKAGE" 2>/dev/null) ||
		die "package $DEBIAN_PACKAGE is not installed"
fi
case "$version" in '' | */* | *[[:space:]]*) die "unusable kernel version: '$version'" ;; esac

out_name="$key16-$version"
out_dir="$kcache/$out_name"
if [ "$check_only" = 0 ] && [ -f "$out_dir/vmlinux" ]; then
	echo "$out_dir/vmlinux"
	exit 0
fi

# Runs function $2 once under the source cache's lock, unless file $1 exists (looked at again
# under the lock: another run may have just made it).
locked_once() {
	[ ! -f "$1" ] || return 0
	mkdir -p "$kcache/src"
	exec 8>"$kcache/src/.lock"
	flock 8
	if [ ! -f "$1" ]; then "$2"; fi
	flock -u 8
	exec 8>&-
}

# The cache's name for a --source tree: its path's hash and its version.
tree_name() {
	printf 'tree-%s-%s' "$(printf '%s' "$1" | sha256sum | cut -c1-12)" "$version"
}

# Unpack the Debian source once, into a temp dir renamed into place.
unpack_debian() {
	say "unpacking $DEBIAN_TARBALL ($version)"
	unpack=$(mktemp -d "$kcache/src/.unpack.XXXXXX")
	tar -xJf "$DEBIAN_TARBALL" -C "$unpack"
	top=$(find "$unpack" -mindepth 1 -maxdepth 1 -type d)
	[ "$(printf '%s\n' "$top" | wc -l)" = 1 ] && [ -f "$top/Makefile" ] ||
		die "unexpected layout in $DEBIAN_TARBALL"
	rm -rf "$src_dir"
	mv -T "$top" "$src_dir"
	rm -rf "$unpack"
}
if [ -z "$source_dir" ]; then
	src_dir="$kcache/src/$version"
	locked_once "$src_dir/Makefile" unpack_debian
	source_dir=$src_dir
fi

# --- patches ---------------------------------------------------------------------------------
# The tree the patches are applied to is named after the source (its version, or the --source
# tree's path hash) and the patches' hash, so each combination is made once.
mapfile -t patch_files < <(
	cd "$fragments_dir"
	[ ! -d patches ] || find patches -maxdepth 1 -type f -name '*.patch' | LC_ALL=C sort
)
apply_patches() {
	say "applying ${#patch_files[@]} patch(es) to a copy of $source_dir"
	copy=$(mktemp -d "$kcache/src/.patch.XXXXXX")
	cp -al "$source_dir/." "$copy/"
	for p in "${patch_files[@]}"; do
		patch -d "$copy" -p1 --batch --forward --quiet --no-backup-if-mismatch \
			-i "$fragments_dir/$p" >&2 ||
			{ rm -rf "$copy"; die "$p does not apply to the kernel source $version"; }
	done
	printf '%s\n' "${patch_files[@]}" >"$copy/.hyperpod-patched"
	rm -rf "$patched_dir"
	mv -T "$copy" "$patched_dir"
}
if [ "${#patch_files[@]}" -gt 0 ]; then
	if [ "$source_dir" = "$kcache/src/$version" ]; then
		base_name=$version
	else
		base_name=$(tree_name "$source_dir")
	fi
	patch_hash=$(cd "$fragments_dir" && cat -- "${patch_files[@]}" | sha256sum | cut -c1-12)
	patched_dir="$kcache/src/$base_name+p$patch_hash"
	locked_once "$patched_dir/.hyperpod-patched" apply_patches
	source_dir=$patched_dir
fi

# --- fragments: parse and validate ------------------------------------------------------------
mapfile -t fragment_files < <(
	cd "$fragments_dir"
	dirs=(common "$ARCH_DIR")
	[ "$diagnostic" = 0 ] || dirs+=(diagnostic)
	for d in "${dirs[@]}"; do
		find "$d" -maxdepth 1 -type f -name '*.conf' | LC_ALL=C sort
	done
)
[ "${#fragment_files[@]}" -gt 0 ] || die "no *.conf fragments in $fragments_dir"

# requested: one line per option, "NAME<TAB>VALUE" (VALUE "n" for "is not set").
requested=$(
	cd "$fragments_dir"
	awk '
		function fail(msg) { printf "%s:%d: %s\n", FILENAME, FNR, msg > "/dev/stderr"; bad = 1 }
		FNR == 1 { prev = "" }
		{
			line = $0
			name = ""; value = ""
			if (match(line, /^CONFIG_[A-Za-z0-9_]+=/)) {
				name = substr(line, 8, RLENGTH - 8); value = substr(line, RLENGTH + 1)
				if (value == "") fail("CONFIG_" name ": empty value")
			} else if (line ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) {
				name = line; sub(/^# CONFIG_/, "", name); sub(/ is not set$/, "", name); value = "n"
			} else if (line ~ /^#/ || line ~ /^[ \t]*$/) {
				prev = line; next
			} else {
				fail("not an option, comment or blank line: " line); prev = line; next
			}
			if (prev !~ /^# why: ./) fail("CONFIG_" name ": no \"# why: ...\" comment line above it")
			if (name in where) fail("CONFIG_" name ": already set in " where[name])
			where[name] = FILENAME ":" FNR
			printf "%s\t%s\n", name, value
			prev = line
		}
		END { exit bad }
	' "${fragment_files[@]}"
) || die "bad fragments in $fragments_dir (see above)"

# --- configure -------------------------------------------------------------------------------
kmake() {
	make -s -C "$source_dir" O="$build_dir" ARCH=x86_64 \
		KBUILD_BUILD_USER=hyperpod KBUILD_BUILD_HOST=hyperpod \
		KBUILD_BUILD_TIMESTAMP='1970-01-01 00:00:00 UTC' KBUILD_BUILD_VERSION=1 "$@"
}

if [ "$check_only" = 1 ]; then
	mkdir -p "$kcache/check"
	build_dir=$(mktemp -d "$kcache/check/$key16.XXXXXX")
	trap 'rm -rf "$build_dir"' EXIT
else
	if [ "$source_dir" = "$kcache/src/$version" ]; then
		build_name=$version
	elif [ "$(dirname "$source_dir")" = "$kcache/src" ]; then
		build_name=$(basename "$source_dir")
	else
		build_name=$(tree_name "$source_dir")
	fi
	if [ "$diagnostic" = 1 ]; then
		default_build="$kcache/build/$build_name"
		build_name="$build_name-diagnostic"
		# Start from a copy of the default build directory (taken under its lock): the first
		# diagnostic build then only recompiles what the overlay changes.
		if [ ! -d "$kcache/build/$build_name" ] && [ -f "$default_build/.config" ]; then
			mkdir -p "$kcache/build"
			exec 9>"$kcache/build/.lock-${build_name%-diagnostic}"
			flock 9
			copy=$(mktemp -d "$kcache/build/.copy-$build_name.XXXXXX")
			cp -a "$default_build/." "$copy/"
			mv -T "$copy" "$kcache/build/$build_name" 2>/dev/null || rm -rf "$copy"
			flock -u 9
			exec 9>&-
		fi
	fi
	build_dir="$kcache/build/$build_name"
	mkdir -p "$build_dir"
	exec 9>"$kcache/build/.lock-$build_name"
	flock 9
	if [ -f "$out_dir/vmlinux" ]; then
		echo "$out_dir/vmlinux"
		exit 0
	fi
fi

say "configuring $version in $build_dir"
kmake tinyconfig >&2
cfg="$build_dir/.config"
# Replace each requested option's line in .config with the fragment's line.
printf '%s\n' "$requested" | awk -F '\t' '
	NR == FNR { want[$1] = $2; order[++n] = $1; next }
	{
		name = ""
		if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) name = substr($0, 8, RLENGTH - 8)
		else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) { name = $0; sub(/^# CONFIG_/, "", name); sub(/ is not set$/, "", name) }
		if (!(name != "" && name in want)) print
	}
	END {
		for (i = 1; i <= n; i++) {
			s = order[i]
			if (want[s] == "n") print "# CONFIG_" s " is not set"
			else print "CONFIG_" s "=" want[s]
		}
	}
' - "$cfg" >"$cfg.merged"
mv "$cfg.merged" "$cfg"
kmake olddefconfig >&2

# --- strict check ----------------------------------------------------------------------------
find "$source_dir" -name 'Kconfig*' -type f -print0 |
	xargs -0 grep -hoE '^[[:space:]]*(menu)?config[[:space:]]+[A-Za-z0-9_]+' |
	awk '{ print $2 }' | LC_ALL=C sort -u >"$build_dir/known-options"
printf '%s\n' "$requested" >"$build_dir/requested-options"
problems=$(
	awk -F '\t' '
		FILENAME == ARGV[1] { known[$1] = 1; next }
		FILENAME == ARGV[2] { want[$1] = $2; order[++n] = $1; next }
		{
			if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) got[substr($0, 8, RLENGTH - 8)] = substr($0, RLENGTH + 1)
			else if ($0 ~ /^# CONFIG_[A-Za-z0-9_]+ is not set$/) { s = $0; sub(/^# CONFIG_/, "", s); sub(/ is not set$/, "", s); got[s] = "n" }
		}
		END {
			for (i = 1; i <= n; i++) {
				s = order[i]; w = want[s]
				if (!(s in known)) { print "CONFIG_" s ": no such option in this kernel"; continue }
				g = (s in got) ? got[s] : "n"
				shown = (s in got) ? (g == "n" ? "is not set" : "=" g) : "absent (dependencies not met)"
				if (g != w) print "CONFIG_" s ": asked " (w == "n" ? "is not set" : "=" w) ", got " shown
			}
		}
	' "$build_dir/known-options" "$build_dir/requested-options" "$cfg"
)
if [ -n "$problems" ]; then
	printf '%s\n' "$problems" | sed 's/^/build-kernel.sh: strict check: /' >&2
	shown=$cfg
	if [ "$check_only" = 1 ]; then
		shown="$kcache/check/$key16.failed.config"
		cp "$cfg" "$shown"
	fi
	die "strict check failed: $(printf '%s\n' "$problems" | wc -l) option(s) not as the fragments ask (config: $shown)"
fi
say "strict check passed: $(printf '%s\n' "$requested" | wc -l) options as asked"

if [ "$check_only" = 1 ]; then
	kept="$kcache/check/$key16.config"
	cp "$cfg" "$kept.tmp.$$"
	mv -f "$kept.tmp.$$" "$kept"
	echo "$kept"
	exit 0
fi

# --- build -----------------------------------------------------------------------------------
say "building vmlinux with $jobs jobs"
start=$(date +%s)
kmake -j"$jobs" vmlinux >&2
say "vmlinux built in $(($(date +%s) - start)) s"

vmlinux="$build_dir/vmlinux"
[ "$(head -c 4 "$vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] || die "$vmlinux is not an ELF file"
# The PVH entry is a Xen ELF note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
# readelf prints it as "Xen  0x00000008  Unknown note type: (0x00000012)" (newer: PHYS32_ENTRY).
readelf -n "$vmlinux" | awk '$1 == "Xen" && ($0 ~ /\(0x00000012\)/ || $0 ~ /PHYS32_ENTRY/) { found = 1 } END { exit !found }' ||
	die "$vmlinux has no PVH entry note (Xen ELF note type 18)"

stage=$(mktemp -d "$kcache/.stage-$out_name.XXXXXX")
chmod 755 "$stage"
cp "$vmlinux" "$stage/vmlinux"
cp "$cfg" "$stage/config"
rm -rf "$out_dir"
mv -T "$stage" "$out_dir"
if [ "$default_source" = 1 ]; then
	mkdir -p "$kcache/by-fragments"
	ln -sfn "../$out_name" "$kcache/by-fragments/.$key16.tmp.$$"
	mv -fT "$kcache/by-fragments/.$key16.tmp.$$" "$kcache/by-fragments/$key16"
fi
say "cached $out_dir ($(stat -c %s "$out_dir/vmlinux") bytes)"
echo "$out_dir/vmlinux"
