#!/usr/bin/env bash
# What running the ARMv6 binary (the armhf .deb's) costs on a Pi 2 to 5,
# against an ARMv7 build: both replay the same recorded readings through
# the same rules (`outpost rules replay`: JSON parsing, the rule engine,
# alert formatting; no I/O to speak of) on an emulated Cortex-A7 (Pi 2),
# and a qemu plugin counts the guest instructions each executes, and how
# many of them are memory barriers (ARMv6: `mcr p15, 0, Rt, c7, c10, 5`;
# ARMv7: `dmb`/`dsb`).
#
#   cross/build.sh armv7 armv6     # the two release binaries
#   cross/isa-cost.sh [ARMV7_BIN [ARMV6_BIN]]
#
# Instruction counts repeat (to a few thousand in billions) whatever else
# the machine does; qemu's wall-clock times (also printed, best of 3) do
# not, and qemu's cost per instruction is not a Cortex-A7's. Not measured here: what a barrier
# costs on a real core (tens of cycles in hardware; a trap into the kernel
# where a 64-bit kernel emulates them, see packaging/deb/preinst-armhf).
#
# Installs qemu-user (apt) for qemu-arm with plugins; the plugin is built
# with gcc against qemu 7.2's plugin API (version 1, Debian 12's qemu).
set -euo pipefail
cd "$(dirname "$0")/.."

v7=${1:-target/armv7-unknown-linux-gnueabihf/release/outpost}
v6=${2:-target/armv6/arm-unknown-linux-musleabihf/release/outpost}
for b in "$v7" "$v6"; do
  [ -x "$b" ] || { echo "isa-cost.sh: $b is missing (cross/build.sh armv7 armv6)" >&2; exit 2; }
done
need=()
command -v qemu-arm >/dev/null || need+=(qemu-user)
[ -e /usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3 ] || need+=(libc6-armhf-cross)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The plugin: total instructions (per translated block, inline) and the
# barrier instructions (per instruction). Inline counters are exact for a
# single-threaded guest, which `rules replay` is.
cat > "$work/count.c" <<'C'
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef uint64_t qemu_plugin_id_t;
typedef struct {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb)(qemu_plugin_id_t, struct qemu_plugin_tb *);
typedef void (*udata_cb)(qemu_plugin_id_t, void *);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, tb_trans_cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *, enum qemu_plugin_op, void *, uint64_t);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, udata_cb, void *);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;
static uint64_t insns, barriers;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t w;
        if (qemu_plugin_insn_size(insn) != 4) continue;
        memcpy(&w, qemu_plugin_insn_data(insn), 4);
        /* mcr p15, 0, Rt, c7, c10, 5 (ARMv6 dmb) | dmb/dsb (ARMv7, A32) */
        if ((w & 0x0FFF0FFF) == 0x0E070FBA || (w & 0xFFFFFFE0) == 0xF57FF040)
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &barriers, 1);
    }
}

static void at_exit_cb(qemu_plugin_id_t id, void *p) {
    FILE *f = fopen(getenv("ISA_COST_OUT"), "w");
    if (!f) return;
    fprintf(f, "%llu %llu\n", (unsigned long long)insns, (unsigned long long)barriers);
    fclose(f);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit_cb, NULL);
    return 0;
}
C
gcc -O2 -shared -fPIC -fvisibility=hidden -o "$work/count.so" "$work/count.c"

# Two recordings, fixed seeds: a small site (5 greenhouse sensors with
# temperature and humidity, 5 cold-room sensors, a pump that goes silent;
# 16 h at one reading per 5 s each) through config/rules.toml, and 10,000
# sensors (20 readings each) through the same rules.
python3 - "$work" <<'PY'
import json, math, random, sys
work = sys.argv[1]
t0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
random.seed(7)
with open(f"{work}/site.jsonl", "w") as out:
    for step in range(12000):
        ts = t0 + step * 5000
        for i in range(1, 6):
            g = 29 + 4 * math.sin(2 * math.pi * (step * 5 + i * 300) / 3600) + random.gauss(0, 0.3)
            h = 60 + 25 * math.sin(2 * math.pi * (step * 5 + i * 500) / 5400) + random.gauss(0, 1)
            c = 2 + 2.5 * math.sin(2 * math.pi * (step * 5 + i * 200) / 2700) + random.gauss(0, 0.2)
            for sensor, metric, value in ((f"greenhouse/t{i}", "temperature", round(g, 2)),
                                          (f"greenhouse/t{i}", "humidity", round(h, 1)),
                                          (f"coldroom/t{i}", "temperature", round(c, 2))):
                out.write(json.dumps({"ts": ts, "sensor": sensor, "metric": metric, "value": value}) + "\n")
        if step % 300 < 100:
            out.write(json.dumps({"ts": ts, "sensor": "pumphouse/pressure", "metric": "bar", "value": 2.1}) + "\n")
random.seed(11)
with open(f"{work}/many.jsonl", "w") as out:
    for step in range(20):
        for i in range(10000):
            g = 29 + 4 * math.sin(i + step / 3) + random.gauss(0, 0.3)
            out.write(json.dumps({"ts": t0 + step * 10000, "sensor": f"greenhouse/t{i}",
                                  "metric": "temperature", "value": round(g, 2)}) + "\n")
PY

printf '%-22s %-6s %15s %12s %13s %10s\n' workload build instructions "per reading" "barriers/rd" "qemu s"
for w in site many; do
  readings=$(wc -l < "$work/$w.jsonl")
  for arch in armv7 armv6; do
    if [ "$arch" = armv7 ]; then bin=$v7; else bin=$v6; fi
    ISA_COST_OUT="$work/$w-$arch.count" qemu-arm -cpu cortex-a7 -L /usr/arm-linux-gnueabihf \
      -plugin "$work/count.so" "$bin" rules replay --rules config/rules.toml --input "$work/$w.jsonl" \
      >"$work/$w-$arch.alerts" 2>"$work/$w-$arch.err"
    read -r insns barriers < "$work/$w-$arch.count"
    best=""
    for _ in 1 2 3; do
      s=$(date +%s%N)
      qemu-arm -cpu cortex-a7 -L /usr/arm-linux-gnueabihf "$bin" rules replay --rules config/rules.toml \
        --input "$work/$w.jsonl" >/dev/null 2>&1
      t=$(( $(date +%s%N) - s ))
      if [ -z "$best" ] || [ "$t" -lt "$best" ]; then best=$t; fi
    done
    printf '%-22s %-6s %15s %12s %13s %10s\n' "$w ($readings readings)" "$arch" "$insns" \
      "$(( insns / readings ))" "$(awk -v b="$barriers" -v r="$readings" 'BEGIN { printf "%.1f", b / r }')" \
      "$(awk -v t="$best" 'BEGIN { printf "%.2f", t / 1e9 }')"
  done
  cmp -s "$work/$w-armv7.alerts" "$work/$w-armv6.alerts" ||
    { echo "isa-cost.sh: the two builds' alerts differ on $w" >&2; exit 1; }
  echo "  same alerts from both: $(tail -n1 "$work/$w-armv6.err")"
done
