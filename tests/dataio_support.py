"""Helpers for the dataio tests: real media generated on the fly, DB snapshots, file writers."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from PIL import Image, ImageDraw
from sqlmodel import SQLModel

import safereview.db.models  # noqa: F401  (registers the tables on SQLModel.metadata)


def png(
    path: Path, size: tuple[int, int] = (24, 16), color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    ImageDraw.Draw(im).ellipse([2, 2, size[0] - 3, size[1] - 3], fill=(20, 20, 200))
    im.save(path, fmt)
    return path


def truncated(src: Path, dest: Path, keep: float = 0.6) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def gif(path: Path, frames: int = 3) -> Path:
    ims = []
    for i in range(frames):
        im = Image.new("RGB", (10, 10), (255, 255, 255))
        ImageDraw.Draw(im).rectangle([i, i, i + 3, i + 3], fill=(200, 0, 0))
        ims.append(im)
    ims[0].save(path, "GIF", save_all=True, append_images=ims[1:], duration=100)
    return path


def wav(path: Path, seconds: float = 0.5, sr: int = 8000, fmt: str = "WAV") -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    y = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sr, format=fmt)
    return path


def video(path: Path, frames: int = 12, size: int = 32) -> Path:
    import av

    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as c:
        s = c.add_stream(codec, rate=12)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((size, size, 3), 230, dtype=np.uint8)
            img[8:16, i : i + 8] = (200, 0, 0)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def snapshot(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of every table: equal snapshots = unchanged database."""
    out: dict[str, tuple[int, str]] = {}
    with engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            h = hashlib.sha256()
            for r in rows:
                h.update(repr(tuple(r)).encode())
            out[table.name] = (len(rows), h.hexdigest())
    return out


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


def uni_rows(n: int = 3, image: str | None = "in.png") -> list[dict[str, Any]]:
    return [
        {
            "id": f"u{i}",
            "prompt": f"prompt {i}",
            "image": image or "",
            "category": "Blood and Violence",
            "generated_text": f"answer {i}",
            "output_image": "",
            "intention": "x",
            "reject_image": False,
        }
        for i in range(n)
    ]
