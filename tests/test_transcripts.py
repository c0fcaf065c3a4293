import json

import pytest

from videomask.prep.transcripts import (
    TranscriptError,
    clip_text,
    find_words,
    read_transcript,
    timed_words,
)

SRT = """1
00:00:00,000 --> 00:00:02,000
Hello <i>world</i>, it's a hexagon.

2
00:00:02,500 --> 00:00:04,000
Second cue
on two lines
"""

VTT = """WEBVTT

NOTE a comment
that spans lines

intro
00:00.000 --> 00:02.000 align:start
Hello world.

00:00:02.000 --> 00:00:03.000
<c.yellow>Bye</c> now
"""


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_words_are_letter_runs_with_inner_apostrophes():
    text = "It's a x-ray, 42 cats... (ok)"
    assert [text[s:e] for s, e in find_words(text)] == ["It's", "a", "x-ray", "42", "cats", "ok"]


def test_srt(tmp_path):
    cues, timed = read_transcript(write(tmp_path, "a.srt", SRT))
    assert timed
    assert [(c.start, c.end, c.text) for c in cues] == [
        (0.0, 2.0, "Hello world, it's a hexagon."), (2.5, 4.0, "Second cue on two lines")]


def test_vtt(tmp_path):
    cues, _ = read_transcript(write(tmp_path, "a.vtt", VTT))
    assert [(c.start, c.end, c.text) for c in cues] == [(0.0, 2.0, "Hello world."), (2.0, 3.0, "Bye now")]


def test_json_word_timings_are_kept(tmp_path):
    doc = {"segments": [{"start": 0, "end": 2, "text": "hi there",
                         "words": [{"word": " hi", "start": 0.1, "end": 0.4}, {"word": " there,", "start": 0.5, "end": 0.9}]},
                        {"start": 3, "end": 4, "text": "untimed words here"}]}
    cues, _ = read_transcript(write(tmp_path, "a.json", json.dumps(doc)))
    words = timed_words(cues, 5.0)
    assert [(cues[w.cue].text[w.start:w.end], w.t0, w.t1) for w in words[:2]] == [("hi", 0.1, 0.4), ("there", 0.5, 0.9)]
    assert cues[0].text == "hi there,"
    assert 3.0 <= words[2].t0 < words[3].t0 < words[4].t0 < 4.0  # interpolated inside the segment


def test_txt_is_untimed_and_spread_over_the_video(tmp_path):
    cues, timed = read_transcript(write(tmp_path, "a.txt", "one two\nthree four\n"))
    assert not timed and cues[0].text == "one two three four"
    words = timed_words(cues, 8.0)
    assert words[0].t0 == 0.0 and words[-1].t1 == 8.0


def test_clip_text_offsets_and_cut_cues(tmp_path):
    cues, _ = read_transcript(write(tmp_path, "a.srt", SRT))
    words = timed_words(cues, 4.0)
    text, ws = clip_text(cues, words, 0.0, 4.0)
    assert text == "Hello world, it's a hexagon. Second cue on two lines"
    assert all(text[w["s"]:w["e"]] == w["w"] for w in ws) and len(ws) == 10
    first, ws1 = clip_text(cues, words, 0.0, 1.0)
    second, ws2 = clip_text(cues, words, 1.0, 4.0)
    assert [w["w"] for w in ws1 + ws2] == [w["w"] for w in ws]  # every word in exactly one clip
    assert all(first[w["s"]:w["e"]] == w["w"] for w in ws1) and all(second[w["s"]:w["e"]] == w["w"] for w in ws2)
    assert all(0.0 <= w["t0"] and (w["t0"] + w["t1"]) / 2 < 1.0 for w in ws1)


@pytest.mark.parametrize("name,text,where", [
    ("bad.srt", "1\n00:00:01 --> 00:00:02\nhello\n", "bad.srt:2"),
    ("bad.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\nnot a number or time\nhello\n", "bad.srt:5"),
    ("bad.srt", "1\n00:00:03,000 --> 00:00:02,000\nbackwards\n", "bad.srt:2"),
    ("bad.vtt", "00:00.000 --> 00:01.000\nno header\n", "bad.vtt:1"),
    ("bad.vtt", "WEBVTT\n\n00:00.000 -> 00:01.000\nbad arrow\n", "bad.vtt:3"),
    ("bad.json", '{"segments": [{"start": 0}]}', "bad.json"),
    ("bad.json", '{"segments": [', "bad.json:1"),
])
def test_malformed_transcripts_name_file_and_line(tmp_path, name, text, where):
    with pytest.raises(TranscriptError, match=where.replace(".", r"\.")):
        read_transcript(write(tmp_path, name, text))


def test_non_utf8_transcript_is_decoded_and_its_encoding_named(tmp_path):
    from videomask.prep.transcripts import load_transcript

    text = "1\n00:00:00,000 --> 00:00:01,000\nun café crème, très léger, à bientôt\n"
    p = write(tmp_path, "latin.srt", text, encoding="latin-1")
    cues, timed, encoding = load_transcript(p)
    assert cues[0].text == "un café crème, très léger, à bientôt" and timed
    assert encoding != "utf-8"
    assert load_transcript(p, "cp1252")[2] == "cp1252"  # forced
    assert load_transcript(write(tmp_path, "u.srt", text))[2] == "utf-8"
    with pytest.raises(TranscriptError, match=r"latin\.srt: cannot be read as utf-8"):
        load_transcript(p, "utf-8")
    with pytest.raises(TranscriptError, match=r"cannot be read as nope"):
        load_transcript(p, "nope")


def test_utf8_bom_is_accepted(tmp_path):
    cues, _ = read_transcript(write(tmp_path, "bom.srt", "\ufeff" + SRT))
    assert cues[0].text.startswith("Hello")
