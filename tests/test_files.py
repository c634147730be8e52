"""write_atomic: a file a resume reads is the old one or the new one, never half of one, also
when several processes write it at once (the ranks of a run, the workers of a study)."""

import multiprocessing

import pytest

from prefopt.files import read_json, write_atomic, write_json


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    target = write_json(tmp_path / "state.json", {"step": 1})

    def half(staging):
        staging.write_text('{"step": 2')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, half)
    assert read_json(target) == {"step": 1}


def _write_many(path, value):
    for _ in range(200):
        write_json(path, {"writer": value, "padding": "x" * 10_000})


def test_processes_writing_one_file_at_once_never_collide(tmp_path):
    target = tmp_path / "study.json"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(target, n)) for n in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0, 0, 0]
    assert read_json(target)["writer"] in (0, 1, 2)


def test_a_folder_another_process_put_in_place_first_is_kept(tmp_path):
    target = tmp_path / "converted"
    target.mkdir()
    (target / "weights").write_text("theirs")
    write_atomic(
        target, lambda staging: (staging.mkdir(), (staging / "weights").write_text("ours"))
    )
    assert (target / "weights").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]
