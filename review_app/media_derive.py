"""Derived media for the review app: thumbnails, waveforms, mel spectrograms, key frames.

Streamlit-free and import-light (Pillow, numpy; librosa and PyAV are imported inside the
functions that need them) so the HTTP media route, the CLI and tests can use it without a
UI. Every derivative is computed once per content hash and cached on disk under
``Config.cache_dir`` (``<kind>/<sha[:2]>/<sha>.<ext>``), written atomically so concurrent
requests never see half a file. Decoding is defensive: input files are untrusted, so each
function caps pixels, duration and frame counts and raises :class:`DeriveError` (never a
random decoder exception) when a file cannot be read.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

THUMB_SIDE = 1280  # longest side of the "view" image shown in the review page
WAVE_SIZE = (1200, 140)
SPEC_SIZE = (1200, 220)
FRAME_HEIGHT = 150
N_KEYFRAMES = 8
MAX_DECODE_PER_SEEK = 600  # frames decoded after a seek before taking what we have
MAX_AUDIO_SECONDS = 600.0  # waveform/spectrogram look at the first 10 minutes at most ...
DRAW_RATE = 22_050  # ... resampled to at most this rate: the drawings need no more (mel tops out at 11 kHz)
MAX_AUDIO_CHANNELS = 64
BACKGROUND = (250, 250, 252)
INK = (49, 51, 63)

VARIANTS: dict[str, tuple[str, str]] = {
    # variant name in the URL -> (media kind it applies to, mime type of the result)
    "view.webp": ("image", "image/webp"),
    "waveform.png": ("audio", "image/png"),
    "spectrogram.png": ("audio", "image/png"),
    "keyframes.jpg": ("video", "image/jpeg"),
}

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class DeriveError(ValueError):
    """The media file could not be decoded into the requested derivative."""


def cache_path(cache_dir: Path, variant: str, sha256: str) -> Path:
    stem, ext = variant.rsplit(".", 1)
    return Path(cache_dir) / stem / sha256[:2] / f"{sha256}.{ext}"


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _atomic_save(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def derive(source: Path, sha256: str, variant: str, cache_dir: Path, *, max_image_pixels: int = 50_000_000) -> Path:
    """Return the cached derivative ``variant`` of ``source``, computing it on first use."""
    if variant not in VARIANTS:
        raise DeriveError(f"unknown variant {variant!r}")
    out = cache_path(cache_dir, variant, sha256)
    if out.exists():
        return out
    with _lock_for(str(out)):
        if out.exists():
            return out
        if variant == "view.webp":
            img = image_view(source, max_image_pixels=max_image_pixels)
            _atomic_save(out, lambda p: img.save(p, format="WEBP", quality=88, method=4))
        elif variant == "waveform.png":
            img = waveform_image(source)
            _atomic_save(out, lambda p: img.save(p, format="PNG", optimize=True))
        elif variant == "spectrogram.png":
            img = spectrogram_image(source)
            _atomic_save(out, lambda p: img.save(p, format="PNG", optimize=True))
        elif variant == "keyframes.jpg":
            img = keyframe_strip(source)
            _atomic_save(out, lambda p: img.save(p, format="JPEG", quality=85))
    return out


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------


def image_view(source: Path, *, max_side: int = THUMB_SIDE, max_image_pixels: int = 50_000_000) -> Image.Image:
    """First frame of an image, EXIF-rotated, in RGB(A), scaled to at most ``max_side``."""
    try:
        with Image.open(source) as im:
            if im.width * im.height > max_image_pixels:
                raise DeriveError(f"image has {im.width * im.height} pixels, above the limit")
            im.seek(0)
            im.draft("RGB", (max_side, max_side))  # cheap JPEG downscale while decoding
            frame = ImageOps.exif_transpose(im)
            frame = frame.convert("RGBA" if "A" in frame.getbands() or "transparency" in im.info else "RGB")
            frame.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return frame
    except DeriveError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise DeriveError(f"cannot decode image: {type(exc).__name__}") from None


# ---------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------


def load_audio(source: Path, *, max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int]:
    """Mono float samples and sample rate of (the start of) an audio file, for drawing.

    Bounded by samples, not only by duration: ten minutes of 192 kHz stereo would be 230
    million samples (about 2.5 GB once analysed). The file is read in blocks, each mixed
    down to mono and resampled (soxr, streaming) to at most :data:`DRAW_RATE`, so memory
    stays near ``max_seconds × DRAW_RATE`` samples whatever the file's rate and channels.
    """
    try:
        import soundfile as sf

        with sf.SoundFile(str(source)) as f:
            y, sr = _read_mono_resampled(f, max_seconds)
    except DeriveError:
        raise
    except Exception:
        # formats libsndfile does not know (e.g. some mp3/m4a): librosa's fallback decoders,
        # at the drawing rate (MP3 tops out at 48 kHz, so the native decode is bounded too)
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():  # librosa warns when it falls back to audioread
                warnings.simplefilter("ignore")
                y, sr = librosa.load(str(source), sr=DRAW_RATE, mono=True, duration=max_seconds)
        except Exception as exc:
            raise DeriveError(f"cannot decode audio: {type(exc).__name__}") from None
    if y.size == 0 or not np.isfinite(y).all():
        y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    return y.astype(np.float32), int(sr)


def _read_mono_resampled(f: Any, max_seconds: float) -> tuple[np.ndarray, int]:
    import soxr

    sr_in = int(f.samplerate)
    if sr_in <= 0 or f.channels <= 0 or f.channels > MAX_AUDIO_CHANNELS:
        raise DeriveError(f"audio with {f.channels} channels at {sr_in} Hz is not drawn")
    sr_out = min(sr_in, DRAW_RATE)
    wanted = int(max_seconds * sr_in)
    if f.frames > 0:
        wanted = min(wanted, int(f.frames))
    block = max(1024, (1 << 20) // int(f.channels))  # about 4 MB of float32 per block
    stream = soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32") if sr_out != sr_in else None
    pieces: list[np.ndarray] = []
    done = 0
    while done < wanted:
        data = f.read(frames=min(block, wanted - done), dtype="float32", always_2d=True)
        if not len(data):
            break
        done += len(data)
        mono = data.mean(axis=1)
        pieces.append(stream.resample_chunk(mono, last=False) if stream is not None else mono)
    if stream is not None:
        pieces.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    y = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return y, sr_out


def waveform_image(source: Path, size: tuple[int, int] = WAVE_SIZE) -> Image.Image:
    """Min/max envelope per pixel column, with a centre line and second ticks."""
    y, sr = load_audio(source)
    width, height = size
    img = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    mid = height // 2
    draw.line([(0, mid), (width, mid)], fill=(210, 212, 220))
    if y.size:
        peak = float(np.max(np.abs(y))) or 1.0
        cols = np.array_split(y / peak, width) if y.size >= width else [y[i : i + 1] for i in range(y.size)]
        scale = (height / 2 - 8) * 0.92
        x_step = width / max(len(cols), 1)
        for i, col in enumerate(cols):
            if col.size == 0:
                continue
            lo, hi = float(col.min()), float(col.max())
            x = int(i * x_step)
            draw.line([(x, mid - hi * scale), (x, mid - lo * scale)], fill=(78, 121, 167))
        seconds = y.size / sr
        _time_ticks(draw, seconds, width, height)
    return img


def _time_ticks(draw: ImageDraw.ImageDraw, seconds: float, width: int, height: int, ink: tuple = INK) -> None:
    if seconds <= 0:
        return
    step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300) if seconds / s <= 12), 600)
    t = step
    while t < seconds:
        x = int(t / seconds * width)
        draw.line([(x, height - 6), (x, height)], fill=ink)
        draw.text((x + 2, height - 14), f"{t:g}s", fill=ink)
        t += step


def _colormap(values: np.ndarray) -> np.ndarray:
    """Map 0..1 to a perceptually ordered dark-blue → yellow palette (viridis anchors)."""
    anchors = np.array(
        [
            [68, 1, 84],
            [72, 40, 120],
            [62, 74, 137],
            [49, 104, 142],
            [38, 130, 142],
            [31, 158, 137],
            [53, 183, 121],
            [109, 205, 89],
            [180, 222, 44],
            [253, 231, 37],
        ],
        dtype=np.float32,
    )
    pos = np.clip(values, 0, 1) * (len(anchors) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(anchors) - 1)
    frac = (pos - lo)[..., None]
    return (anchors[lo] * (1 - frac) + anchors[hi] * frac).astype(np.uint8)


def spectrogram_image(source: Path, size: tuple[int, int] = SPEC_SIZE, n_mels: int = 96) -> Image.Image:
    """Log-power mel spectrogram (librosa), low frequencies at the bottom."""
    y, sr = load_audio(source)
    return _spectrogram(y, sr, size, n_mels)


def warm_up() -> float:
    """Draw one spectrogram of a synthetic tone, so librosa's JIT-compiled code (numba: 16 to 46 s
    on a fresh install) is compiled when the server starts, not while a reviewer waits; seconds taken."""
    import time

    started = time.perf_counter()
    sr = 16_000
    t = np.arange(sr // 2) / sr
    _spectrogram((0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), sr, SPEC_SIZE, 96)
    return time.perf_counter() - started


def _mel_power(y: np.ndarray, sr: int, *, n_fft: int, hop: int, n_mels: int, fmax: float) -> np.ndarray:
    """Mel power spectrogram (n_mels × frames), computed a block of frames at a time.

    ``librosa.feature.melspectrogram`` holds the whole complex STFT and its power (118 MB
    for 30 s at 22 kHz in a measurement); here the frames are views of ``y`` and each block
    is windowed, transformed and projected on librosa's mel basis before the next, so the
    extra memory is a few MB whatever the length. Frames are not centred (the first and
    last half-window are not padded): invisible at the drawing's resolution.
    """
    import librosa
    from numpy.lib.stride_tricks import sliding_window_view

    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmax=fmax).astype(np.float32)
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann, as librosa uses
    frames = sliding_window_view(y.astype(np.float32, copy=False), n_fft)[::hop]
    out = np.empty((n_mels, len(frames)), dtype=np.float32)
    step = 256
    for i in range(0, len(frames), step):
        spectrum = np.fft.rfft(frames[i : i + step] * window, axis=1)
        out[:, i : i + step] = basis @ (spectrum.real**2 + spectrum.imag**2).astype(np.float32).T
    return out


def _spectrogram(y: np.ndarray, sr: int, size: tuple[int, int], n_mels: int) -> Image.Image:
    import librosa

    if y.size < 2048:
        y = np.pad(y, (0, 2048 - y.size))
    hop = max(256, int(y.size / (size[0] * 2)) // 256 * 256 or 256)
    mel = _mel_power(y, sr, n_fft=2048, hop=hop, n_mels=n_mels, fmax=min(sr / 2, 16000))
    db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    norm = (db + 80.0) / 80.0
    rgb = _colormap(norm[::-1])
    img = Image.fromarray(rgb, "RGB").resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    _time_ticks(draw, y.size / sr, size[0], size[1], ink=(235, 235, 240))
    return img


# ---------------------------------------------------------------------------------------
# Video
# ---------------------------------------------------------------------------------------


def keyframes(source: Path, n: int = N_KEYFRAMES, height: int = FRAME_HEIGHT) -> list[tuple[float, Image.Image]]:
    """``n`` frames evenly spread over the video (time in seconds, image), via PyAV seeks."""
    import av

    out: list[tuple[float, Image.Image]] = []
    try:
        with av.open(str(source), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise DeriveError("file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            times = [duration * (i + 0.5) / n for i in range(n)] if duration else [0.0]
            seen_pts: set[int] = set()
            for t in times:
                if duration:
                    container.seek(int(t / stream.time_base), stream=stream, any_frame=False, backward=True)
                chosen = None
                for decoded, frame in enumerate(container.decode(stream)):
                    chosen = frame
                    ft = float(frame.pts * stream.time_base) if frame.pts is not None else t
                    if ft >= t - 1e-3 or not duration or decoded >= MAX_DECODE_PER_SEEK:
                        break
                if chosen is None or (chosen.pts is not None and chosen.pts in seen_pts):
                    continue
                if chosen.pts is not None:
                    seen_pts.add(chosen.pts)
                img = chosen.to_image()
                w = max(1, int(img.width * height / max(img.height, 1)))
                ft = float(chosen.pts * stream.time_base) if chosen.pts is not None else t
                out.append((ft, img.resize((min(w, height * 4), height), Image.Resampling.BILINEAR)))
    except DeriveError:
        raise
    except Exception as exc:  # PyAV raises many error types for hostile or broken files
        raise DeriveError(f"cannot decode video: {type(exc).__name__}") from None
    if not out:
        raise DeriveError("no decodable video frames")
    return out


def keyframe_strip(source: Path, n: int = N_KEYFRAMES, height: int = FRAME_HEIGHT) -> Image.Image:
    """Key frames side by side, each labelled with its time stamp.

    The strip is shown scaled down to the panel's width (about a quarter of its pixels), so
    the time stamps are drawn large: a fifth of a frame's width, at least 16 px.
    """
    from PIL import ImageFont

    frames = keyframes(source, n=n, height=height)
    gap = 4
    width = sum(im.width for _, im in frames) + gap * (len(frames) - 1)
    size = max(16, min(im.width for _, im in frames) // 5)
    font = ImageFont.load_default(size=size)
    strip = Image.new("RGB", (width, height + size + 10), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    x = 0
    for t, im in frames:
        strip.paste(im.convert("RGB"), (x, 0))
        draw.text((x + 4, height + 4), f"{t:.1f}s", fill=INK, font=font)
        x += im.width + gap
    return strip
