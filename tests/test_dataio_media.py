"""Media validation decodes for real and refuses escapes, URLs and broken files."""

from __future__ import annotations

import os
from pathlib import Path

import dataio_support as ds
import pytest
import sqlalchemy as sa
from PIL import Image

from safereview.dataio.media import MediaError, probe, resolve_path, store

# ---- paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "http://example.com/a.png",
        "https://x/y.png",
        "file:///etc/passwd",
        "data:image/png;base64,AAAA",
        "ftp://h/a.png",
        "s3://bucket/a.png",
    ],
)
def test_urls_are_refused(tmp_path: Path, ref: str) -> None:
    with pytest.raises(MediaError, match="URLs are not accepted"):
        resolve_path(ref, tmp_path)


def test_dotdot_absolute_and_symlink_escapes_are_refused(tmp_path: Path) -> None:
    media = tmp_path / "media"
    outside = ds.png(tmp_path / "secret.png")
    ds.png(media / "ok.png")
    with pytest.raises(MediaError, match=r"contains '\.\.'"):
        resolve_path("../secret.png", media)
    with pytest.raises(MediaError, match=r"contains '\.\.'"):
        resolve_path("sub/../../secret.png", media)
    with pytest.raises(MediaError, match=r"absolute path .* leaves the media folder"):
        resolve_path(str(outside), media)
    os.symlink(outside, media / "link.png")
    with pytest.raises(MediaError, match=r"symlink .* leaves the media folder"):
        resolve_path("link.png", media)
    with pytest.raises(MediaError, match="file not found"):
        resolve_path("nope.png", media)
    assert resolve_path("ok.png", media) == (media / "ok.png").resolve()
    assert resolve_path(str(media / "ok.png"), media) == (media / "ok.png").resolve()


# ---- images --------------------------------------------------------------------------


def test_image_real_format_wins_over_extension(tmp_path: Path) -> None:
    p = ds.png(tmp_path / "really-a-png.jpg", size=(30, 20))
    info = probe(p, "image")
    assert (info.mime, info.ext, info.width, info.height, info.frames) == ("image/png", "png", 30, 20, 1)
    j = ds.png(tmp_path / "photo.png", fmt="JPEG")
    assert probe(j, "image").mime == "image/jpeg"
    w = ds.png(tmp_path / "x.webp", fmt="WEBP")
    assert probe(w, "image").ext == "webp"


def test_animated_gif_counts_frames(tmp_path: Path) -> None:
    info = probe(ds.gif(tmp_path / "a.gif", frames=4), "image")
    assert (info.mime, info.frames) == ("image/gif", 4)


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    src = ds.png(tmp_path / "full.png", size=(200, 200))
    # random-ish pixels so the compressed stream is long enough to cut in the middle
    Image.effect_noise((200, 200), 80).convert("RGB").save(src)
    bad = ds.truncated(src, tmp_path / "cut.png", keep=0.5)
    with pytest.raises(MediaError, match="corrupt or truncated image"):
        probe(bad, "image")


def test_svg_and_non_images_are_refused(tmp_path: Path) -> None:
    svg = tmp_path / "a.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    with pytest.raises(MediaError, match="not a decodable image"):
        probe(svg, "image")
    bmp = tmp_path / "a.bmp"
    Image.new("RGB", (4, 4)).save(bmp, "BMP")
    with pytest.raises(MediaError, match="format BMP not accepted"):
        probe(bmp, "image")
    wavf = ds.wav(tmp_path / "sound.png")
    with pytest.raises(MediaError, match="not a decodable image"):
        probe(wavf, "image")


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("1", (4000, 4000)).save(p)  # 16 Mpx, a few KB on disk
    assert p.stat().st_size < 100_000
    # above the limit but below 2x: Pillow only warns; the warning must be an error here
    with pytest.raises(MediaError, match="decompression-bomb"):
        probe(p, "image", max_image_pixels=10_000_000)
    # far above: Pillow's own error
    with pytest.raises(MediaError, match="decompression-bomb"):
        probe(p, "image", max_image_pixels=1_000_000)
    assert probe(p, "image", max_image_pixels=20_000_000).width == 4000


# ---- audio ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,ext,mime", [("WAV", "wav", "audio/wav"), ("FLAC", "flac", "audio/flac"), ("OGG", "ogg", "audio/ogg")]
)
def test_audio_decodes_with_duration_and_rate(tmp_path: Path, fmt: str, ext: str, mime: str) -> None:
    p = ds.wav(tmp_path / f"a.{ext}", seconds=0.5, sr=8000, fmt=fmt)
    info = probe(p, "audio")
    assert (info.ext, info.mime, info.sample_rate) == (ext, mime, 8000)
    assert info.duration_s == pytest.approx(0.5, abs=0.02)


def test_mp3_decodes(tmp_path: Path) -> None:
    import soundfile as sf

    if "MP3" not in sf.available_formats():
        pytest.skip("libsndfile without MPEG support")
    p = ds.wav(tmp_path / "a.mp3", seconds=1.0, sr=16000, fmt="MP3")
    info = probe(p, "audio")
    assert (info.ext, info.mime) == ("mp3", "audio/mpeg")
    assert info.duration_s == pytest.approx(1.0, abs=0.1)


def test_truncated_zero_length_and_non_audio_are_refused(tmp_path: Path) -> None:
    full = ds.wav(tmp_path / "full.wav", seconds=1.0)
    with pytest.raises(MediaError, match="truncated audio"):
        probe(ds.truncated(full, tmp_path / "cut.wav", 0.5), "audio")
    flac = ds.wav(tmp_path / "full.flac", seconds=1.0, fmt="FLAC")
    with pytest.raises(MediaError):
        probe(ds.truncated(flac, tmp_path / "cut.flac", 0.5), "audio")
    empty = ds.wav(tmp_path / "empty.wav", seconds=0.0)
    with pytest.raises(MediaError, match="zero-length audio"):
        probe(empty, "audio")
    with pytest.raises(MediaError, match="empty file"):
        (tmp_path / "zero.wav").write_bytes(b"")
        probe(tmp_path / "zero.wav", "audio")
    with pytest.raises(MediaError, match="not decodable audio"):
        probe(ds.png(tmp_path / "pic.wav"), "audio")
    (tmp_path / "text.mp3").write_text("definitely not audio " * 50)
    with pytest.raises(MediaError, match="not decodable audio"):
        probe(tmp_path / "text.mp3", "audio")


# ---- video ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,mime", [("v.mp4", "video/mp4"), ("v.webm", "video/webm")])
def test_video_probe(tmp_path: Path, name: str, mime: str) -> None:
    info = probe(ds.video(tmp_path / name, frames=12, size=32), "video")
    assert (info.mime, info.width, info.height) == (mime, 32, 32)
    assert info.duration_s == pytest.approx(1.0, abs=0.2)


def test_corrupt_video_is_refused(tmp_path: Path) -> None:
    good = ds.video(tmp_path / "v.mp4", frames=12)
    with pytest.raises(MediaError, match="video"):
        probe(ds.truncated(good, tmp_path / "cut.mp4", 0.3), "video")
    (tmp_path / "noise.mp4").write_bytes(os.urandom(4096))
    with pytest.raises(MediaError, match="not a decodable video"):
        probe(tmp_path / "noise.mp4", "video")
    with pytest.raises(MediaError, match=r"not a decodable video|no video stream|container wav not accepted"):
        probe(ds.wav(tmp_path / "audio.mp4"), "video")


# ---- storage -------------------------------------------------------------------------


def test_media_stored_once_by_hash(engine: sa.Engine, tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = ds.png(tmp_path / "in" / "a.png")
    b = tmp_path / "in" / "copy-of-a.jpg"
    b.write_bytes(a.read_bytes())
    i1 = store(engine, "a.png", "image", media_root=root, media_dir=tmp_path / "in")
    i2 = store(engine, "copy-of-a.jpg", "image", media_root=root, media_dir=tmp_path / "in")
    assert i1.sha256 == i2.sha256
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files == [root / i1.relpath]
    assert files[0].read_bytes() == a.read_bytes()
    assert i1.relpath == f"{i1.sha256[:2]}/{i1.sha256[2:4]}/{i1.sha256}.png"
    assert ds.count(engine, "media") == 1
    assert not list(root.rglob(".tmp-*"))


def test_pixel_limit_is_not_left_changed_for_other_pillow_users(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(MediaError, match="decompression-bomb"):
        probe(ds.png(tmp_path / "a.png", size=(40, 40)), "image", max_image_pixels=100)
    probe(ds.png(tmp_path / "b.png"), "image", max_image_pixels=123_456)
    assert before == Image.MAX_IMAGE_PIXELS
