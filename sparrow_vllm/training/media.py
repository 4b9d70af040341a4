"""Decode a clip or an image from disk into uint8 RGB arrays: video files (PyAV, decord or
OpenCV, the first one installed), image folders, and .npy/.npz arrays. A file that is
missing or cannot be decoded raises SampleError, so a dataset can count and skip its row.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sparrow_vllm.training.skips import SampleError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def video_decoder() -> str:
    """The video decoder read_frames uses: 'pyav', else 'decord', else 'cv2'."""
    for decoder, module in (("pyav", "av"), ("decord", "decord"), ("cv2", "cv2")):
        if _module_available(module):
            return decoder
    raise ImportError("no video decoder; pip install av (or decord, or opencv-python-headless)")


@functools.cache
def _announce_decoder(decoder: str) -> None:
    logger.info("decoding videos with %s", decoder)


def _sample_indices(total: int, num_frames: int | None) -> np.ndarray:
    if num_frames is None or total <= num_frames:
        return np.arange(total)
    return np.linspace(0, total - 1, num_frames).round().astype(np.int64)


_Choose = Callable[[int], "set[int] | None"]  # reported frame count -> indices to keep


def _decode_cv2(path: Path, choose: _Choose) -> tuple[list[np.ndarray], int, set[int] | None]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    keep = choose(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    frames, total = [], 0
    try:
        while capture.grab():
            if keep is None or total in keep:
                ok, bgr = capture.retrieve()
                if not ok:
                    raise RuntimeError(f"frame {total} could not be retrieved")
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            total += 1
    finally:
        capture.release()
    return frames, total, keep


def _decode_pyav(path: Path, choose: _Choose) -> tuple[list[np.ndarray], int, set[int] | None]:
    import av

    frames, total = [], 0
    with av.open(str(path)) as container:
        keep = choose(int(container.streams.video[0].frames))
        for total, frame in enumerate(container.decode(video=0), start=1):
            if keep is None or total - 1 in keep:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames, total, keep


def _decode_decord(path: Path, choose: _Choose) -> tuple[list[np.ndarray], int, set[int] | None]:
    import decord

    reader = decord.VideoReader(str(path))
    total = len(reader)
    keep = choose(total)
    indices = list(range(total)) if keep is None else sorted(keep)
    return (list(reader.get_batch(indices).asnumpy()) if indices else []), total, keep


_DECODERS = {"pyav": _decode_pyav, "decord": _decode_decord, "cv2": _decode_cv2}


def _read_video(path: Path, num_frames: int | None) -> list[np.ndarray]:
    decoder = video_decoder()
    _announce_decoder(decoder)

    def choose(count: int) -> set[int] | None:
        return None if num_frames is None else set(_sample_indices(count, num_frames).tolist())

    try:
        frames, total, keep = _DECODERS[decoder](path, choose)
        if keep != choose(total):  # the container's frame count is missing or wrong
            logger.warning("%s: frame count in the container is wrong; %d frames decode, "
                           "decoding again to sample over them", path, total)
            frames = _DECODERS[decoder](path, lambda _: choose(total))[0]
        return frames
    except Exception as exc:  # decoders raise library-specific types; all mean unreadable
        raise SampleError("unreadable_media", f"cannot decode video {path} with {decoder}: "
                          f"{exc}; re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)") from exc


def _read_frame_folder(path: Path, num_frames: int | None) -> list[np.ndarray]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [read_image(files[i]) for i in _sample_indices(len(files), num_frames)]


def _read_array(path: Path, num_frames: int | None) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise SampleError("unreadable_media", f"{path} holds no arrays; add a clip")
                array = archive[archive.files[0]]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SampleError("unreadable_media", f"cannot load {path}: {exc}; re-save it with "
                          "np.save / np.savez") from exc
    rgb_or_gray = array.ndim == 3 or (array.ndim == 4 and array.shape[-1] == 3)
    if array.dtype != np.uint8 or not rgb_or_gray:
        raise SampleError("unreadable_media", f"{path} holds a {array.dtype} array of shape "
                          f"{array.shape}; save it as uint8 [T, H, W, 3] (or [T, H, W] grayscale)")
    array = np.array(array[_sample_indices(len(array), num_frames)])
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 3 else array


def _missing(path: Path) -> SampleError:
    return SampleError("missing_file", f"{path} does not exist; fix the path in the manifest "
                       "or point media_root at the folder that holds the media")


def read_frames(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 RGB of a video file, image folder, .npy or .npz clip.

    Video files use PyAV if importable, else decord, else OpenCV. A directory is an image
    folder (files with IMAGE_SUFFIXES, in sorted name order: zero-pad the numbers). .npy is
    uint8 [T, H, W, 3] or [T, H, W] grayscale; .npz uses its first array. num_frames samples
    that many frames uniformly when there are more. Raises SampleError ('missing_file' or
    'unreadable_media').
    """
    path = Path(path)
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        frames = _read_frame_folder(path, num_frames)
    elif path.suffix.lower() in (".npy", ".npz"):
        frames = _read_array(path, num_frames)
    else:
        frames = _read_video(path, num_frames)
    if len(frames) == 0:
        fix = "re-encode or replace it"
        if path.is_dir():
            fix = f"add {'/'.join(IMAGE_SUFFIXES)} files"
        raise SampleError("unreadable_media", f"{path} yields 0 frames; {fix}")
    try:
        return np.stack(frames) if isinstance(frames, list) else frames
    except ValueError as exc:
        raise SampleError("unreadable_media", f"{path}: frames differ in size ({exc}); "
                          "resize them to one size") from exc


def read_image(path: str | Path) -> np.ndarray:
    """An image [H, W, 3] uint8 RGB via PIL; raises SampleError like read_frames."""
    path = Path(path)
    if not path.exists():
        raise _missing(path)
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SampleError("unreadable_media", f"cannot read image {path}: {exc}; "
                          "replace or re-encode it") from exc
