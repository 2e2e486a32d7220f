"""Names and values the user gave are printed as they are: rich's markup and emoji codes never rewrite them, in log
lines, notes or error messages, and a newline in a file name cannot forge a log line."""

from __future__ import annotations

from tests.support import lesion_image, run_cli, write_png


def test_emoji_codes_and_brackets_in_names_are_shown_as_written(standin_model, tmp_path):
    src = tmp_path / ":thumbs_up:photos"
    for name in (":x:smile:.png", "[red]b[dim].png", ".:smile:.png"):
        write_png(src / name, lesion_image())
    (src / ":warning:bad.png").write_bytes(b"not a png")
    done = run_cli("infer", src, "--model", standin_model, "-o", tmp_path / ":fire:out")
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    for written in (":x:smile:.png", "[red]b[dim].png", ":warning:bad.png", ":thumbs_up:photos", ":fire:out",
                    ".:smile:.png"):  # fmt: skip
        assert written in text, (written, text)
    assert not any(c in text for c in "❌👍⚠🔥😄")


def test_an_error_about_a_name_shows_it_as_written(standin_model, tmp_path):
    missing = tmp_path / "data" / ":thumbs_up:photos"
    done = run_cli("infer", missing, "--model", standin_model, "-o", tmp_path / "out")
    assert done.returncode == 2
    assert ":thumbs_up:photos" in done.stderr and "👍" not in done.stderr, done.stderr


def test_a_newline_in_a_file_name_cannot_forge_a_log_line(model, tmp_path):
    name = "a.png\n2026-01-01T00:00:00 ok  forged.png"
    src = tmp_path / "src"
    write_png(src / (name + ".png"), lesion_image())
    result = run_cli("infer", src, "--model", model, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines() + result.stderr.splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert any("a.png\\n2026-01-01" in line for line in lines)
