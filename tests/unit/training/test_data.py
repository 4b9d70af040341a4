"""Local LLaVA-style conversation data: media decoding (media.py), record layouts, counted skips."""

import json
import logging
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from sparrow_vllm.training import data, media
from sparrow_vllm.training.data import ConversationDataset, ConversationSample, Turn
from sparrow_vllm.training.media import read_frames, read_image, video_decoder
from sparrow_vllm.training.skips import SKIP_REASONS, SampleError, SkipReport
from tests.unit.helpers import LoggerRecords

NUM_FRAMES = 12
# one RGB colour per frame, far apart in red so a frame's index can be read back
COLOURS = [(20 * i + 10, 230 - 15 * i, (70 * i) % 200 + 30) for i in range(NUM_FRAMES)]
TOLERANCE = 12  # mp4v is lossy, even on solid colours


def write_mp4(path, num_frames=NUM_FRAMES):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12, (32, 32))
    assert writer.isOpened()
    for rgb in COLOURS[:num_frames]:
        writer.write(np.full((32, 32, 3), rgb[::-1], np.uint8))  # cv2 writes BGR
    writer.release()
    return path


def frame_indices(frames):
    """The COLOURS index each frame shows, checking the colour within TOLERANCE."""
    indices = []
    for frame in frames:
        mean = frame.reshape(-1, 3).mean(0)
        index = int(np.argmin([np.abs(mean - c).max() for c in COLOURS]))
        assert np.abs(mean - COLOURS[index]).max() < TOLERANCE, (mean, COLOURS[index])
        indices.append(index)
    return indices


@pytest.fixture
def clip(tmp_path):
    return write_mp4(tmp_path / "clip.mp4")


def test_pyav_and_decord_are_absent_so_cv2_decodes_here():
    assert not media._module_available("av")
    assert not media._module_available("decord")
    assert video_decoder() == "cv2"


@pytest.mark.parametrize(
    "available, expected",
    [({"av", "decord", "cv2"}, "pyav"), ({"decord", "cv2"}, "decord"), ({"cv2"}, "cv2")],
)
def test_video_decoder_preference(monkeypatch, available, expected):
    monkeypatch.setattr(media, "_module_available", lambda name: name in available)
    assert video_decoder() == expected


def test_no_video_decoder_names_the_install(monkeypatch):
    monkeypatch.setattr(media, "_module_available", lambda name: False)
    with pytest.raises(ImportError, match="pip install av"):
        video_decoder()


def test_mp4_frames_are_rgb_uint8(clip):
    frames = read_frames(clip)
    assert frames.shape == (NUM_FRAMES, 32, 32, 3) and frames.dtype == np.uint8
    assert frame_indices(frames) == list(range(NUM_FRAMES))


def test_mp4_uniform_sampling(clip):
    assert frame_indices(read_frames(clip, num_frames=4)) == [0, 4, 7, 11]  # linspace(0, 11, 4)
    assert frame_indices(read_frames(clip, num_frames=1)) == [0]
    assert len(read_frames(clip, num_frames=50)) == NUM_FRAMES  # fewer frames are kept as is
    with pytest.raises(ValueError, match="num_frames"):
        read_frames(clip, num_frames=0)


def test_wrong_frame_count_in_container_is_decoded_again(clip, monkeypatch):
    real = media._DECODERS["cv2"]

    def lying(path, choose):  # a container that reports 5 frames too many
        return real(path, lambda count: choose(count + 5))

    monkeypatch.setitem(media._DECODERS, "cv2", lying)
    with LoggerRecords(media.__name__, logging.WARNING) as caught:
        assert frame_indices(read_frames(clip, num_frames=4)) == [0, 4, 7, 11]
    assert "frame count in the container is wrong" in "\n".join(caught.messages)


def test_image_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (16, 8), COLOURS[i]).save(folder / f"frame_{i:03d}.png")
    (folder / "notes.txt").write_text("not a frame")
    frames = read_frames(folder)
    assert frames.shape == (5, 8, 16, 3) and frames.dtype == np.uint8
    assert [tuple(f[0, 0]) for f in frames] == COLOURS[:5]  # png: exact
    sampled = read_frames(folder, num_frames=3)
    assert [tuple(f[0, 0]) for f in sampled] == [COLOURS[i] for i in (0, 2, 4)]


def test_npy_npz_and_grayscale(tmp_path):
    clip = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "clip.npy", clip)
    np.testing.assert_array_equal(read_frames(tmp_path / "clip.npy"), clip)
    sampled = read_frames(tmp_path / "clip.npy", num_frames=3)  # linspace(0, 5, 3) rounded
    np.testing.assert_array_equal(sampled, clip[[0, 2, 5]])
    np.savez(tmp_path / "clip.npz", first=clip, second=clip[:1])
    np.testing.assert_array_equal(read_frames(tmp_path / "clip.npz"), clip)
    np.save(tmp_path / "gray.npy", clip[..., 0])
    gray = read_frames(tmp_path / "gray.npy")
    assert gray.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(gray[..., 2], clip[..., 0])


def test_image_reads_rgb(tmp_path):
    Image.new("RGB", (6, 4), (200, 10, 90)).save(tmp_path / "a.png")
    Image.new("L", (6, 4), 77).save(tmp_path / "gray.png")
    image = read_image(tmp_path / "a.png")
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (200, 10, 90)
    assert tuple(read_image(tmp_path / "gray.png")[0, 0]) == (77, 77, 77)


def test_read_frames_errors(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "float.npy", np.zeros((2, 4, 4, 3), np.float32))
    (tmp_path / "bad.npy").write_bytes(b"nope")
    cases = {
        "absent.mp4": ("missing_file", "media_root"),
        "absent_dir": ("missing_file", "media_root"),
        "junk.mp4": ("unreadable_media", "re-encode"),
        "empty": ("unreadable_media", "add .jpg"),
        "float.npy": ("unreadable_media", "save it as uint8"),
        "bad.npy": ("unreadable_media", "re-save it"),
    }
    for name, (reason, fix) in cases.items():
        with pytest.raises(SampleError) as info:
            read_frames(tmp_path / name, num_frames=4)
        assert (info.value.reason, fix in str(info.value)) == (reason, True), (name, info.value)


def test_read_image_errors(tmp_path):
    with pytest.raises(SampleError) as info:
        read_image(tmp_path / "absent.jpg")
    assert info.value.reason == "missing_file" and "media_root" in str(info.value)
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SampleError) as info:
        read_image(tmp_path / "junk.jpg")
    assert info.value.reason == "unreadable_media"


def test_sample_error_reason_and_pickle():
    error = pickle.loads(pickle.dumps(SampleError("too_long", "too long; raise max_frames")))
    assert error.reason == "too_long" and str(error) == "too long; raise max_frames"
    with pytest.raises(ValueError, match="bad_record"):
        SampleError("nope", "x")


def test_messages_layout():
    turns = [Turn("user", "What?"), Turn("assistant", "A."), Turn("user", "Why?"),
             Turn("assistant", "B.")]
    sample = ConversationSample("s1", turns, video=np.zeros((2, 4, 4, 3), np.uint8),
                                images=[np.zeros((4, 4, 3), np.uint8)] * 2)
    parts = [{"type": "video"}, {"type": "image"}, {"type": "image"},
             {"type": "text", "text": "What?"}]
    assert sample.messages() == [
        {"role": "user", "content": parts},
        {"role": "assistant", "content": "A."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "B."},
    ]
    assert sample.messages(include_last_answer=False) == sample.messages()[:3]
    text_only = ConversationSample("s2", [Turn("user", "Hi"), Turn("assistant", "Yo")], None, [])
    first = {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    assert text_only.messages()[0] == first


def conversation(question="<video>\nWhat colour is it?", answer="Red."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_json_manifest_layouts(tmp_path, clip):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (4, 5, 6)).save(tmp_path / "b.png")
    records = [
        {"id": "vid", "video": "clip.mp4", "conversations": conversation()},
        {"id": 7, "image": ["a.png", "b.png"],
         "conversations": conversation("<image>\n<image>\nSame?", "No.")},
        {"image": str(tmp_path / "a.png"), "messages": [
            {"role": "user", "content": "<image> Hi "}, {"role": "assistant", "content": "Yo"}]},
        {"video": "clip.mp4", "image": "b.png", "conversations": conversation()},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    dataset = ConversationDataset(tmp_path / "train.json", num_frames=4)
    assert len(dataset) == 4
    samples = list(dataset)
    assert dataset.skips.total() == 0 and dataset.skips.summary() == "skipped 0 rows"
    assert [s.sample_id for s in samples] == ["vid", "7", "row2", "row3"]
    assert frame_indices(samples[0].video) == [0, 4, 7, 11] and samples[0].images == []
    assert samples[0].turns == [Turn("user", "What colour is it?"), Turn("assistant", "Red.")]
    assert samples[1].video is None
    assert [tuple(i[0, 0]) for i in samples[1].images] == [(1, 2, 3), (4, 5, 6)]
    assert samples[1].turns[0] == Turn("user", "Same?")
    assert samples[2].turns == [Turn("user", "Hi"), Turn("assistant", "Yo")]  # absolute image path
    assert [p["type"] for p in samples[3].messages()[0]["content"]] == ["video", "image", "text"]


def test_video_seconds_is_read_and_checked(tmp_path, clip):
    rows = [{"id": "a", "video": "clip.mp4", "video_seconds": 4, "conversations": conversation()},
            {"id": "b", "video": "clip.mp4", "conversations": conversation()},
            {"id": "c", "video": "clip.mp4", "video_seconds": -1, "conversations": conversation()},
            {"id": "d", "video": "clip.mp4", "video_seconds": "4s", "conversations": conversation()}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dataset = ConversationDataset(tmp_path / "m.jsonl")
    samples = list(dataset)
    assert [(s.sample_id, s.video_seconds) for s in samples] == [("a", 4.0), ("b", None)]
    assert dataset.skips.counts == {"bad_record": 2}
    with pytest.raises(SampleError, match="video_seconds.*positive number"):
        dataset.load(2)


def test_media_root_overrides_manifest_directory(tmp_path, clip):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    record = {"video": "clip.mp4", "conversations": conversation()}
    (manifests / "m.json").write_text(json.dumps([record]))
    assert list(ConversationDataset(manifests / "m.json")) == []  # clip.mp4 is not beside it
    samples = list(ConversationDataset(manifests / "m.json", media_root=tmp_path))
    assert len(samples) == 1 and samples[0].video.shape == (NUM_FRAMES, 32, 32, 3)


def test_jsonl_bad_rows_are_counted_and_skipped(tmp_path, clip):
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    write_mp4(tmp_path / "short.mp4", num_frames=6)
    rows = [
        {"id": "ok", "video": "clip.mp4", "conversations": conversation()},
        "{this is not json",
        {"id": "gone", "video": "missing.mp4", "conversations": conversation()},
        {"id": "junk", "video": "junk.mp4", "conversations": conversation()},
        {"id": "question_only", "video": "short.mp4", "conversations": conversation()[:1]},
        {"id": "robot", "conversations": [{"from": "robot", "value": "beep"},
                                          {"from": "gpt", "value": "x"}]},
        {"id": "no_turns", "video": "short.mp4"},
        {"id": "short", "video": "short.mp4", "conversations": conversation()},
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:4] + [""] + lines[4:]) + "\n")
    dataset = ConversationDataset(tmp_path / "train.jsonl", max_frames=8)
    assert len(dataset) == 8  # the blank line is not a row
    with LoggerRecords(data.__name__, logging.WARNING) as caught:
        samples = list(dataset)

    assert [s.sample_id for s in samples] == ["short"]  # clip.mp4 has 12 frames > max_frames
    skips = dataset.skips
    expected = {"bad_record": 4, "missing_file": 1, "unreadable_media": 1, "too_long": 1}
    assert dict(skips.counts) == expected
    assert skips.total() == 7
    bad = skips.examples["bad_record"]
    assert bad[0].startswith("row1: line 2 of train.jsonl is not valid JSON")
    assert [e.split(":")[0] for e in bad[1:]] == ["question_only", "robot", "no_turns"]
    assert "no assistant turn" in bad[1] and "'robot'" in bad[2] and '"conversations"' in bad[3]
    assert skips.examples["missing_file"] == [f"gone: {tmp_path / 'missing.mp4'} does not exist; "
                                              "fix the path in the manifest or point media_root "
                                              "at the folder that holds the media"]
    assert "max_frames=8" in skips.examples["too_long"][0]
    summary = skips.summary()
    assert summary.startswith("skipped 7 rows: ")
    assert all(f"{reason} " in summary for reason in SKIP_REASONS)
    logged = "\n".join(caught.messages)
    assert "skipping gone (missing_file)" in logged and "skipped 7 rows" in logged

    with pytest.raises(SampleError) as info:
        dataset.load(2)
    assert info.value.reason == "missing_file"
    sampled = ConversationDataset(tmp_path / "train.jsonl", num_frames=8, max_frames=8)
    assert [s.sample_id for s in sampled] == ["ok", "short"]  # sampling comes before the limit
    assert sampled.skips.counts["too_long"] == 0


def test_skip_report_keeps_five_examples():
    report = SkipReport()
    for i in range(7):
        report.add(f"r{i}", SampleError("missing_file", f"gone {i}"))
    assert report.total() == 7
    assert report.examples["missing_file"] == [f"r{i}: gone {i}" for i in range(5)]
    assert report.summary() == "skipped 7 rows: missing_file 7 (e.g. r0: gone 0)"


def test_manifest_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=".jsonl"):
        ConversationDataset(tmp_path / "absent.json")
    (tmp_path / "m.csv").write_text("")
    with pytest.raises(ValueError, match="must end in .json"):
        ConversationDataset(tmp_path / "m.csv")
    (tmp_path / "m.json").write_text('{"conversations": []}')
    with pytest.raises(ValueError, match="expected a list of records"):
        ConversationDataset(tmp_path / "m.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="convert it to .jsonl"):
        ConversationDataset(tmp_path / "broken.json")
