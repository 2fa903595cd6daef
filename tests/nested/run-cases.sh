# Runs engine-parity cases with one hyperlaunch engine and reports each on one line. Sourced by
# busybox sh, inside the nested machine (tests/nested/init.sh, engine kvm) and on the host
# (tests/src/nested.rs, engine qemu), so both engines see the same commands.
#
# Environment: ENGINE (kvm|qemu), HL (the hyperlaunch binary), PODS (directory of *.pod),
# CASES (directory of case files), WORK (scratch directory), REPORT (file the lines go to),
# PTYRUN (tests/nested/ptyrun.c, built static).
# A case file NAME.case sets: `opts` and `args` (the command line: `set --` lists, eval'd),
# `tty` (when set: ptyrun's options, a `set --` list; the launcher runs on a terminal of its
# own and stdout is what that terminal shows), `pod`, `signal` (sent once "ready" is on the
# app's stdout, or SIG@SECONDS after the start; empty: none), `setup`/`post` (shell run
# in the case's directory before and after the launch; post's output is compared too),
# `during` (shell run there once "ready" is on the app's stdout, before the signal by name is
# sent; its output comes first in post's) and may
# have NAME.stdin beside it (the launcher's stdin, or with `tty` ptyrun's: typed input; else
# /dev/null).
# Report line: NESTED-CASE NAME engine=E exit=N ms=T stdout=HEX stderr=HEX post=HEX

nested_hex() { od -An -v -tx1 < "$1" | tr -d " \n"; }

nested_now_ms() { # Milliseconds since boot, from /proc/uptime.
  read -r up _ < /proc/uptime
  echo "${up%.*}${up#*.}0"
}

nested_run_case() { # nested_run_case FILE
  name=$(basename "$1" .case)
  dir="$WORK/$name"
  rm -rf "$dir"
  mkdir -p "$dir"
  opts='' args='' tty='' pod='' signal='' setup='' during='' post=''
  . "$1"
  input=/dev/null
  [ -f "$CASES/$name.stdin" ] && input="$CASES/$name.stdin"
  (
    cd "$dir" || exit 1
    eval "$setup"
    eval "set -- $opts \"\$PODS/\$pod\" ${args:+-- $args}"
    if [ -n "$tty" ]; then
      eval "set -- \"\$PTYRUN\" $tty -- \"\$HL\" --engine \"\$ENGINE\" \"\$@\""
    else
      set -- "$HL" --engine "$ENGINE" "$@"
    fi
    t0=$(nested_now_ms)
    if [ -z "$signal" ]; then
      "$@" < "$input" > stdout 2> stderr
      echo $? > code
    else
      "$@" < "$input" > stdout 2> stderr &
      pid=$!
      case "$signal" in
        *@*) sleep "${signal#*@}" ;; # SIG@SECONDS: that long after the start (during the boot)
        *)
          i=0
          while ! grep -q ready stdout 2>/dev/null && [ $i -lt 1200 ]; do
            sleep 0.1
            i=$((i + 1))
          done
          (eval "$during") > during 2>&1
          ;;
      esac
      kill -"${signal%@*}" "$pid"
      wait "$pid"
      echo $? > code
    fi
    t1=$(nested_now_ms)
    echo $((t1 - t0)) > ms
    { [ -f during ] && cat during; (eval "$post"); } > post 2>&1
  )
  echo "NESTED-CASE $name engine=$ENGINE exit=$(cat "$dir/code") ms=$(cat "$dir/ms") stdout=$(nested_hex "$dir/stdout") stderr=$(nested_hex "$dir/stderr") post=$(nested_hex "$dir/post")" >> "$REPORT"
}

for f in "$CASES"/*.case; do
  [ -f "$f" ] || continue
  nested_run_case "$f"
done
