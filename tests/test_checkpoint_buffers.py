"""Only the newest checkpoints keep their replay buffer; the others keep everything else."""

import torch

from qmix import checkpoint as ckpt
from qmix.cli import main
from qmix.config import resolve
from qmix.trainer import run_training

ARGS = ["--env", "matrix:two-step", "t_max=2000", "checkpoint_interval=500", "use_tensorboard=false",
        "progress=false", "torch_threads=1"]


def steps(run_dir):
    return sorted((p for p in (run_dir / "checkpoints").glob("step_*")), key=lambda p: int(p.name[5:]))


def test_only_the_newest_checkpoint_keeps_its_buffer(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(run_dir)]) == 0
    all_steps = steps(run_dir)
    assert len(all_steps) >= 4 and all((p / ckpt.STATE_FILE).is_file() for p in all_steps)
    assert [p.name for p in all_steps if (p / ckpt.BUFFER_FILE).is_file()] == [all_steps[-1].name]
    newest = ckpt.load(run_dir)
    assert newest["buffer"]["episodes_in"] > 0 and not newest["buffer_dropped"]
    older = ckpt.load(all_steps[0])
    assert older["buffer"] is None and older["buffer_dropped"]
    assert older["learner"]["agent"].keys() == newest["learner"]["agent"].keys()
    assert ckpt.load(run_dir, buffer=False)["buffer"] is None  # evaluate reads networks only


def test_keep_all_buffers_and_resume_from_one_without(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *ARGS, "checkpoint_keep_buffers=0", "--out", str(run_dir)]) == 0
    assert all((p / ckpt.BUFFER_FILE).is_file() for p in steps(run_dir))
    # Point `latest` at an older checkpoint whose buffer is gone: the run resumes from an empty
    # buffer and says so.
    first = steps(run_dir)[0]
    (first / ckpt.BUFFER_FILE).unlink()
    (run_dir / "checkpoints" / "latest").write_text(first.name + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "t_max=2500"]) == 0
    assert "replay buffer was removed (checkpoint_keep_buffers); training goes on from an empty buffer" \
        in capsys.readouterr().err


def test_corrupt_buffer_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(run_dir)]) == 0
    (steps(run_dir)[-1] / ckpt.BUFFER_FILE).write_bytes(b"not a buffer")
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--episodes", "2"]) == 0  # networks only: unaffected
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "t_max=2500"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt" in err and ckpt.BUFFER_FILE in err


def test_checkpoints_of_earlier_versions_load(tmp_path):
    """Earlier versions kept the buffer inside state.pt."""
    cfg = resolve({"alg": "qmix", "env": "matrix:two-step", "seed": 0, "progress": False, "t_max": 600,
                   "use_tensorboard": False, "torch_threads": 1})
    run_training(cfg, tmp_path)
    step = steps(tmp_path)[-1]
    state = ckpt.load(step)
    del state["buffer_dropped"]
    (step / ckpt.BUFFER_FILE).unlink()
    torch.save(state, step / ckpt.STATE_FILE)  # the buffer inline, as before
    again = ckpt.load(step)
    assert again["buffer"]["episodes_in"] == state["buffer"]["episodes_in"] and not again["buffer_dropped"]
    assert ckpt.load(step, buffer=False)["buffer"] is None


def test_saved_buffer_holds_only_the_stored_episodes():
    import io

    from qmix.buffer import EpisodeBuffer

    def saved_bytes(buf):
        f = io.BytesIO()
        torch.save(buf.state_dict(), f)
        return f.tell()

    buf = EpisodeBuffer(200, 10, 2, 8, 6, 3, torch.device("cpu"))
    E = 5
    episode = (torch.rand(E, 11, 2, 8), torch.rand(E, 11, 6), torch.ones(E, 11, 2, 3, dtype=torch.bool),
               torch.zeros(E, 10, 2, dtype=torch.long), torch.rand(E, 10), torch.zeros(E, 10, dtype=torch.bool),
               torch.full((E,), 10))
    buf.insert(*episode)
    small = saved_bytes(buf)
    while len(buf) < buf.capacity:
        buf.insert(*episode)
    assert small * 10 < saved_bytes(buf)
    restored = EpisodeBuffer(200, 10, 2, 8, 6, 3, torch.device("cpu"))
    restored.load_state_dict(buf.state_dict())
    assert torch.equal(restored.obs, buf.obs) and restored.episodes_in == buf.episodes_in
