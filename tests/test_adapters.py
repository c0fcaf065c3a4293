"""The dataset adapters on small fixtures that follow each release's format field for field."""
import json

import numpy as np
from conftest import make_srt, make_video
from PIL import Image

from videomask import data
from videomask.prep import adapters


def jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def frame_folder(path, n, size=(64, 48)):
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), i * 10 % 255, np.uint8)).save(path / f"{i + 1:05d}.jpg")


def tvqa_line(qid, vid, ts="1.21-8.49", **drop):
    row = {"a0": "A martini glass", "a1": "Nachos", "a2": "Her purse", "a3": "Marshall's book", "a4": "A beer bottle",
           "answer_idx": 4, "q": "What is Robin holding in her hand when she is talking to Ted about Zoey?",
           "qid": qid, "ts": ts, "vid_name": vid, "show_name": "How I Met You Mother"}
    return {k: v for k, v in row.items() if k not in drop}


def test_tvqa_frames_subtitles_and_bad_lines(tmp_path):
    rel = tmp_path / "tvqa"
    # frames_hq/<show>_frames/<vid_name>/00001.jpg at 3 fps: 12 s clips
    frame_folder(rel / "frames_hq" / "met_frames" / "met_s06e22_seg01_clip_02", 36)
    frame_folder(rel / "frames_hq" / "bbt_frames" / "s01e01_seg01_clip_00", 36)
    (rel / "tvqa_subtitles").mkdir()
    for vid in ("met_s06e22_seg01_clip_02", "s01e01_seg01_clip_00"):
        make_srt(rel / "tvqa_subtitles" / f"{vid}.srt", [(0.5, 4.0, "(Ted:) Robin, what's that?"),
                                                         (4.5, 9.0, "(Robin:) It's a beer, Ted.")])
    train = jsonl(rel / "tvqa_qa_release" / "tvqa_train.jsonl", [
        tvqa_line(7, "met_s06e22_seg01_clip_02"),
        tvqa_line(8, "s01e01_seg01_clip_00", ts="NaN-NaN"),  # unlocalised: the whole clip
        tvqa_line(9, "met_s06e22_seg01_clip_02", a3=None),  # line 3: a3 missing
        tvqa_line(10, "friends_s01e01_seg02_clip_00"),  # line 4: no such clip
        "{not json",  # line 5
        {**tvqa_line(11, "s01e01_seg01_clip_00"), "answer_idx": 5},  # line 6: out of range
    ])
    test = jsonl(rel / "tvqa_qa_release" / "tvqa_test_public.jsonl", [tvqa_line(12, "s01e01_seg01_clip_00",
                                                                                answer_idx=None)])
    out = tmp_path / "out"
    assert adapters.main(["tvqa", "--qa", str(train), str(test), "--subtitles", str(rel / "tvqa_subtitles"),
                          "--frames", str(rel / "frames_hq"), "--out", str(out), "--frames-per-clip", "4",
                          "--size", "32"]) == 0
    errors = {e["source"].rsplit(":", 1)[1]: e for e in map(json.loads, open(out / "adapter_errors.jsonl"))}
    assert errors["3"]["field"] == "a3" and "missing field a3" in errors["3"]["reason"]
    assert errors["4"]["field"] == "vid_name" and "friends_s01e01_seg02_clip_00" in errors["4"]["reason"]
    assert "malformed JSON" in errors["5"]["reason"]
    assert errors["6"]["field"] == "answer_idx" and "out of range for 5 answers" in errors["6"]["reason"]
    assert all(e["source"].startswith(str(train)) for e in errors.values())
    samples = {s["meta"]["qid"]: s for s in data.dataset(out / "shards", None)}
    assert set(samples) == {7, 8, 12}
    m = samples[7]["meta"]
    assert m["question"].startswith("What is Robin holding") and m["answers"][4] == "A beer bottle"
    assert m["answer_idx"] == 4 and m["split"] == "train" and m["show_name"] == "How I Met You Mother"
    assert (m["start"], m["end"]) == (1.21, 8.49) and all(1.21 <= t <= 8.49 for t in m["frame_times"])
    assert "Robin, what's that?" in samples[7]["text"] and samples[7]["frames"].shape == (4, 3, 32, 32)
    assert (samples[8]["meta"]["start"], samples[8]["meta"]["end"]) == (0.0, 12.0)
    assert samples[12]["meta"]["split"] == "test" and "answer_idx" not in samples[12]["meta"]  # unlabelled release


def test_social_iq2_videos_and_vtt(tmp_path):
    root = tmp_path / "siq2"
    (root / "video").mkdir(parents=True)
    make_video(root / "video" / "-35BPXuZ898.mp4", seconds=6.0)
    (root / "transcript").mkdir()
    (root / "transcript" / "-35BPXuZ898.vtt").write_text(
        "WEBVTT\n\n00:00:00.500 --> 00:00:02.000\nExcuse me, professor!\n\n"
        "00:00:02.500 --> 00:00:05.000\nAre you a student here?\n")
    line = {"qid": "-35BPXuZ898_q1_0", "q": "How does the man feel when the woman runs up to him?",
            "vid_name": "-35BPXuZ898", "ts": "0.00-6.000000",
            "ans_corr": "He feels confused by the woman because he doesn't know her.", "answer_idx": 0,
            "idx_types": ["corr", "matched", "rewrite", "matched"],
            "a0": "He feels confused by the woman because he doesn't know her.",
            "a1": "He recognizes the woman because they have seen each other before.",
            "a2": "He feels overwhelmed by the woman's aggressive behavior as she charges towards him.",
            "a3": "He feels annoyed by the woman because she interrupted his conversation."}
    jsonl(root / "qa" / "qa_train.json", [line, {**line, "qid": "x_q2_0", "vid_name": "gone"},
                                          {k: v for k, v in line.items() if k != "q"}])
    jsonl(root / "qa" / "qa_val.json", [{**line, "qid": "-35BPXuZ898_q5_0", "answer_idx": 2}])
    out = tmp_path / "out"
    assert adapters.main(["siq2", "--root", str(root), "--out", str(out), "--frames-per-clip", "3",
                          "--size", "32"]) == 0
    errors = [json.loads(x) for x in open(out / "adapter_errors.jsonl")]
    assert [(e["source"].rsplit(":", 1)[1], e["field"]) for e in errors] == [("2", "vid_name"), ("3", "q")]
    assert "video/gone.mp4 not found" in errors[0]["reason"]
    samples = sorted(data.dataset(out / "shards", None), key=lambda s: s["meta"]["qid"])
    assert [(s["meta"]["qid"], s["meta"]["split"], s["meta"]["answer_idx"]) for s in samples] == [
        ("-35BPXuZ898_q1_0", "train", 0), ("-35BPXuZ898_q5_0", "val", 2)]
    assert len(samples[0]["meta"]["answers"]) == 4 and "Are you a student here?" in samples[0]["text"]


def test_dsp_text_classification(tmp_path):
    root = tmp_path / "chemprot"
    jsonl(root / "train.jsonl", [
        {"text": "<< Ketoconazole >> inhibits [[ CYP3A4 ]] activity.", "label": "INHIBITOR", "metadata": []},
        {"text": "<< Aspirin >> activates [[ AMPK ]].", "label": "ACTIVATOR", "metadata": []},
        {"text": "no label here", "metadata": []}])
    jsonl(root / "dev.jsonl", [{"text": "<< A >> binds [[ B ]].", "label": "INHIBITOR", "metadata": []}])
    jsonl(root / "test.jsonl", [{"label": "ACTIVATOR"}, {"text": "<< C >> up-regulates [[ D ]].",
                                                         "label": "UPREGULATOR"}])
    out = tmp_path / "out"
    assert adapters.main(["dsp", "--root", str(root), "--out", str(out)]) == 0
    errors = [json.loads(x) for x in open(out / "adapter_errors.jsonl")]
    assert [(e["source"], e["field"]) for e in errors] == [(f"{root / 'train.jsonl'}:3", "label"),
                                                           (f"{root / 'test.jsonl'}:1", "text")]
    got = {(s["meta"]["split"], s["meta"]["label"], s["text"]) for s in data.dataset(out / "shards", None)}
    assert got == {("train", "INHIBITOR", "<< Ketoconazole >> inhibits [[ CYP3A4 ]] activity."),
                   ("train", "ACTIVATOR", "<< Aspirin >> activates [[ AMPK ]]."),
                   ("val", "INHIBITOR", "<< A >> binds [[ B ]]."),
                   ("test", "UPREGULATOR", "<< C >> up-regulates [[ D ]].")}
