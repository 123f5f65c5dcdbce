"""Media validation and content-addressed storage.

Imported files are hostile input. Nothing is trusted from a file name or extension: each
file is decoded for real (Pillow for images, libsndfile/librosa for audio, PyAV/FFmpeg for
video) before it is accepted, and the format actually found decides the stored extension
and MIME type. References are local paths only, resolved inside one declared media folder:
URLs are refused (the importer never downloads) and ``..``, absolute paths and symlinks
that leave the folder are refused.

Accepted files are copied once under the media root as ``ab/cd/<sha256>.<ext>``
(:attr:`db.models.Media.relpath`) through a temporary file and an atomic rename, so a
reader never sees half a file and two imports of the same file never clash.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from safereview.db.models import Media, utcnow

KINDS = ("image", "audio", "video")

IMAGE_FORMATS: dict[str, tuple[str, str]] = {  # Pillow format -> (ext, mime)
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
}
AUDIO_FORMATS: dict[str, tuple[str, str]] = {  # libsndfile major format -> (ext, mime)
    "WAV": ("wav", "audio/wav"),
    "WAVEX": ("wav", "audio/wav"),
    "FLAC": ("flac", "audio/flac"),
    "OGG": ("ogg", "audio/ogg"),
    "MP3": ("mp3", "audio/mpeg"),
}
MAX_ANIMATION_FRAMES = 10_000
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


class MediaError(ValueError):
    """A media reference or file is refused; the message is short and says why."""


@dataclass
class MediaInfo:
    """What validation found out about one file (everything a :class:`Media` row needs)."""

    path: Path
    sha256: str
    kind: str
    mime: str
    ext: str
    size_bytes: int
    original_name: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    frames: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def relpath(self) -> str:
        return f"{self.sha256[:2]}/{self.sha256[2:4]}/{self.sha256}.{self.ext}"

    def row(self) -> dict[str, Any]:
        """Column values for the ``media`` table."""
        return {
            "sha256": self.sha256,
            "kind": self.kind,
            "mime": self.mime,
            "ext": self.ext,
            "size_bytes": self.size_bytes,
            "width": self.width,
            "height": self.height,
            "duration_s": self.duration_s,
            "sample_rate": self.sample_rate,
            "frames": self.frames,
            "original_name": self.original_name[:500],
            "created_at": utcnow(),
        }


# ---------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------


def resolve_path(ref: str, media_dir: Path) -> Path:
    """Resolve a file reference inside ``media_dir`` or raise :class:`MediaError`.

    Relative paths are taken relative to ``media_dir``; an absolute path is accepted only
    when it lies inside it. Symlinks are followed and the *target* must stay inside too.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise MediaError("empty file reference")
    ref = ref.strip()
    if "\x00" in ref:
        raise MediaError("file reference contains a NUL byte")
    if _SCHEME.match(ref):
        scheme = ref.split(":", 1)[0].lower()
        raise MediaError(f"URLs are not accepted ({scheme}:); the importer never downloads, give a local file")
    base = media_dir.resolve()
    candidate = Path(ref)
    if not candidate.is_absolute():
        candidate = base / candidate
    if ".." in Path(ref).parts:
        # Refuse even when it would land back inside: a '..' in a data file is a red flag.
        raise MediaError(f"path {ref!r} contains '..'; references must stay inside the media folder {base}")
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise MediaError(f"file not found: {ref} (looked in {base})") from None
    except (OSError, RuntimeError) as exc:  # symlink loop, permission
        raise MediaError(f"cannot resolve {ref!r}: {exc}") from None
    if not real.is_relative_to(base):
        what = "absolute path" if Path(ref).is_absolute() else "symlink"
        raise MediaError(f"{what} {ref!r} leaves the media folder {base}")
    if not real.is_file():
        raise MediaError(f"not a regular file: {ref}")
    return real


# ---------------------------------------------------------------------------------------
# Validation by decoding
# ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def probe(path: Path, kind: str, *, max_image_pixels: int = 50_000_000, original_name: str = "") -> MediaInfo:
    """Decode ``path`` as ``kind`` (image/audio/video) and describe it, or raise MediaError."""
    if kind not in KINDS:
        raise MediaError(f"unknown media kind {kind!r}; expected one of {', '.join(KINDS)}")
    sha, size = _sha256(path)
    if size == 0:
        raise MediaError(f"empty file: {path.name}")
    info = MediaInfo(
        path=path, sha256=sha, kind=kind, mime="", ext="", size_bytes=size, original_name=original_name or path.name
    )
    if kind == "image":
        _probe_image(path, info, max_image_pixels)
    elif kind == "audio":
        _probe_audio(path, info)
    else:
        _probe_video(path, info)
    return info


_PIXEL_LIMIT_LOCK = threading.Lock()


def _probe_image(path: Path, info: MediaInfo, max_pixels: int) -> None:
    from PIL import Image

    # Pillow's bomb limit is process-global: set ours for this decode only, then put the old
    # value back so other Pillow users (thumbnails, the judge's encoder) are not affected.
    with _PIXEL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            _decode_image(path, info, max_pixels)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _decode_image(path: Path, info: MediaInfo, max_pixels: int) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = im.format
                if fmt not in IMAGE_FORMATS:
                    raise MediaError(f"{path.name}: image format {fmt} not accepted (png, jpg, webp, gif)")
                im.verify()
            with Image.open(path) as im:
                width, height = im.size
                n_frames = int(getattr(im, "n_frames", 1) or 1)
                if n_frames > MAX_ANIMATION_FRAMES:
                    raise MediaError(f"{path.name}: {n_frames} animation frames (limit {MAX_ANIMATION_FRAMES})")
                if width * height * n_frames > 4 * max_pixels:
                    raise MediaError(f"{path.name}: {n_frames} frames of {width}x{height} exceed the pixel limit")
                for i in range(n_frames):
                    if i:
                        im.seek(i)
                    im.load()
    except MediaError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise MediaError(f"{path.name}: image too large (decompression-bomb limit {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise MediaError(f"{path.name}: not a decodable image (png, jpg, webp, gif accepted)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise MediaError(f"{path.name}: corrupt or truncated image: {exc}") from None
    info.ext, info.mime = IMAGE_FORMATS[fmt]
    info.width, info.height, info.frames = width, height, n_frames


def _wav_truncated(path: Path) -> str | None:
    """Compare a RIFF/WAVE file's declared data size with the bytes present."""
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        total = path.stat().st_size
        pos = 12
        while pos + 8 <= total:
            fh.seek(pos)
            hdr = fh.read(8)
            cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if cid == b"data":
                if head[:4] == b"RF64":
                    return None
                if pos + 8 + size > total:
                    return f"data chunk declares {size} bytes but only {total - pos - 8} are present"
                return None
            pos += 8 + size + (size & 1)
    return "no data chunk"


def _probe_audio(path: Path, info: MediaInfo) -> None:
    import soundfile as sf

    try:
        sfi = sf.info(str(path))
    except Exception as exc:  # libsndfile raises its own error types
        if "MP3" not in sf.available_formats() and (path.suffix.lower() == ".mp3" or _looks_like_mp3(path)):
            _probe_audio_librosa(path, info, exc)
            return
        raise MediaError(f"{path.name}: not decodable audio (wav, flac, ogg, mp3 accepted): {_short(exc)}") from None
    fmt = sfi.format
    if fmt not in AUDIO_FORMATS:
        raise MediaError(f"{path.name}: audio format {fmt} not accepted (wav, flac, ogg, mp3)")
    if fmt in ("WAV", "WAVEX"):
        problem = _wav_truncated(path)
        if problem:
            raise MediaError(f"{path.name}: truncated audio: {problem}")
    if "should be" in (sfi.extra_info or ""):
        raise MediaError(f"{path.name}: truncated audio (header sizes disagree with the file)")
    frames = 0
    try:
        for block in sf.blocks(str(path), blocksize=1 << 16, dtype="float32", always_2d=True):
            frames += len(block)
    except Exception as exc:
        raise MediaError(f"{path.name}: audio does not decode to the end: {_short(exc)}") from None
    if frames == 0 or sfi.samplerate <= 0:
        raise MediaError(f"{path.name}: zero-length audio")
    if sfi.frames > 0 and fmt != "MP3" and frames < sfi.frames:
        raise MediaError(f"{path.name}: truncated audio: decoded {frames} of {sfi.frames} frames")
    info.ext, info.mime = AUDIO_FORMATS[fmt]
    info.sample_rate = int(sfi.samplerate)
    info.duration_s = frames / float(sfi.samplerate)
    info.frames = frames
    info.extra["channels"] = int(sfi.channels)


def _looks_like_mp3(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(3)
    return head == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0)


def _probe_audio_librosa(path: Path, info: MediaInfo, first_error: Exception) -> None:
    """Fallback for MP3 when libsndfile is older than 1.1 (no MPEG support)."""
    try:
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, sr = librosa.load(str(path), sr=None, mono=False)
    except Exception as exc:
        raise MediaError(f"{path.name}: not decodable audio: {_short(first_error)}; {_short(exc)}") from None
    n = int(y.shape[-1]) if getattr(y, "ndim", 0) else 0
    if n == 0 or not sr:
        raise MediaError(f"{path.name}: zero-length audio")
    info.ext, info.mime = "mp3", "audio/mpeg"
    info.sample_rate = int(sr)
    info.duration_s = n / float(sr)
    info.frames = n


def _probe_video(path: Path, info: MediaInfo) -> None:
    import av

    try:
        container = av.open(str(path), mode="r")
    except Exception as exc:
        raise MediaError(f"{path.name}: not a decodable video (mp4, webm accepted): {_short(exc)}") from None
    try:
        fmt_names = set((container.format.name or "").split(","))
        if fmt_names & {"mp4", "mov"}:
            ext, mime = "mp4", "video/mp4"
        elif fmt_names & {"webm", "matroska"}:
            ext, mime = "webm", "video/webm"
        else:
            raise MediaError(f"{path.name}: video container {container.format.name} not accepted (mp4, webm)")
        if not container.streams.video:
            raise MediaError(f"{path.name}: no video stream")
        stream = container.streams.video[0]
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except Exception as exc:
            raise MediaError(f"{path.name}: video does not decode: {_short(exc)}") from None
        if first is None:
            raise MediaError(f"{path.name}: video has no decodable frame")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        info.ext, info.mime = ext, mime
        info.width, info.height = int(first.width), int(first.height)
        info.duration_s = duration
        info.frames = int(stream.frames) if stream.frames else None
        info.extra["codec"] = stream.codec_context.name
    finally:
        container.close()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


# ---------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------


def store_file(info: MediaInfo, media_root: Path) -> bool:
    """Copy a validated file to ``media_root/relpath`` once; True when a new file was written.

    The copy goes to a temporary file in the target folder and is renamed into place, so
    the final name only ever holds a complete file.
    """
    dest = media_root / info.relpath
    if dest.exists() and dest.stat().st_size == info.size_bytes:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, info.path.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def insert_media_rows(conn: sa.Connection, infos: list[MediaInfo]) -> int:
    """Insert the ``media`` rows that are missing (idempotent); return how many were new."""
    table = Media.__table__  # type: ignore[attr-defined]
    by_sha = {i.sha256: i for i in infos}
    existing: set[str] = set()
    shas = list(by_sha)
    for start in range(0, len(shas), 500):
        chunk = shas[start : start + 500]
        existing.update(conn.execute(sa.select(table.c.sha256).where(table.c.sha256.in_(chunk))).scalars())
    rows = [i.row() for s, i in by_sha.items() if s not in existing]
    if rows:
        conn.execute(table.insert(), rows)
    return len(rows)


def store(
    engine_or_conn: sa.Engine | sa.Connection,
    path: str | Path,
    kind: str,
    *,
    media_root: Path,
    media_dir: Path | None = None,
    max_image_pixels: int = 50_000_000,
) -> MediaInfo:
    """Validate one file, store it by hash and insert its ``media`` row (idempotent).

    ``path`` may be relative (resolved against ``media_dir``, default its own folder).
    """
    p = Path(path)
    media_dir = media_dir or (p.parent if p.is_absolute() else Path.cwd())
    real = resolve_path(str(path), media_dir)
    info = probe(real, kind, max_image_pixels=max_image_pixels, original_name=p.name)
    store_file(info, media_root)
    if isinstance(engine_or_conn, sa.Engine):
        with engine_or_conn.begin() as conn:
            insert_media_rows(conn, [info])
    else:
        insert_media_rows(engine_or_conn, [info])
    return info
