import json
import pickle

import pytest
import torch

from tell import checkpoint
from tell.encoders import EncoderSpec
from tell.errors import TellCheckpointError
from tell.model import TELLNet


def _net():
    torch.manual_seed(0)
    return TELLNet(EncoderSpec("conv", 64, latent_dim=4, image_shape=(8, 8, 1)), n_clusters=3)


def test_round_trip_restores_every_tensor_and_optimizer_state(tmp_path):
    net = _net()
    opt = torch.optim.Adadelta(
        [p for n, p in net.named_parameters() if not n.startswith("cluster")]
    )
    net(torch.rand(4, 64)).x_hat.sum().backward()
    opt.step()
    checkpoint.save(net, tmp_path, {"epoch": 3}, optimizer=opt)
    opt2 = torch.optim.Adadelta(
        [p for n, p in _net().named_parameters() if not n.startswith("cluster")]
    )
    restored, meta = checkpoint.load(tmp_path, optimizer=opt2)
    assert meta["epoch"] == 3 and meta["n_clusters"] == 3
    for (name, a), b in zip(net.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    assert torch.equal(s1[0]["square_avg"], s2[0]["square_avg"])


def test_pickle_file_is_refused_without_being_loaded(tmp_path):
    checkpoint.save(_net(), tmp_path, {})

    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('pwned')",))

    (tmp_path / checkpoint.WEIGHTS_FILE).write_bytes(pickle.dumps(Boom()))
    with pytest.raises(TellCheckpointError, match="pickle"):
        checkpoint.load(tmp_path)
    assert not (tmp_path / "pwned").exists()
    torch.save({"x": torch.zeros(1)}, tmp_path / checkpoint.WEIGHTS_FILE)
    with pytest.raises(TellCheckpointError, match="pickle"):
        checkpoint.load(tmp_path)


def test_metadata_disagreeing_with_tensors_is_refused(tmp_path):
    checkpoint.save(_net(), tmp_path, {})
    meta = json.loads((tmp_path / checkpoint.METADATA_FILE).read_text())
    meta["n_clusters"] = 5
    (tmp_path / checkpoint.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(TellCheckpointError, match=r"cluster\.weight"):
        checkpoint.load(tmp_path)


def test_newer_format_and_corrupt_files_are_refused(tmp_path):
    checkpoint.save(_net(), tmp_path, {})
    meta = json.loads((tmp_path / checkpoint.METADATA_FILE).read_text())
    meta["format_version"] = checkpoint.FORMAT_VERSION + 1
    (tmp_path / checkpoint.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(TellCheckpointError, match="newer"):
        checkpoint.load(tmp_path)
    (tmp_path / checkpoint.METADATA_FILE).write_text("{not json")
    with pytest.raises(TellCheckpointError, match="not valid JSON"):
        checkpoint.load(tmp_path)
    checkpoint.save(_net(), tmp_path, {})
    (tmp_path / checkpoint.WEIGHTS_FILE).write_bytes(b"garbage bytes here")
    with pytest.raises(TellCheckpointError, match="safetensors"):
        checkpoint.load(tmp_path)
    with pytest.raises(TellCheckpointError, match="Cannot read"):
        checkpoint.load(tmp_path / "missing")
