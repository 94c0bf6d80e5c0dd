//! Independent readers: ffprobe lists the scrambled output, ffmpeg decodes the descrambled one.

mod cli_support;

use std::process::Command;

use cli_support::*;

#[test]
fn ffprobe_lists_programs_and_streams_of_scrambled_output_and_ffmpeg_decodes_descrambled() {
    // a missing peer fails the test: a skip would pass without checking anything
    assert!(
        have("ffprobe") && have("ffmpeg"),
        "ffmpeg/ffprobe are required: scripts/test.sh installs them (apt-get install ffmpeg)"
    );
    let dir = tmp();
    for name in SAMPLES {
        let scr = dir.path().join(format!("{name}.scr.ts"));
        let clr = dir.path().join(format!("{name}.clr.ts"));
        let log = dir.path().join(format!("{name}.cw"));
        ok(&[
            "scramble",
            "-i",
            s(&sample(name)),
            "-o",
            s(&scr),
            "--cw-log",
            s(&log),
            "--crypto-period",
            "2s",
        ]);
        let probe = |path: &std::path::Path| {
            let out = Command::new("ffprobe")
                .args([
                    "-v",
                    "error",
                    "-show_entries",
                    "program=program_id:stream=index,codec_type,id",
                ])
                .args(["-of", "csv=p=0"])
                .arg(path)
                .output()
                .unwrap();
            assert!(out.status.success());
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines.sort();
            lines
        };
        assert_eq!(
            probe(&scr),
            probe(&sample(name)),
            "{name}: ffprobe view of the scrambled output"
        );
        ok(&[
            "descramble",
            "-i",
            s(&scr),
            "-o",
            s(&clr),
            "--cw-log",
            s(&log),
        ]);
        let dec = ffmpeg_decode(&clr);
        assert!(dec.status.success(), "{name}: ffmpeg failed");
        assert_eq!(
            String::from_utf8_lossy(&dec.stderr),
            "",
            "{name}: ffmpeg reported errors on the descrambled output"
        );
    }
}

#[test]
fn scrambled_output_does_not_decode_cleanly() {
    if !have("ffmpeg") {
        return;
    }
    let dir = tmp();
    let scr = dir.path().join("scr.ts");
    ok(&[
        "scramble",
        "-i",
        s(&sample("spts.ts")),
        "-o",
        s(&scr),
        "--cw",
        "0123456789abcdef",
    ]);
    let dec = ffmpeg_decode(&scr);
    let clean = dec.status.success() && dec.stderr.is_empty();
    assert!(!clean, "a scrambled stream decoded without errors");
}
