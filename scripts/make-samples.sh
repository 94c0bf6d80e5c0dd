#!/usr/bin/env bash
# Generate the small MPEG-TS sample streams in samples/ (see samples/README.md).
#
# Needs only ffmpeg/ffprobe (Debian's build: libx264 + native aac/mp2) and
# python3 (for the packet statistics). Idempotent: every output is overwritten.
#
# Output is "deterministic-ish": lavfi test sources, single-threaded x264,
# -bitexact everywhere, fixed PIDs / ids / table versions. Byte-identical
# results are expected for the same ffmpeg + x264 build, not across versions.
#
# Usage: scripts/make-samples.sh [OUTDIR]   (default: <repo>/samples)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/samples}"
mkdir -p "$OUT"

for tool in ffmpeg ffprobe python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found" >&2; exit 1; }
done

FF=(ffmpeg -hide_banner -nostdin -v error -y)

# Common output flags: bit-exact muxing/encoding, no metadata copied from inputs.
BITEXACT=(-fflags +bitexact -flags:v +bitexact -flags:a +bitexact -map_metadata -1)

# Fixed TS-level ids (transport_stream_id, original_network_id, table version).
TSIDS=(-mpegts_transport_stream_id 1 -mpegts_original_network_id 1 -tables_version 0)

# H.264: single-threaded (deterministic), GOP = 25 frames = 1 s at 25 fps,
# no scene-cut keyframes, CBR-ish via VBV.
x264() { # x264 <stream-spec> <bitrate>
    local s="$1" br="$2"
    echo "-c:$s libx264 -threads:$s 1 -preset:$s veryfast -profile:$s main -pix_fmt:$s yuv420p" \
         "-g:$s 25 -keyint_min:$s 25 -sc_threshold:$s 0 -b:$s $br -maxrate:$s $br -bufsize:$s $br"
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
probe() { # probe <file> : ffprobe programs/streams + full decode test
    local f="$1" err
    ffprobe -v error -show_programs -show_streams "$f" >/dev/null
    err="$(ffmpeg -hide_banner -nostdin -v error -i "$f" -f null - 2>&1 || true)"
    if [[ -n "$err" ]]; then
        echo "error: decode test of $f produced output:" >&2
        echo "$err" >&2
        exit 1
    fi
}

nprograms() {
    ffprobe -v error -show_entries program=program_id -of json "$1" |
        python3 -c 'import json, sys; print(len(json.load(sys.stdin).get("programs", [])))'
}

describe() { # one line per program: num, pmt pid, pcr pid, name, streams
    ffprobe -v error -show_programs -of json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)
for p in d.get("programs", []):
    t = p.get("tags", {})
    ss = ", ".join("%s %s" % (s["id"], s["codec_name"]) for s in p.get("streams", []))
    print("    program %d  PMT 0x%04x  PCR 0x%04x  \"%s\" / \"%s\"  [%s]" % (
        p["program_num"], p["pmt_pid"], p["pcr_pid"],
        t.get("service_name", "?"), t.get("service_provider", "?"), ss))
'
}

# Packet statistics: prints "key=value" lines (and a human line to stderr).
ts_stats() {
    python3 - "$1" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
if len(data) % 188:
    sys.exit("size %d is not a multiple of 188" % len(data))
n = len(data) // 188
null = afc2 = afc2_pcr = afc3 = afc3_stuff = pcr = 0
for i in range(n):
    p = data[i * 188:(i + 1) * 188]
    if p[0] != 0x47:
        sys.exit("lost sync at packet %d" % i)
    pid = ((p[1] & 0x1F) << 8) | p[2]
    afc = (p[3] >> 4) & 3
    if pid == 0x1FFF:
        null += 1
        continue
    has_pcr = False
    if afc in (2, 3) and p[4] > 0:
        has_pcr = bool(p[5] & 0x10)
        pcr += has_pcr
    if afc == 2:
        afc2 += 1
        afc2_pcr += has_pcr
    elif afc == 3:
        afc3 += 1
        # stuffing: AF longer than flags byte (+ 6-byte PCR if present)
        if p[4] > 1 + (6 if has_pcr else 0):
            afc3_stuff += 1
print("packets=%d" % n)
print("null=%d" % null)
print("null_pct=%.1f" % (100.0 * null / n))
print("pcr=%d" % pcr)
print("afc2=%d" % afc2)
print("afc2_pcr_only=%d" % afc2_pcr)
print("afc3=%d" % afc3)
print("afc3_stuffing=%d" % afc3_stuff)
EOF
}

stat_get() { # stat_get <stats-text> <key>
    sed -n "s/^$2=//p" <<<"$1"
}

# ---------------------------------------------------------------------------
# 1. spts.ts: one program, H.264 + AAC, plain VBR mux (no null packets)
# ---------------------------------------------------------------------------
gen_spts() {
    local f="$OUT/spts.ts"
    # shellcheck disable=SC2046
    "${FF[@]}" \
        -f lavfi -i "testsrc2=size=640x360:rate=25:duration=10" \
        -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000:duration=10" \
        -map 0:v -map 1:a \
        $(x264 v 600k) \
        -c:a aac -b:a 128k -ar 48000 -ac 2 \
        -streamid 0:0x100 -streamid 1:0x101 \
        "${BITEXACT[@]}" "${TSIDS[@]}" \
        -mpegts_service_id 1 -mpegts_pmt_start_pid 0x1000 \
        -metadata service_name="castmux SPTS" -metadata service_provider="castmux" \
        -f mpegts "$f"
}

# ---------------------------------------------------------------------------
# 2. mpts.ts: three programs (service ids 1, 2, 3), each H.264 + audio
# ---------------------------------------------------------------------------
gen_mpts() {
    local f="$OUT/mpts.ts"
    # shellcheck disable=SC2046
    "${FF[@]}" \
        -f lavfi -i "testsrc2=size=320x240:rate=25:duration=6" \
        -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=6" \
        -f lavfi -i "smptebars=size=320x240:rate=25:duration=6" \
        -f lavfi -i "sine=frequency=660:sample_rate=48000:duration=6" \
        -f lavfi -i "testsrc=size=320x240:rate=25:duration=6" \
        -f lavfi -i "sine=frequency=880:sample_rate=48000:duration=6" \
        -map 0:v -map 1:a -map 2:v -map 3:a -map 4:v -map 5:a \
        $(x264 v 300k) \
        -c:a:0 aac -b:a:0 96k -c:a:1 aac -b:a:1 96k -c:a:2 mp2 -b:a:2 128k \
        -ar 48000 -ac 2 \
        -streamid 0:0x100 -streamid 1:0x101 \
        -streamid 2:0x200 -streamid 3:0x201 \
        -streamid 4:0x300 -streamid 5:0x301 \
        "${BITEXACT[@]}" "${TSIDS[@]}" \
        -mpegts_pmt_start_pid 0x1000 \
        -program "title=castmux One:program_num=1:st=0:st=1" \
        -program "title=castmux Two:program_num=2:st=2:st=3" \
        -program "title=castmux Three:program_num=3:st=4:st=5" \
        -metadata:p:0 service_provider=castmux \
        -metadata:p:1 service_provider=castmux \
        -metadata:p:2 service_provider=castmux \
        -f mpegts "$f"
    local np
    np="$(nprograms "$f")"
    [[ "$np" == 3 ]] || { echo "error: mpts.ts has $np programs, want 3" >&2; exit 1; }
}

# ---------------------------------------------------------------------------
# 3. heavy-af.ts: low-bitrate content in a CBR mux with a 5 ms PCR period:
#    many PCR-only packets (AFC=2) and per-frame PES (pes_payload_size 0)
#    whose last TS packet is padded with a stuffing adaptation field (AFC=3).
# ---------------------------------------------------------------------------
gen_heavy_af() {
    local f="$OUT/heavy-af.ts"
    # shellcheck disable=SC2046
    "${FF[@]}" \
        -f lavfi -i "smptebars=size=320x240:rate=25:duration=8" \
        -f lavfi -i "sine=frequency=1000:sample_rate=48000:duration=8" \
        -map 0:v -map 1:a \
        $(x264 v 150k) \
        -c:a aac -b:a 64k -ar 48000 -ac 2 \
        -streamid 0:0x100 -streamid 1:0x101 \
        "${BITEXACT[@]}" "${TSIDS[@]}" \
        -mpegts_service_id 1 -mpegts_pmt_start_pid 0x1000 \
        -metadata service_name="castmux heavy AF" -metadata service_provider="castmux" \
        -muxrate 600k -pcr_period 5 -pes_payload_size 0 \
        -f mpegts "$f"
}

# ---------------------------------------------------------------------------
# 4. nullpad.ts: CBR mux at 2 Mbit/s with ~0.5 Mbit/s content -> null packets
# ---------------------------------------------------------------------------
gen_nullpad() {
    local f="$OUT/nullpad.ts"
    # shellcheck disable=SC2046
    "${FF[@]}" \
        -f lavfi -i "testsrc2=size=320x240:rate=25:duration=5" \
        -f lavfi -i "sine=frequency=550:sample_rate=48000:duration=5" \
        -map 0:v -map 1:a \
        $(x264 v 400k) \
        -c:a aac -b:a 96k -ar 48000 -ac 2 \
        -streamid 0:0x100 -streamid 1:0x101 \
        "${BITEXACT[@]}" "${TSIDS[@]}" \
        -mpegts_service_id 1 -mpegts_pmt_start_pid 0x1000 \
        -metadata service_name="castmux null padded" -metadata service_provider="castmux" \
        -muxrate 2M \
        -f mpegts "$f"
}

# ---------------------------------------------------------------------------
echo "Generating samples into $OUT"
gen_spts
gen_mpts
gen_heavy_af
gen_nullpad

SUMMARY=()
fail=0
for name in spts mpts heavy-af nullpad; do
    f="$OUT/$name.ts"
    probe "$f"
    st="$(ts_stats "$f")"
    size=$(stat -c %s "$f")
    dur=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$f")
    echo
    echo "== $name.ts: $size bytes, $(stat_get "$st" packets) packets, ${dur}s, $(nprograms "$f") program(s), decode OK"
    describe "$f"
    echo "    null packets: $(stat_get "$st" null) ($(stat_get "$st" null_pct)%)," \
         "PCRs: $(stat_get "$st" pcr)," \
         "AFC=2 (AF only): $(stat_get "$st" afc2) (PCR-only: $(stat_get "$st" afc2_pcr_only))," \
         "AFC=3 (AF+payload): $(stat_get "$st" afc3) (with stuffing: $(stat_get "$st" afc3_stuffing))"
    if (( size > 1600000 )); then
        echo "error: $name.ts is larger than ~1.5 MB" >&2; fail=1
    fi
    case "$name" in
        heavy-af)
            if (( $(stat_get "$st" afc2_pcr_only) < 500 || $(stat_get "$st" afc3_stuffing) < 200 )); then
                echo "error: heavy-af.ts does not have enough AF-only / stuffed packets" >&2; fail=1
            fi ;;
        nullpad)
            if ! python3 -c "import sys; sys.exit(0 if float('$(stat_get "$st" null_pct)') >= 20 else 1)"; then
                echo "error: nullpad.ts has < 20% null packets" >&2; fail=1
            fi ;;
        spts)
            if (( $(stat_get "$st" null) != 0 )); then
                echo "error: spts.ts should not contain null packets" >&2; fail=1
            fi ;;
    esac
    SUMMARY+=("$(printf '%-12s %9d bytes  %s s' "$name.ts" "$size" "$dur")")
done

total=$(cat "$OUT"/{spts,mpts,heavy-af,nullpad}.ts | wc -c)
echo
echo "Summary:"
printf '  %s\n' "${SUMMARY[@]}"
echo "  total        $total bytes"
(( fail == 0 )) || { echo "FAILED" >&2; exit 1; }
echo "OK"
