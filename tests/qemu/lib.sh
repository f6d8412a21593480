# Helpers of tests/qemu/run.sh: guests under QEMU (TCG) under `uiommufd run`,
# their serial console and QMP monitor on FIFOs (chardev pipe), so the
# script needs nothing but bash. Sourced; expects $B (build dir), $U (the
# uiommufd binary), $RUN (per-run scratch dir).

declare -A VM_PID VM_DIR VM_QMP_IN VM_QMP_OUT VM_SER_IN VM_CAT

# vm_start NAME QEMU_LAUNCHER "UIOMMUFD ARGS" QEMU ARGS...
# Starts QEMU under `uiommufd trace -f` (every thread; log in
# $RUN/NAME/trace.log) with
# the guest kernel and initramfs, the console on serial FIFOs and QMP on
# FIFOs. Returns when QMP answers and the guest's init is up.
vm_start() {
  local name=$1 qemu=$2 uargs=$3; shift 3
  local d=$RUN/$name
  rm -rf "$d"; mkdir -p "$d"
  mkfifo "$d/ser.in" "$d/ser.out" "$d/qmp.in" "$d/qmp.out"
  # shellcheck disable=SC2086
  env ${VM_ENV:-} "$U" trace -f -o "$d/trace.log" $uargs -- "$qemu" \
    -accel tcg -machine q35 -cpu max -m "${VM_MEM:-256M}" -smp 1 -display none -nic none -vga none \
    -kernel "$B/kernel/vmlinuz" -initrd "$B/initramfs.gz" \
    -append "console=ttyS0 quiet panic=-1 ${VM_APPEND:-}" \
    -chardev pipe,id=ser,path="$d/ser" -serial chardev:ser \
    -qmp pipe:"$d/qmp" \
    "$@" > "$d/qemu.log" 2>&1 &
  VM_PID[$name]=$!
  VM_DIR[$name]=$d
  local fd
  exec {fd}<>"$d/ser.out"; cat <&$fd > "$d/console.log" 2>/dev/null & VM_CAT[$name]=$!; exec {fd}<&-
  exec {fd}<>"$d/ser.in"; VM_SER_IN[$name]=$fd
  exec {fd}<>"$d/qmp.in"; VM_QMP_IN[$name]=$fd
  exec {fd}<>"$d/qmp.out"; VM_QMP_OUT[$name]=$fd
  qmp_read_greeting "$name" || return 1
  qmp "$name" '{"execute":"qmp_capabilities"}' >/dev/null || return 1
  [ -n "${VM_INCOMING:-}" ] && return 0
  wait_console "$name" '=== guest up' "${BOOT_TIMEOUT:-240}"
}

vm_alive() { kill -0 "${VM_PID[$1]}" 2>/dev/null; }

# Read QMP lines until one matching $2 (an extended regex); events seen on
# the way go to events.log. Prints the line.
qmp_wait_line() {
  local name=$1 re=$2 t=${3:-30} line end=$((SECONDS + ${3:-30}))
  while [ $SECONDS -lt $end ]; do
    if IFS= read -r -t 2 line <&"${VM_QMP_OUT[$name]}"; then
      [[ $line == *'"event"'* ]] && echo "$line" >> "${VM_DIR[$name]}/events.log"
      [[ $line =~ $re ]] && { echo "$line"; return 0; }
    elif ! vm_alive "$name"; then
      return 1
    fi
  done
  return 1
}

qmp_read_greeting() { qmp_wait_line "$1" '"QMP"' 30 >/dev/null; }

# qmp NAME JSON: send one command, print its reply; fails on an error reply.
qmp() {
  local name=$1 cmd=$2 reply
  echo "$cmd" >&"${VM_QMP_IN[$name]}"
  reply=$(qmp_wait_line "$name" '"(return|error)"' "${QMP_TIMEOUT:-30}") || { echo "no QMP reply to $cmd" >&2; return 1; }
  echo "$reply" >> "${VM_DIR[$name]}/qmp.log"
  echo "$reply"
  [[ $reply != *'"error"'* ]]
}

# qmp_event NAME EVENT [TIMEOUT]: wait for an event (or find it already seen).
qmp_event() {
  local name=$1 ev=$2 t=${3:-60}
  grep -q "\"event\": *\"$ev\"" "${VM_DIR[$name]}/events.log" 2>/dev/null && return 0
  qmp_wait_line "$name" "\"event\": *\"$ev\"" "$t" >/dev/null
}

# wait_console NAME REGEX [TIMEOUT] [FROM_LINE]
wait_console() {
  local name=$1 re=$2 t=${3:-60} from=${4:-0} end=$((SECONDS + ${3:-60}))
  while [ $SECONDS -lt $end ]; do
    tail -n +"$((from + 1))" "${VM_DIR[$name]}/console.log" 2>/dev/null | tr -d '\r' | grep -Eq -- "$re" && return 0
    vm_alive "$name" || return 1
    sleep 0.2
  done
  return 1
}

console_lines() { wc -l < "${VM_DIR[$1]}/console.log"; }

# guest NAME TAG TIMEOUT COMMAND...: run COMMAND in the guest's shell;
# returns its exit status (124 on timeout). The guest prints its output
# to the console log.
guest() {
  local name=$1 tag=$2 t=$3; shift 3
  local from; from=$(console_lines "$name")
  echo "run $tag $*" >&"${VM_SER_IN[$name]}"
  wait_console "$name" "^=== $tag rc=" "$t" "$from" || return 124
  local rc
  rc=$(tail -n +"$((from + 1))" "${VM_DIR[$name]}/console.log" | tr -d '\r' | sed -n "s/^=== $tag rc=\([0-9]*\).*/\1/p" | tail -1)
  return "${rc:-1}"
}

# Send a line to the guest's console input (a running program's stdin).
guest_input() { echo "$2" >&"${VM_SER_IN[$1]}"; }

vm_stop() {
  local name=$1 i
  [ -n "${VM_PID[$name]:-}" ] || return 0
  if vm_alive "$name"; then
    qmp "$name" '{"execute":"quit"}' >/dev/null 2>&1 || true
    for i in $(seq 50); do vm_alive "$name" || break; sleep 0.1; done
    vm_alive "$name" && kill "${VM_PID[$name]}" 2>/dev/null
  fi
  wait "${VM_PID[$name]}" 2>/dev/null || true
  sleep 0.2; kill "${VM_CAT[$name]}" 2>/dev/null; wait "${VM_CAT[$name]}" 2>/dev/null
  local fd
  for fd in "${VM_SER_IN[$name]}" "${VM_QMP_IN[$name]}" "${VM_QMP_OUT[$name]}"; do exec {fd}>&- 2>/dev/null || true; done
  unset "VM_PID[$name]"
}

vm_stop_all() { local n; for n in "${!VM_PID[@]}"; do vm_stop "$n"; done; }

# What QEMU said (stderr) that a user would read as a warning. Not counted:
# our own banner, and QEMU failing to load optional modules of another
# QEMU build installed on the machine (it also looks in the system's
# module directory; nothing to do with the device).
qemu_warnings() {
  grep -Ei 'warn|error|fail|unsupported|not support' "${VM_DIR[$1]}/qemu.log" |
    grep -Ev '^uiommufd: /dev/vfio|(initialize|open) module|modules from the same build' || true
}
