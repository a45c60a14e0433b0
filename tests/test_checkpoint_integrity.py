"""Checkpoints and their history sidecar are checksummed: a flipped byte anywhere is refused on resume, naming the
file and what to do, never resumed into different results or a traceback."""
import pytest

from autoq.host.cli import main
from autoq.host.search.checkpoint import CHECKPOINT_NAME, history_path, load_checkpoint, seed_everything
from autoq.host.search.rewards import BudgetSpec, RewardSetting, SearchError
from autoq.host.search.runner import SearchRunner, make_agent
from searchtoys import toy_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TIGHT = RewardSetting.resource_constrained(BudgetSpec.parse("latency", "0.4x"))


def toy_runner(folder, episodes):
    seed_everything(0)
    env = toy_env(TIGHT)
    return SearchRunner(env, make_agent("autoq", episodes, len(env.network), 0), episodes, folder / CHECKPOINT_NAME,
                        {"agent": "autoq"})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 3-episode toy AutoQ search: its checkpoint, history sidecar and their bytes."""
    folder = tmp_path_factory.mktemp("search")
    toy_runner(folder, 3).run(progress=False)
    checkpoint = folder / CHECKPOINT_NAME
    return checkpoint, checkpoint.read_bytes(), history_path(checkpoint).read_bytes()


def flipped(data: bytes, fraction: float) -> bytes:
    at = min(len(data) - 1, int(len(data) * fraction))
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def copy_with(tmp_path, finished, checkpoint_bytes=None, history_bytes=None):
    _, checkpoint_data, history_data = finished
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / CHECKPOINT_NAME).write_bytes(checkpoint_bytes or checkpoint_data)
    history_path(folder / CHECKPOINT_NAME).write_bytes(history_bytes or history_data)
    return folder


def test_an_intact_copy_resumes(tmp_path, finished):
    folder = copy_with(tmp_path, finished)
    assert load_checkpoint(folder / CHECKPOINT_NAME)["next_episode"] == 3
    assert [r.episode for r in toy_runner(folder, 4).run(resume=True, progress=False)] == [0, 1, 2, 3]


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.6, 0.9, 0.99])
def test_a_flipped_checkpoint_byte_is_refused(tmp_path, finished, fraction, capsys):
    folder = copy_with(tmp_path, finished, checkpoint_bytes=flipped(finished[1], fraction))
    checkpoint = folder / CHECKPOINT_NAME
    with pytest.raises(SearchError, match=f"checkpoint {checkpoint} is damaged .*SHA-256.* another --out, or delete {checkpoint}"):
        toy_runner(folder, 3).run(resume=True, progress=False)
    assert main(["search", "--no-progress", "--resume", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"autoq search: error: checkpoint {checkpoint} is damaged") and err.count("\n") == 1


def test_a_flipped_history_byte_is_refused(tmp_path, finished, capsys):
    folder = copy_with(tmp_path, finished, history_bytes=flipped(finished[2], 0.02))
    sidecar = history_path(folder / CHECKPOINT_NAME)
    with pytest.raises(SearchError, match=f"search history {sidecar} is damaged .*SHA-256"):
        load_checkpoint(folder / CHECKPOINT_NAME)
    assert main(["search", "--no-progress", "--resume", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"search history {sidecar} is damaged" in err and "start a fresh search with another --out" in err and err.count("\n") == 1


def test_a_checkpoint_of_the_previous_format_is_refused_clearly(tmp_path, finished):
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"format": "autoq-search-checkpoint/2"}, buffer)  # what the previous version wrote: a bare torch file
    folder = copy_with(tmp_path, finished, checkpoint_bytes=buffer.getvalue())
    with pytest.raises(SearchError, match="cannot be read: it is not a search checkpoint of this autoq .*another autoq version"):
        load_checkpoint(folder / CHECKPOINT_NAME)
